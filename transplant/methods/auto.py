"""auto: the best rows the inputs allow, chosen token by token (the default method).

Which method wins depends on what the user has, and the measured tables (docs/results.md)
rank them the same way on every tokenizer tried:

1. A ``zett`` hypernetwork trained for this base: ``--hypernet DIR``, or else the best one
   this machine trained that fits the base (``transplant hypernet list``: the lowest held-out
   bits per byte of its own training log). It is the
   best zero-shot method wherever one exists, so every missing row comes from it.
2. Without one, ``tokenadapt`` gives every missing row (text-embedding neighbours blended
   with the token's pieces). With ``--omp-threshold T`` above 0 and a donor model at hand
   (``--donor``, or NEW names a model), tokens whose donor row a sparse mix of shared anchors
   reproduces within relative residual T take ``omp``'s row instead. Off by default: at 0.3
   those rows gained ×0.9998 on one pair and cost ×1.003 on another (docs/results.md).
3. ``subword`` is the floor: when the text encoder behind ``tokenadapt`` cannot be had
   (offline, never fetched), every row that would be its comes from the token's pieces.
   It is also the row of every token a text encoder cannot read (:func:`readable`): a piece
   of a UTF-8 character (the encoder sees U+FFFD) or whitespace alone (it sees nothing).
   Their neighbours in a sentence encoder's space are noise, while their pieces are exact:
   on Japanese and Chinese text, and on indented code, `tokenadapt` lost to `subword` for
   this. Digits and punctuation are read well enough: giving them `subword` rows instead
   cost German text ×1.19 (docs/results.md).

``method_report`` says where the rows came from (counts per source and matrix) and why.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch

from transplant.errors import UserError
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import subword_rows
from transplant.methods.omp import OmpOptions, transfer
from transplant.methods.registry import get, register


@dataclass(frozen=True)
class AutoOptions:
    hypernet: Optional[str] = None  # a zett HN_DIR; None = the best registered one that fits the base
    registered: bool = True  # look for a registered hypernetwork when --hypernet is not given
    omp_threshold: float = 0.0  # > 0: donor tokens with OMP relative residual at most this take OMP's row
    aux_model: Optional[str] = None  # tokenadapt's text encoder (default: the packaged MiniLM)

    def __post_init__(self) -> None:
        if not 0.0 <= self.omp_threshold <= 1.0:
            raise UserError(f"auto: --omp-threshold is a relative residual in [0, 1], got {self.omp_threshold}")


def find_hypernet(ctx: Context, options: AutoOptions) -> Path | None:
    """The hypernetwork to use: the one given (which must fit), else the best registered zett
    network (:func:`~transplant.hypernet.catalog.ranked`) that loads for this base (the fit is
    the loader's own check; the network found stays loaded for zett's rows), else None."""
    from transplant.hypernet import catalog
    from transplant.hypernet.zett import hypernet_for

    if options.hypernet:
        return Path(options.hypernet)
    if not options.registered:
        return None
    for entry in catalog.ranked("zett"):
        try:
            hypernet_for(ctx, Path(entry.path))
        except UserError:
            continue
        return Path(entry.path)
    return None


def readable(surface: bytes) -> bool:
    """Whether a sentence encoder sees what the token writes: whole UTF-8 characters, not
    whitespace alone."""
    try:
        text = surface.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not text.isspace()


def _rows_of(name: str, ctx: Context, options: object, which: Which, missing: torch.Tensor) -> torch.Tensor:
    """Rows of another registered method, run on this context with its own options; what it
    reports (e.g. zett's base check) is reported as auto's."""
    sub = dataclasses.replace(ctx, options=options, report={})
    rows = get(name)().init_rows(sub, which, missing)
    ctx.report.update(sub.report)
    return rows


@register
class Auto(MethodBase):
    name: ClassVar[str] = "auto"
    description: ClassVar[str] = ("the best the inputs allow: zett with a hypernetwork for the base, else tokenadapt "
                                  "(subword rows where a text encoder sees nothing); subword as the floor")
    Options: ClassVar[type] = AutoOptions
    uses_donor: ClassVar[bool] = True

    @classmethod
    def wants_donor(cls, options: AutoOptions) -> bool:
        """Only OMP rows read the donor; with them off (the default) it is not loaded."""
        return options.omp_threshold > 0

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        options: AutoOptions = ctx.options
        hypernet = ctx.plan("auto:hypernet", missing, lambda: find_hypernet(ctx, options))
        if hypernet is not None:
            from transplant.hypernet.zett import ZettOptions

            ctx.report["hypernet"] = str(hypernet)
            return self._record(ctx, which, {"zett": missing.numel()},
                                _rows_of("zett", ctx, ZettOptions(hypernet=str(hypernet)), which, missing))
        rows, source = self._guess_rows(ctx, which, missing, options)
        explained = torch.zeros(len(missing), dtype=torch.bool)
        if ctx.donor_input is not None and options.omp_threshold > 0:
            explained = self._explained_by_donor(ctx, which, missing, options, rows)
        unreadable = ctx.plan("auto:unreadable", missing, lambda: torch.tensor(
            [not readable(ctx.match.new_vocab.surfaces[i]) for i in missing.tolist()], dtype=torch.bool))
        if unreadable.any():
            rows[unreadable.to(rows.device)] = subword_rows(ctx, which, missing[unreadable]).to(rows.device, rows.dtype)
        counts = Counter({"omp": int((explained & ~unreadable).sum()), source: int((~explained & ~unreadable).sum())})
        counts["subword"] += int(unreadable.sum())
        return self._record(ctx, which, {name: n for name, n in counts.items() if n}, rows)

    def _guess_rows(self, ctx: Context, which: Which, missing: torch.Tensor,
                    options: AutoOptions) -> tuple[torch.Tensor, str]:
        """tokenadapt's rows, or subword's when its text encoder cannot be loaded."""
        from transplant.methods.tokenadapt import TokenAdaptOptions

        try:
            return _rows_of("tokenadapt", ctx, TokenAdaptOptions(aux_model=options.aux_model), which, missing), \
                "tokenadapt"
        except UserError as e:
            ctx.report["tokenadapt_unavailable"] = str(e)
            return subword_rows(ctx, which, missing), "subword"

    def _explained_by_donor(self, ctx: Context, which: Which, missing: torch.Tensor, options: AutoOptions,
                            rows: torch.Tensor) -> torch.Tensor:
        """Overwrite, in ``rows``, the rows of tokens the donor's anchors explain well with
        OMP's; which those were (a bool per missing token). Special tokens are left out: the
        donor never saw most of them in text (Gemma-3's 6,242 ``<unusedN>``), so their rows are
        near one another, anchors "explain" them almost exactly, and the rows OMP gives them
        took probability from real tokens in a tied head (×1.02 overall on Gemma-3's tokenizer)."""
        donor = ctx.donor(which)
        missing = missing.to(ctx.device)
        special = torch.tensor(ctx.match.new_vocab.special, dtype=torch.bool, device=missing.device)[missing]
        in_donor = ((missing < len(donor)) & ~special).nonzero().squeeze(1)
        omp_ctx = dataclasses.replace(ctx, options=OmpOptions(fallback="none"))
        omp_rows, result = transfer(omp_ctx, which, donor[missing[in_donor]])
        good = result.rel_residual <= options.omp_threshold
        rows[in_donor[good].to(rows.device)] = omp_rows[good].to(rows.device, rows.dtype)
        explained = torch.zeros(len(missing), dtype=torch.bool)
        explained[in_donor[good].cpu()] = True
        return explained

    @staticmethod
    def _record(ctx: Context, which: Which, counts: dict[str, int], rows: torch.Tensor) -> torch.Tensor:
        ctx.report.setdefault("sources", {})[which] = counts
        return rows
