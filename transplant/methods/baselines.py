"""Baselines: zero, mean, random (per-dimension statistics) and subword (FVT).

``mean_rows`` and ``subword_rows`` are also the fallbacks other methods use for tokens
they cannot place, so they are plain functions as well as registered methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch

from transplant.errors import UserError
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.registry import register

Weighting = Literal["mean", "length", "first"]  # how subword_rows weighs a token's pieces


# Floats mix_rows gathers at once (128 MB): 216k tokens x 64 anchors x 576 floats would be
# 32 GB in one gather, and at an 8B model's width even 8,192 tokens x 64 anchors are 8.6 GB.
MIX_ELEMENTS = 1 << 25


def mean_rows(ctx: Context, which: Which, count: int) -> torch.Tensor:
    """``count`` copies of the mean base row (summed in float32 without a float32 copy of the matrix)."""
    mean = torch.mean(ctx.base(which), dim=0, keepdim=True, dtype=torch.float32)
    return mean.to(ctx.device).expand(count, -1).clone()


def mix_rows(rows: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, elements: int = MIX_ELEMENTS) -> torch.Tensor:
    """(n, d): each output row is sum_j weights[i, j] * rows[ids[i, j]]; ids < 0 are padding
    (give them weight 0). In float32 (or ``rows``' dtype when wider): the rows are gathered,
    then cast, so a bfloat16 matrix is never copied whole. In chunks of targets that gather
    at most ``elements`` floats; each output row is the same whatever the chunk."""
    dtype = torch.promote_types(rows.dtype, torch.float32)
    chunk = max(1, elements // max(1, ids.shape[1] * rows.shape[1]))
    parts = [
        torch.einsum("nl,nld->nd", w, rows[i.clamp(min=0)].to(dtype))
        for i, w in zip(ids.split(chunk), weights.to(dtype).split(chunk))
    ]
    return torch.cat(parts) if parts else rows.new_zeros(0, rows.shape[1], dtype=dtype)


def subword_rows(
    ctx: Context,
    which: Which,
    missing: torch.Tensor,
    weighting: Weighting = "mean",
    batch_size: int = 4096,
) -> torch.Tensor:
    """FVT: each token's row is a weighted mean of the base rows of its decomposition.

    Works on padded (batch, L) decompositions: a gather plus a weighted sum per batch, no
    loop over tokens; batches bound the (batch, L, d) gather. Tokens that decompose to
    nothing get the mean row.
    """
    base = ctx.base(which)
    lengths = torch.tensor([len(s) for s in ctx.match.base_vocab.surfaces], dtype=torch.float32)
    lengths = lengths.to(ctx.device).clamp(min=1.0)
    out = torch.empty(len(missing), base.shape[1], device=ctx.device)
    for start in range(0, len(missing), batch_size):
        pieces = ctx.match.decompose_padded(missing[start : start + batch_size]).to(ctx.device)
        present = pieces >= 0
        if weighting == "first":
            weights = torch.zeros_like(pieces, dtype=torch.float32)
            weights[:, 0] = present[:, 0].float()
        elif weighting == "length":
            weights = torch.where(present, lengths[pieces.clamp(min=0)], 0.0)
        else:
            weights = present.float()
        total = weights.sum(dim=1, keepdim=True)
        out[start : start + len(pieces)] = mix_rows(base, pieces, weights / total.clamp(min=1e-12))
        empty = total.squeeze(1) == 0
        if empty.any():
            out[start : start + len(pieces)][empty] = mean_rows(ctx, which, int(empty.sum()))
    return out


@register
class Zero(MethodBase):
    name: ClassVar[str] = "zero"
    description: ClassVar[str] = "zero rows (a lower bound to compare against)"
    chunkable: ClassVar[bool] = True

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(missing), ctx.base(which).shape[1], device=ctx.device)


@register
class Mean(MethodBase):
    name: ClassVar[str] = "mean"
    description: ClassVar[str] = "mean of all base rows"
    chunkable: ClassVar[bool] = True

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        return mean_rows(ctx, which, len(missing))


@register
class Random(MethodBase):
    name: ClassVar[str] = "random"
    description: ClassVar[str] = "normal noise with the per-dimension mean and std of the base rows (seeded)"

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        base = ctx.base(which).to(ctx.device, torch.float32)
        std, mean = torch.std_mean(base, dim=0)
        # drawn on the CPU, whose generator gives the same numbers whatever the device
        noise = torch.randn(len(missing), base.shape[1], generator=ctx.generator(which)).to(ctx.device)
        return mean + std * noise


@dataclass(frozen=True)
class SubwordOptions:
    subword_weighting: Weighting = "mean"

    def __post_init__(self) -> None:
        """The flag parser checks the choice, but a library caller does not go through it,
        and ``subword_rows`` would read an unknown weighting as the mean."""
        if self.subword_weighting not in get_args(Weighting):
            raise UserError(f"subword: --subword-weighting must be one of {', '.join(get_args(Weighting))}, "
                            f"not {self.subword_weighting!r}")


@register
class Subword(MethodBase):
    name: ClassVar[str] = "subword"
    description: ClassVar[str] = "FVT: mean of the base rows of the token's base-tokenizer pieces"
    Options: ClassVar[type] = SubwordOptions
    chunkable: ClassVar[bool] = True

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        return subword_rows(ctx, which, missing, ctx.options.subword_weighting)
