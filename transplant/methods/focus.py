"""FOCUS (Dobler & de Melo, EMNLP 2023): new rows from fastText *token* vectors.

fastText is trained on target-language text tokenized by the NEW tokenizer, each token a
"word", so every token of the new vocabulary that occurs often enough gets a vector in one
space. Tokens shared with the base vocabulary (the overlap, copied rows) anchor that space
to the base model: a missing token's row is a mix of overlap rows, weighted by sparsemax of
its cosine similarity to each overlap token. Sparsemax gives a few overlap tokens all the
weight instead of smearing it over thousands; :mod:`transplant.maths.sparsemax` computes it
exactly on a FAISS preselection.

Character n-grams are OFF by default, unlike the reference (``deepfocus`` trains with the
fastText library's defaults, n-grams 3-6 included, without discussing them). With them a
token's vector is largely its spelling: on SmolLM2 -> German 16k the nearest overlap tokens
of ``▁Minuten`` were ``ĠGreen``, ``ĠScreen``, ``ĠLeiden``, ``ĠEisen`` (the shared ``en>``),
and the rows came out worse on German (ratio 2.41 vs 2.22 without; 1.68 vs 1.60 with
``--no-vector subword``) and took 6x longer to train (449 s vs 70 s). Token "words" need
no n-grams to get a vector: every token seen ``--ft-min-count`` times has its own, learned
from the contexts it occurs in, which is what the mix should follow. ``--ft-ngrams``
switches them on. As in the reference, only tokens in the trained vocabulary count as
having a vector.

Tokens without a vector get ``subword`` rows by default, or the paper's ``random`` baseline
(per-dimension statistics, seeded) with ``--no-vector random``. In a tied model a random row
is also a random *output* row that takes probability at every position: on SmolLM2 ->
German 16k the 745 such tokens alone took German from 1.60 (subword) to 2.22 (random).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, get_args

import torch
from gensim.models import KeyedVectors
from transformers import PreTrainedTokenizerBase

from transplant.errors import UserError
from transplant.inputs.fasttext import CorpusVectorOptions, Splitter, load_vectors, train_vectors
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import Random, mix_rows, subword_rows
from transplant.methods.registry import register
from transplant.maths.sparsemax import sparsemax_topm

NoVector = Literal["random", "subword"]  # rows for tokens that have no vector


def check_no_vector(method: str, value: str) -> None:
    if value not in get_args(NoVector):
        raise UserError(f"{method}: --no-vector must be one of {', '.join(get_args(NoVector))}, not {value!r}")


def fallback_rows(ctx: Context, which: Which, ids: torch.Tensor, how: NoVector) -> torch.Tensor:
    """Rows for the new ids in ``ids`` that a vector-based method could not place."""
    if how == "subword":
        return subword_rows(ctx, which, ids)
    return Random().init_rows(ctx, which, ids)


@dataclass(frozen=True)
class FocusOptions(CorpusVectorOptions):
    ft_ngrams: bool = False  # see the module docstring
    fasttext_model: str | None = None
    preselect: int = 256
    no_vector: NoVector = "subword"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.corpus and self.fasttext_model is None:
            raise UserError("focus: needs target-language text (--corpus FILE) or token vectors (--fasttext-model PATH)")
        if self.fasttext_model is not None and not Path(self.fasttext_model).is_file():
            raise UserError(f"focus: --fasttext-model not found: {self.fasttext_model}")
        if self.preselect < 1:
            raise UserError(f"focus: --preselect must be at least 1, not {self.preselect}")
        check_no_vector("focus", self.no_vector)


def token_splitter(tokenizer: PreTrainedTokenizerBase) -> tuple[Splitter, str]:
    """Lines -> the new tokenizer's token strings, batched (the Rust tokenizer runs a batch
    in parallel), and a key naming this exact tokenizer (its whole serialized form:
    vocabulary, merges, normalizer) for the fastText cache."""
    backend = tokenizer.backend_tokenizer
    key = "tokens:" + hashlib.sha256(backend.to_str().encode()).hexdigest()

    def split(lines: list[str]) -> list[list[str]]:
        return [encoding.tokens for encoding in backend.encode_batch(lines, add_special_tokens=False)]

    return split, key


def token_vectors(vectors: KeyedVectors, tokens: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors of the tokens in the fastText vocabulary, mask of which tokens those are)."""
    rows = torch.tensor([vectors.key_to_index.get(t, -1) if t is not None else -1 for t in tokens], dtype=torch.long)
    present = rows >= 0
    return torch.from_numpy(vectors.vectors[rows[present].numpy()]).float(), present


@dataclass
class Plan:
    """Per missing token: base ids (-1 = padding) and sparsemax weights; ``placed`` marks
    the tokens that had a vector (the others get fallback rows); ``anchors``: overlap tokens
    with a vector."""

    ids: torch.Tensor
    weights: torch.Tensor
    placed: torch.Tensor
    anchors: int


def build_plan(ctx: Context, missing: torch.Tensor, vectors: KeyedVectors) -> Plan:
    options: FocusOptions = ctx.options
    tokens = ctx.match.new_vocab.tokens
    anchor_new, anchor_base = ctx.match.anchors
    anchor_vecs, anchor_has = token_vectors(vectors, [tokens[i] for i in anchor_new.tolist()])
    query_vecs, placed = token_vectors(vectors, [tokens[i] for i in missing.tolist()])
    if not anchor_has.any():
        raise UserError("focus: no token shared with the base vocabulary has a fastText vector; "
                        "is the corpus (or --fasttext-model) tokenized by this tokenizer?")
    ids = torch.full((len(missing), 1), -1, dtype=torch.long)
    weights = torch.zeros(len(missing), 1)
    if placed.any():
        sparse = sparsemax_topm(query_vecs, anchor_vecs, options.preselect, ctx.seed)
        width = sparse.ids.shape[1]
        ids, weights = ids.new_full((len(missing), width), -1), weights.new_zeros(len(missing), width)
        ids[placed] = torch.where(sparse.ids >= 0, anchor_base[anchor_has][sparse.ids.clamp(min=0)], -1)
        weights[placed] = sparse.weights
    return Plan(ids, weights, placed, int(anchor_has.sum()))


def load_or_train(ctx: Context) -> KeyedVectors:
    options: FocusOptions = ctx.options
    if options.fasttext_model is not None:
        return load_vectors(options.fasttext_model)
    split, key = token_splitter(ctx.match.new_tokenizer)
    return train_vectors(options.corpus, split, key, options.fasttext_options(ctx.seed))


@register
class Focus(MethodBase):
    name: ClassVar[str] = "focus"
    description: ClassVar[str] = "sparsemax mix of overlap rows by fastText token-vector similarity (target text)"
    Options: ClassVar[type] = FocusOptions

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        plan: Plan = ctx.plan(self.name, missing, lambda: build_plan(ctx, missing, load_or_train(ctx)))
        support = (plan.weights[plan.placed] > 0).sum(1).float()
        ctx.report.update(placed=int(plan.placed.sum()), no_vector=int((~plan.placed).sum()), anchors=plan.anchors,
                          mean_support=round(support.mean().item(), 2) if len(support) else 0.0)
        rows = mix_rows(ctx.base(which), plan.ids.to(ctx.device), plan.weights.to(ctx.device))  # gathers, then casts
        if not plan.placed.all():
            rows[~plan.placed.to(ctx.device)] = fallback_rows(ctx, which, missing[~plan.placed], ctx.options.no_vector)
        return rows
