"""TokenAdapt: a hybrid of a local (decomposition) and a global (neighbour) estimate.

An auxiliary text encoder φ (see :mod:`transplant.inputs.textembed`) embeds the surface string of
every token. For a new token with surface s:

- local: s splits into base pieces s_1..s_m. Each piece is weighted by how similar its
  text is to s (α_j = cos(φ(s), φ(s_j)), w̃ = softmax(α)) and by how much of s it covers
  (λ_j = len(s_j)/len(s)); c = (w̃ + λ)/2, weights = softmax(c/τ).
- global: the k base tokens whose φ is nearest to φ(s) by cosine, those with similarity
  ≥ threshold kept, weights = softmax(sim/τ).
- row = (1−w_g)·local + w_g·global; whichever exists when only one does; the mean row
  when neither does (special tokens have neither: their literal text means nothing to φ).
  w_g = 0 switches the global estimate off (no search is run) and w_g = 1 the local one,
  so those settings are "local only" and "global only" for every token.

Both estimates are weighted sums of base rows, so the weights are computed once (a
"plan": base ids and weights per token) and applied to the input and the output matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from transplant.errors import UserError
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import mean_rows, mix_rows
from transplant.methods.registry import register
from transplant.maths.neighbors import Index
from transplant.inputs.textembed import TextEncoder, embed_cached, resolve_text_model


@dataclass(frozen=True)
class TokenAdaptOptions:
    temperature: float = 0.6
    top_k: int = 3
    global_weight: float = 0.3
    threshold: float = 0.0
    aux_model: str | None = None
    batch_size: int = 4096

    def __post_init__(self) -> None:
        """Checks that need no model, so a bad flag fails before anything is loaded."""
        if self.temperature <= 0:
            raise UserError(f"tokenadapt: --temperature must be positive, not {self.temperature}")
        if self.top_k < 1:
            raise UserError(f"tokenadapt: --top-k must be at least 1, not {self.top_k}")
        if not 0 <= self.global_weight <= 1:
            raise UserError(f"tokenadapt: --global-weight must be between 0 and 1, not {self.global_weight}")
        if self.batch_size < 1:
            raise UserError(f"tokenadapt: --batch-size must be at least 1, not {self.batch_size}")


def _masked_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the kept entries of each row; rows with nothing kept are all zero."""
    weights = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    return weights.nan_to_num(0.0)


