"""OMP: express each missing token's donor row as a sparse combination of anchor rows.

Anchors are tokens both vocabularies share exactly; they exist in the donor (by new id) and
in the base (by base id). A donor row x_t is approximated by k anchors via orthogonal
matching pursuit (:mod:`transplant.maths.omp`); the same coefficients applied to those anchors'
*base* rows give the new base row. Only coefficients cross between the spaces, so the hidden
sizes of donor and base may differ. By default each token picks among its ``--pool`` (64)
nearest anchors with a ridge refit (``--ridge``, 0.03): ~50x faster than exact OMP and
measured as good or better. ``--pool 0`` is exact OMP over all anchors: mergekit's result.

Two kinds of tokens do not go through OMP. Tokens the donor has no row for (ids appended to
the tokenizer after the donor was trained, e.g. chat markers) take the subword row. With
``--fallback subword``, tokens whose donor row the anchors explain badly (relative residual
above ``--fallback-threshold``) take it too: a per-token choice between the two methods.
This is the default because it measured best: on gemma3-270m -> SmolLM2 tokenizer, plain
OMP beat subword on European prose but lost badly on code (a few whitespace-run tokens with
a large residual, heavily used in code) and on CJK (partial-UTF-8 byte pieces); the residual
finds exactly those tokens. ``--fallback none`` is mergekit's behaviour. The threshold
defaults to 0.3 for exact OMP and 0.55 for the pool (its residuals run higher; 0.55 sends
the same ~38% of tokens of that pair to subword).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch

from transplant.errors import UserError
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import mix_rows, subword_rows
from transplant.methods.registry import register
from transplant.maths.omp import OmpResult, batch_omp


# Defaults of the options left at None, by mode (exact = --pool 0). Ridge: best of 0-0.1 on
# held-out anchors with a pool, and no blown-up rows; exact OMP has none (mergekit's result).
# Fallback threshold: 0.3 was best for exact OMP; pooled residuals run higher (fewer
# candidates), and 0.55 sends the same ~38% of tokens to subword.
AUTO = {"ridge": {"exact": 0.0, "pooled": 0.03}, "fallback_threshold": {"exact": 0.3, "pooled": 0.55}}


@dataclass(frozen=True)
class OmpOptions:
    """``ridge`` and ``fallback_threshold`` left at None (auto) take their mode's default
    (:data:`AUTO`) when built, so an instance, and the transplant.json written from it, holds
    the values used. Build a new instance rather than ``dataclasses.replace`` one to change
    ``pool``: the resolved values would be carried over."""

    k: int = 64
    center: bool = False
    pool: int = 64
    ridge: Optional[float] = None
    batch_size: int = 0
    fallback: Literal["none", "subword"] = "subword"
    fallback_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        """Checks that need no model, so a bad flag fails before anything is loaded; then auto values."""
        if self.k < 1:
            raise UserError(f"omp: --k must be at least 1, got {self.k}")
        if self.ridge is not None and (self.ridge < 0 or (self.ridge and not self.pool)):
            raise UserError(f"omp: --ridge must be >= 0, and 0 with --pool 0 (exact OMP), got {self.ridge}")
        if self.pool < 0:
            raise UserError(f"omp: --pool must be 0 (all anchors) or at least --k ({self.k}), got {self.pool}")
        if self.batch_size < 0:
            raise UserError(f"omp: --batch-size must be >= 0 (0 adapts to RAM), got {self.batch_size}")
        if self.fallback not in ("none", "subword"):
            raise UserError(f"omp: --fallback must be none or subword, got {self.fallback!r}")
        if self.fallback_threshold is not None and not 0.0 <= self.fallback_threshold <= 1.0:
            raise UserError(f"omp: --fallback-threshold is a relative residual in [0, 1], got {self.fallback_threshold}")
        mode = "pooled" if self.pool else "exact"
        for name, defaults in AUTO.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[mode])  # frozen: the one write, at construction


def _validate(options: OmpOptions, num_anchors: int) -> None:
    """The checks that need the anchors (k against the pool after k against the anchors, so
    a k too large names the anchor count); the rest run when the options are built."""
    if num_anchors == 0:
        raise UserError("omp: the donor and base vocabularies share no tokens to use as anchors")
    if options.k > num_anchors:
        raise UserError(f"omp: --k must be between 1 and the number of anchors ({num_anchors}), got {options.k}")
    if options.pool and options.pool < options.k:
        raise UserError(f"omp: --pool must be 0 (all anchors) or at least --k ({options.k}), got {options.pool}")


def transfer(ctx: Context, which: Which, targets: torch.Tensor) -> tuple[torch.Tensor, OmpResult]:
    """Base rows for the donor rows ``targets`` (n, d_donor), and the OMP result behind them.

    With ``center`` the anchor means are removed in both spaces before fitting and the base
    mean added back, so coefficients describe offsets from the typical token."""
    options: OmpOptions = ctx.options
    donor, base = ctx.donor(which).to(ctx.device, torch.float32), ctx.base(which).to(ctx.device, torch.float32)
    new_ids, base_ids = (ids.to(ctx.device) for ids in ctx.match.anchors)
    usable = new_ids < len(donor)
    atoms, images = donor[new_ids[usable]], base[base_ids[usable]]
    _validate(options, len(atoms))
    targets = targets.to(ctx.device, torch.float32)
    if options.center:
        donor_mean, base_mean = atoms.mean(dim=0), images.mean(dim=0)
        atoms, images, targets = atoms - donor_mean, images - base_mean, targets - donor_mean
    advance = ctx.progress(len(targets), f"omp {which} rows")
    result = batch_omp(targets, atoms, options.k, options.pool, options.batch_size, ctx.seed, options.ridge, advance)
    rows = mix_rows(images, result.indices, result.coeffs)
    if options.center:
        rows += base_mean
    return rows, result


@register
class Omp(MethodBase):
    name: ClassVar[str] = "omp"
    description: ClassVar[str] = "orthogonal matching pursuit over shared anchors of a donor model (needs --donor)"
    Options: ClassVar[type] = OmpOptions
    needs_donor: ClassVar[bool] = True

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        options: OmpOptions = ctx.options
        donor = ctx.donor(which)
        missing = missing.to(ctx.device)
        out = torch.empty(len(missing), ctx.base(which).shape[1], device=ctx.device)
        in_donor = missing < len(donor)
        rows, result = transfer(ctx, which, donor[missing[in_donor]])
        out[in_donor] = rows
        use_subword = ~in_donor
        if options.fallback == "subword":
            use_subword[in_donor] = result.rel_residual > options.fallback_threshold
        if use_subword.any():
            out[use_subword] = subword_rows(ctx, which, missing[use_subword])
        return out
