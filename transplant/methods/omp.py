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


def _anchors(ctx: Context, which: Which) -> tuple[torch.Tensor, torch.Tensor]:
    """(new ids, base ids) of the anchors the donor has a row for."""
    new_ids, base_ids = (ids.to(ctx.device) for ids in ctx.match.anchors)
    usable = new_ids < len(ctx.donor(which))
    return new_ids[usable], base_ids[usable]


def fit(ctx: Context, which: Which, targets: torch.Tensor) -> OmpResult:
    """OMP of the donor rows ``targets`` (n, d_donor) over the anchors' donor rows; its
    indices count the anchors (:func:`_anchors`). Only the donor is read: the result is the
    same for both base matrices when the donor is tied.

    With ``center`` the anchor mean is removed before fitting, so coefficients describe
    offsets from the typical token (:func:`apply` adds the base's back)."""
    options: OmpOptions = ctx.options
    new_ids, _ = _anchors(ctx, which)
    atoms = ctx.donor(which)[new_ids].to(ctx.device, torch.float32)
    _validate(options, len(atoms))
    targets = targets.to(ctx.device, torch.float32)
    if options.center:
        donor_mean = atoms.mean(dim=0)
        atoms, targets = atoms - donor_mean, targets - donor_mean
    advance = ctx.progress(len(targets), f"omp {which} rows")
    return batch_omp(targets, atoms, options.k, options.pool, options.batch_size, ctx.seed, options.ridge, advance)


def apply(ctx: Context, which: Which, indices: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Base rows: each target's coefficients applied to its anchors' base rows, gathered from
    the base matrix in its own dtype (centered: the offsets from the anchors' base mean)."""
    _, base_ids = _anchors(ctx, which)
    if not ctx.options.center:
        return mix_rows(ctx.base(which), base_ids[indices], coeffs)
    images = ctx.rows(which, base_ids)
    base_mean = images.mean(dim=0)
    return mix_rows(images - base_mean, indices, coeffs) + base_mean


def transfer(ctx: Context, which: Which, targets: torch.Tensor) -> tuple[torch.Tensor, OmpResult]:
    """Base rows for the donor rows ``targets`` (n, d_donor), and the OMP result behind them."""
    result = fit(ctx, which, targets)
    return apply(ctx, which, result.indices, result.coeffs), result


@dataclass
class OmpPlan:
    """Per token: whether its row is OMP's (else subword's), and its anchors and coefficients
    (zeros for a subword token)."""

    omp: torch.Tensor
    indices: torch.Tensor
    coeffs: torch.Tensor


def build_plan(ctx: Context, which: Which, missing: torch.Tensor) -> OmpPlan:
    """OMP for the tokens of ``missing`` the donor has rows for, and the fallback's choice."""
    options: OmpOptions = ctx.options
    donor = ctx.donor(which)
    missing = missing.to(ctx.device)
    in_donor = missing < len(donor)
    result = fit(ctx, which, donor[missing[in_donor]])
    use_subword = ~in_donor
    if options.fallback == "subword":
        use_subword[in_donor] = result.rel_residual > options.fallback_threshold
    indices = torch.zeros(len(missing), options.k, dtype=torch.long, device=ctx.device)
    coeffs = torch.zeros(len(missing), options.k, device=ctx.device)
    indices[in_donor], coeffs[in_donor] = result.indices, result.coeffs
    return OmpPlan(~use_subword, indices, coeffs)


@register
class Omp(MethodBase):
    name: ClassVar[str] = "omp"
    description: ClassVar[str] = "orthogonal matching pursuit over shared anchors of a donor model (needs --donor)"
    Options: ClassVar[type] = OmpOptions
    needs_donor: ClassVar[bool] = True
    chunkable: ClassVar[bool] = True

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        """OMP is planned once per donor matrix for every planned token (a tied donor serves
        both base matrices) and applied to this call's tokens."""
        donor_matrix = "output" if which == "output" and ctx.donor_output is not None else "input"
        plan, at = ctx.plan_rows(f"omp:{donor_matrix}", missing, lambda ids: build_plan(ctx, which, ids))
        at = at.to(ctx.device)
        omp = plan.omp[at]
        out = torch.empty(len(missing), ctx.base(which).shape[1], device=ctx.device)
        out[omp] = apply(ctx, which, plan.indices[at][omp], plan.coeffs[at][omp])
        if not omp.all():
            out[~omp] = subword_rows(ctx, which, missing.to(ctx.device)[~omp])
        return out
