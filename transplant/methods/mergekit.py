"""mergekit: the reference tool's rows, so `compare` scores it side by side with ours.

Runs mergekit-tokensurgeon (mergekit 0.1.5) in process on the base and donor checkpoint
directories: its own vocabulary normalization, anchors and approximation (``--approach``,
its ``-a``; ``--k``, its ``-k``), exactly as its command does with default flags, but
without writing a second copy of the model. The rows it builds for our ``missing`` ids are
returned unchanged; the rows we copy stay ours. mergekit matches fewer tokens exactly than
we do (it compares byte-level BPE strings undecoded, so tokens holding non-ASCII text or
whitespace other than the leading ``Ġ`` never match a SentencePiece token), so some of
our missing ids are rows it copied and most of the rest are its approximations; see
``benchmarks/omp_vs_mergekit.py rows`` for the breakdown on a real pair.

One tokensurgeon run builds both matrices; it is cached in ``ctx.cache`` for the second.
mergekit is told what the user trusts (``--trust-remote-code``); a directory whose code is not
trusted never reaches it (the pipeline refuses it first).
Randomized approaches (``randn``, ``john_hewitt``) draw from torch's global generator,
seeded from ``--seed`` inside a forked RNG state so the run is deterministic and leaves the
caller's generator alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from transplant.errors import UserError
from transplant.io.trust import Trust
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.registry import register

Approach = Literal[
    "omp", "common_interpolation", "subword", "landmark_pca", "stb", "mp_rope", "mean", "zero", "randn", "john_hewitt"
]


@dataclass(frozen=True)
class MergekitOptions:
    approach: Approach = "omp"
    k: int = 64

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UserError(f"mergekit: --k must be at least 1, got {self.k}")


def tokensurgeon(base_dir: Path, donor_dir: Path, options: MergekitOptions, device: torch.device,
                 seed: int, trust: Trust = Trust()) -> dict[Which, torch.Tensor | None]:
    """The input and output matrices mergekit-tokensurgeon writes for this pair, indexed
    by new ids (``None`` for a tied base): its command's steps, minus the writing."""
    from mergekit.common import ModelPath, ModelReference
    from mergekit.io.tasks import LoaderCache
    from mergekit.options import MergeOptions
    from mergekit.scripts import tokensurgeon as surgeon

    # Built from paths, not parsed: a path holding '+' or '@' would read as a LoRA or revision.
    model, donor = (ModelReference(model=ModelPath(path=str(d))) for d in (base_dir, donor_dir))
    merge_options = MergeOptions(device=str(device), trust_remote_code=trust.remote_code)
    surgery = surgeon.TokenSurgeonOptions(model=model, donor=donor, out_path="", k=options.k, batch_size=512,
                                          method=surgeon.ApproximationMethod(options.approach))
    try:
        arch = surgeon.get_arch_info(model, merge_options)
        embed_info, lm_head_info = surgeon.get_embedding_info(arch)
        base_vocab, base_in, base_out = surgeon.get_stuff(model, merge_options, arch_info=arch, device=str(device))
        donor_vocab, donor_in, donor_out = surgeon.get_stuff(donor, merge_options, get_tied=True, device=str(device))

        def build(info, base: torch.Tensor, donor_rows: torch.Tensor, is_lm_head: bool) -> torch.Tensor:
            return surgeon.build_embedding_matrix(
                info, base, donor_rows, orig_vocab=base_vocab, donor_vocab=donor_vocab, junk_tokens=[],
                allow_prefix=False, allow_byte=False, is_lm_head=is_lm_head, options=surgery)

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return {"input": build(embed_info, base_in, donor_in, False),
                    "output": None if base_out is None else build(lm_head_info, base_out, donor_out, True)}
    finally:  # mergekit keeps open shard readers in a process-wide cache
        for ref in (model, donor):
            LoaderCache.loaders.pop(ref, None)


@register
class Mergekit(MethodBase):
    name: ClassVar[str] = "mergekit"
    description: ClassVar[str] = "mergekit-tokensurgeon's rows (reference tool, default --approach omp; needs --donor)"
    Options: ClassVar[type] = MergekitOptions
    needs_donor: ClassVar[bool] = True

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        if ctx.base_dir is None or ctx.donor_dir is None:
            raise ValueError("the mergekit method runs on checkpoint directories (Context.base_dir, donor_dir)")
        if "mergekit" not in ctx.cache:
            ctx.cache["mergekit"] = tokensurgeon(ctx.base_dir, ctx.donor_dir, ctx.options, ctx.device, ctx.seed,
                                                 ctx.trust)
        rows = ctx.cache["mergekit"][which]
        if rows is None:
            raise RuntimeError("mergekit-tokensurgeon built no output matrix for an untied base")
        return rows[missing.to(rows.device)].to(ctx.device, torch.float32)