def local_weights(
    token_vecs: torch.Tensor,
    piece_vecs: torch.Tensor,
    token_lengths: torch.Tensor,
    piece_lengths: torch.Tensor,
    present: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """(n, L) weights of each token's pieces; zero on padding and for tokens without pieces.

    ``token_vecs`` (n, d) and ``piece_vecs`` (n, L, d) are L2-normalized φ vectors,
    lengths are in characters, ``present`` marks real pieces in the padded (n, L) layout.
    """
    alpha = torch.einsum("nd,nld->nl", token_vecs, piece_vecs)
    similarity = _masked_softmax(alpha, present)
    coverage = piece_lengths / token_lengths.clamp(min=1).unsqueeze(1)
    combined = (similarity + coverage) / 2
    return _masked_softmax(combined / temperature, present)


def global_weights(similarities: torch.Tensor, ids: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
    """(n, k) weights of each token's neighbours: softmax(sim/τ) over those with
    similarity ≥ ``threshold`` (ids of -1, FAISS's "no result", never count)."""
    keep = (similarities >= threshold) & (ids >= 0)
    return _masked_softmax(similarities / temperature, keep)


def hybrid(
    local: torch.Tensor, has_local: torch.Tensor, global_: torch.Tensor, has_global: torch.Tensor, global_weight: float
) -> torch.Tensor:
    """(1−w_g)·local + w_g·global where both exist, else the one that does (rows with
    neither come out zero; the caller fills them)."""
    w = torch.where(has_local & has_global, global_weight, has_global.float()).unsqueeze(1)
    return (1 - w) * local + w * global_


@dataclass
class Plan:
    """Per missing token: base ids and weights of the local and global estimates."""

    local_ids: torch.Tensor
    local_w: torch.Tensor
    global_ids: torch.Tensor
    global_w: torch.Tensor

    def select(self, rows: torch.Tensor) -> Plan:
        """The plan of the tokens at ``rows``."""
        return Plan(self.local_ids[rows], self.local_w[rows], self.global_ids[rows], self.global_w[rows])


def _char_lengths(strings: list[str]) -> torch.Tensor:
    return torch.tensor([len(s) for s in strings], dtype=torch.float32)


def _local_part(
    ctx: Context,
    missing: torch.Tensor,
    new_phi: torch.Tensor,
    base_phi: torch.Tensor,
    new_lengths: torch.Tensor,
    base_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (n, L) piece ids and weights, computed in batches of padded decompositions."""
    options: TokenAdaptOptions = ctx.options
    ids, weights = [], []
    for start in range(0, len(missing), options.batch_size):
        pieces = ctx.match.decompose_padded(missing[start : start + options.batch_size]).to(ctx.device)
        part, safe = slice(start, start + len(pieces)), pieces.clamp(min=0)
        ids.append(pieces)
        piece_phi, piece_lengths = base_phi[safe], base_lengths[safe]
        weights.append(
            local_weights(new_phi[part], piece_phi, new_lengths[part], piece_lengths, pieces >= 0, options.temperature)
        )
    width = max(p.shape[1] for p in ids)
    return (
        torch.cat([F.pad(p, (0, width - p.shape[1]), value=-1) for p in ids]),
        torch.cat([F.pad(w, (0, width - w.shape[1])) for w in weights]),
    )


def _global_part(
    ctx: Context, new_phi: torch.Tensor, base_phi: torch.Tensor, base_usable: torch.Tensor, new_usable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) neighbour ids and weights: one batched FAISS search over the usable base tokens.

    Identical queries (strings the encoder tokenizes alike, e.g. " The" and "the" for an
    uncased model: ~40% of Gemma-3's vocabulary) are searched once."""
    options: TokenAdaptOptions = ctx.options
    candidate_ids = base_usable.nonzero().squeeze(1)
    index = Index(base_phi[candidate_ids], "ip", normalize=True, seed=ctx.seed)
    queries, inverse = torch.unique(new_phi, dim=0, return_inverse=True)
    sims, hits = (t[inverse] for t in index.search(queries, options.top_k))
    ids = torch.where(hits >= 0, candidate_ids[hits.clamp(min=0)], -1)
    weights = global_weights(sims, hits, options.threshold, options.temperature) * new_usable.unsqueeze(1)
    return ids.to(ctx.device), weights.to(ctx.device)


def build_plan(ctx: Context, missing: torch.Tensor, encoder: TextEncoder) -> Plan:
    """The weights of both estimates for every token in ``missing``.

    An estimate switched off by the global weight (0 or 1) gets all-zero weights, which
    makes the hybrid fall through to the other one."""
    options: TokenAdaptOptions = ctx.options
    match = ctx.match
    base_strings = [s.decode("utf-8", "replace") for s in match.base_vocab.surfaces]
    new_strings = [match.surface(i) for i in missing.tolist()]
    advance = ctx.progress(len(base_strings) + len(new_strings), "embedding token strings")
    base_phi = F.normalize(torch.from_numpy(embed_cached(encoder, base_strings, advance)), dim=1)
    new_phi = F.normalize(torch.from_numpy(embed_cached(encoder, new_strings, advance)), dim=1)

    n = len(missing)
    local_ids, local_w = torch.full((n, 1), -1, device=ctx.device), torch.zeros(n, 1, device=ctx.device)
    if options.global_weight < 1:
        lengths = _char_lengths(new_strings).to(ctx.device), _char_lengths(base_strings).to(ctx.device)
        local_ids, local_w = _local_part(ctx, missing, new_phi.to(ctx.device), base_phi.to(ctx.device), *lengths)
    global_ids, global_w = torch.full((n, 1), -1, device=ctx.device), torch.zeros(n, 1, device=ctx.device)
    if options.global_weight > 0:
        base_usable = torch.tensor([s != "" and not sp for s, sp in zip(base_strings, match.base_vocab.special)])
        new_special = [match.new_vocab.special[i] for i in missing.tolist()]
        new_usable = torch.tensor([s != "" and not sp for s, sp in zip(new_strings, new_special)])
        global_ids, global_w = _global_part(ctx, new_phi, base_phi, base_usable, new_usable)
    return Plan(local_ids, local_w, global_ids, global_w)


def apply_plan(ctx: Context, which: Which, plan: Plan, global_weight: float, batch_size: int) -> torch.Tensor:
    """Rows of ``ctx.base(which)`` mixed by the plan's weights, batched to bound the gather."""
    base = ctx.base(which)
    rows = torch.empty(len(plan.local_ids), base.shape[1], device=ctx.device)
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        local = mix_rows(base, plan.local_ids[part], plan.local_w[part])
        global_ = mix_rows(base, plan.global_ids[part], plan.global_w[part])
        has_local, has_global = plan.local_w[part].sum(1) > 0, plan.global_w[part].sum(1) > 0
        rows[part] = hybrid(local, has_local, global_, has_global, global_weight)
        neither = ~(has_local | has_global)
        if neither.any():
            rows[part][neither] = mean_rows(ctx, which, int(neither.sum()))
    return rows


@register
class TokenAdapt(MethodBase):
    name: ClassVar[str] = "tokenadapt"
    description: ClassVar[str] = "hybrid of subword pieces and text-embedding neighbours (auxiliary encoder)"
    Options: ClassVar[type] = TokenAdaptOptions
    chunkable: ClassVar[bool] = True

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        """The plan is built once for every planned token (the encoder's batches and the
        search depend on which strings go together) and applied to this call's tokens."""
        options: TokenAdaptOptions = ctx.options
        plan, at = ctx.plan_rows(self.name, missing, lambda ids: build_plan(
            ctx, ids, TextEncoder(resolve_text_model(options.aux_model), ctx.device)))
        return apply_plan(ctx, which, plan.select(at.to(ctx.device)), options.global_weight, options.batch_size)
