"""Batched orthogonal matching pursuit (OMP): pure tensor math, no I/O.

For each target x, OMP greedily picks k atoms (rows of a dictionary A): at each step the atom
whose inner product with the current residual is largest in absolute value, then refits the
coefficients of *all* picked atoms by least squares, so the residual x - c·A_S stays
orthogonal to the picked atoms. Raw inner products, no normalization, every target gets k
atoms: mergekit's ``batch_omp``, step for step.

Two ways to run it, chosen by ``pool``:

* ``pool=0``, exact over every atom: the correlations of each residual with all N atoms are
  one GEMM per step, N·D per target per step. This is mergekit's cost (hours for ~200k
  targets over ~46k anchors on two cores) and the reference the fast mode is measured against.
* ``pool=M``, over each target's M candidate atoms: the M anchors nearest the target (cosine
  around the anchor mean, FAISS), then OMP restricted to them in *Gram form* (Batch-OMP,
  Rubinstein, Zibulevsky & Elad 2008): with the candidates' Gram matrix G (M×M) and their
  inner products with the target, every step is O(M·t) work in coefficient space and never
  touches the D-dimensional vectors again. With M ≥ N the pool is every atom and the result is
  exact OMP again. Why a pool and not the full N×N Gram matrix: N ≫ D for vocabularies, so the
  full G is gigabytes and each update a memory-bound pass over it. What the pool costs in
  quality: little, because coefficients are transferred to another embedding space, where the
  far-away atoms that exact OMP adds to cancel the last bits of the residual carry noise
  rather than meaning (held-out anchors transfer better from the pool, see
  ``benchmarks/omp_quality.py``; perplexity is equal or better on European prose and code,
  worse on CJK byte pieces, which the method's subword fallback covers). Nearest neighbours
  are often near-copies of each other, though, and least squares then splits a target into
  huge opposite coefficients that cancel in the donor space but not in the base space: the
  pooled mode refits by ridge regression (``ridge``), which is plain OMP over augmented atoms
  [a_i, √λ·e_i], i.e. G + λI in Gram form.

Both keep the same bookkeeping (:class:`_Factor`): each pick a_j is split into its part along
the earlier picks (w = Qᵀa_j) and a new orthonormal direction q = (a_j - Q w)/p; then L (rows
[w, p]) is the Cholesky factor of the picks' Gram matrix, z_t = q·x the target's coordinate
on the new direction, the residual norm drops by z_t², and the coefficients are L⁻ᵀz: one
triangular solve at the end, float64 throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch

from transplant.maths.neighbors import Index


@dataclass
class OmpResult:
    """``indices`` (B, k) into the dictionary rows, ``coeffs`` (B, k) float32, and the relative
    residual ||x - c·A_S|| / ||x|| (B,) of each target in the dictionary's own space."""

    indices: torch.Tensor
    coeffs: torch.Tensor
    rel_residual: torch.Tensor


_RESIDUAL_TOL = 1e-6  # relative residual treated as zero: float32 rounding of the inputs
_PIVOT_TOL = 1e-6  # squared sine of the angle between a new atom and the span of the picked ones
_PIVOT_TOL_FLOAT32 = 1e-4  # the same from a float32 Gram matrix, whose entries are off by ~1e-6
_EXACT_SEARCH_PAIRS = 2e9  # target × anchor pairs up to which candidate search is exact


def auto_batch_size(num_atoms: int, dim: int, k: int, pool: int, fraction: float = 0.2) -> int:
    """How many targets fit in ``fraction`` of the available RAM at once.

    Exact: a row of N correlations and its absolute value, and in float64 the orthonormal
    directions (k, D) and the residual. Pooled: the candidates (M, D), their Gram matrix
    (M, M) and in float64 the directions in coefficient space (k, M)."""
    if pool:
        per_target = 4 * (pool * dim + pool * pool) + 8 * (k * pool + k * k + 4 * pool)
    else:
        per_target = 4 * 3 * num_atoms + 8 * (k * dim + k * k + 3 * dim)
    budget = psutil.virtual_memory().available * fraction
    return int(max(16, min(4096, budget // per_target)))


def candidate_pools(targets: torch.Tensor, atoms: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """(B, size) ids of the atoms nearest each target by cosine around the atoms' mean, best
    first. Centered because raw embeddings share a dominant direction that makes every atom
    look alike. Exact search while it is cheap, else FAISS IVF (seeded, so deterministic)."""
    mean = atoms.mean(dim=0)
    centered, queries = atoms - mean, targets - mean
    exact = len(targets) * len(atoms) <= _EXACT_SEARCH_PAIRS
    index = Index(centered, normalize=True, exact_limit=len(atoms) if exact else 0, seed=seed)
    ids = index.search(queries, size)[1]
    short = (ids < 0).any(dim=1)  # IVF found fewer than ``size`` in the lists it probed
    if short.any():
        ids[short] = Index(centered, normalize=True, exact_limit=len(atoms)).search(queries[short], size)[1]
    return ids


def batch_omp(
    targets: torch.Tensor,
    atoms: torch.Tensor,
    k: int,
    pool: int = 0,
    batch_size: int = 0,
    seed: int = 0,
    ridge: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> OmpResult:
    """OMP of every row of ``targets`` (B, D) over the rows of ``atoms`` (N, D).

    ``pool`` = 0 is exact OMP over all atoms; M > 0 restricts each target to its M candidate
    atoms (see the module docstring; M ≥ N is exact too). ``batch_size`` = 0 adapts to RAM;
    ``seed`` seeds the approximate candidate search used for very large problems. ``ridge``
    (pooled only) refits by ridge regression, adding ``ridge`` times the mean squared atom
    norm to the Gram diagonal: near-duplicate candidates then cannot take huge cancelling
    coefficients (which transfer as huge rows, since they cancel only in the donor space).
    ``progress(n)`` is called after each batch with the number of targets it finished."""
    num_atoms, dim = atoms.shape
    if not 1 <= k <= num_atoms:
        raise ValueError(f"cannot pick {k} atoms out of {num_atoms}")
    if pool and pool < k:
        raise ValueError(f"a pool of {pool} candidates cannot supply {k} atoms")
    if ridge < 0 or (ridge and not pool):
        raise ValueError(f"ridge must be >= 0 and needs a pool, got ridge={ridge} with pool={pool}")
    atoms = atoms.to(torch.float32)
    targets = targets.to(atoms)
    shared = not pool or pool >= num_atoms
    pools = None if shared else candidate_pools(targets, atoms, pool, seed)
    atoms64 = atoms.double() if pool >= num_atoms else None  # every atom is a candidate: one shared Gram
    gram = atoms64 @ atoms64.T if atoms64 is not None else None
    lam = ridge * float(atoms.pow(2).sum(dim=1).mean())
    batch_size = batch_size or auto_batch_size(num_atoms, dim, k, min(pool, num_atoms))
    parts = []
    for start in range(0, len(targets), batch_size):
        x = targets[start : start + batch_size]
        if pools is not None:
            ids = pools[start : start + batch_size]
            chosen = atoms[ids]
            gram_rows = torch.bmm(chosen, chosen.transpose(1, 2))  # float32: half the time of float64
            result = _pooled(x, torch.einsum("bmd,bd->bm", chosen, x), gram_rows, k, lam, _PIVOT_TOL_FLOAT32)
            result.indices = ids.gather(1, result.indices)
        elif gram is not None:
            result = _pooled(x, x.double() @ atoms64.T, gram.expand(len(x), -1, -1), k, lam)
        else:
            result = _exact(x, atoms, k)
        parts.append(result)
        if progress is not None:
            progress(len(x))
    if not parts:
        return _Factor(targets, k).result()
    return OmpResult(*(torch.cat(field) for field in zip(*((p.indices, p.coeffs, p.rel_residual) for p in parts))))


class _Factor:
    """The least-squares state shared by both modes, for a batch of B targets.

    A target stops taking atoms once its residual is ~0 or its next pick is ~linearly
    dependent on the earlier ones (always so once k exceeds the dimension): from then on its
    picks get an identity row in L and z = 0, i.e. coefficient 0, and the others are unchanged.
    Without this the pivot is ~0 and the coefficients blow up."""

    def __init__(self, x: torch.Tensor, k: int, pivot_tol: float = _PIVOT_TOL) -> None:
        batch = len(x)
        self.pivot_tol = pivot_tol
        self.norm2 = x.double().pow(2).sum(dim=1)
        self.res2 = self.norm2.clone()
        self.live = self.norm2 > 0
        self.chol = torch.zeros(batch, k, k, dtype=torch.float64, device=x.device)
        self.z = torch.zeros(batch, k, dtype=torch.float64, device=x.device)
        self.picked = torch.empty(batch, k, dtype=torch.long, device=x.device)

    def add(self, t: int, j: torch.Tensor, w: torch.Tensor, norm2: torch.Tensor, corr: torch.Tensor):
        """Record pick ``j`` (B,) at step ``t``: ``w`` (B, t) its coordinates on the earlier
        directions, ``norm2`` its squared norm, ``corr`` its inner product with the residual.
        Returns the new direction's scale 1/p (0 where the pick is not taken) and z_t."""
        self.picked[:, t] = j
        pivot = norm2 - (w * w).sum(dim=1)
        ok = self.live & (pivot > self.pivot_tol * norm2) & (norm2 > 0)
        p = torch.where(ok, pivot.clamp(min=1e-300).sqrt(), 1.0)
        z_t = torch.where(ok, corr / p, 0.0)
        self.chol[:, t, :t] = torch.where(ok[:, None], w, 0.0)
        self.chol[:, t, t] = p
        self.z[:, t] = z_t
        self.res2 -= z_t * z_t
        self.live = ok & (self.res2 > _RESIDUAL_TOL**2 * self.norm2)
        return torch.where(ok, 1.0 / p, 0.0), z_t

    def coefficients(self) -> torch.Tensor:
        """(B, k) float64: c = L⁻ᵀz, the least-squares coefficients of the picks."""
        return torch.linalg.solve_triangular(self.chol.mT, self.z[:, :, None], upper=True).squeeze(-1)

    def result(self, coeffs: torch.Tensor | None = None, res2: torch.Tensor | None = None) -> OmpResult:
        """The picks, coefficients and relative residual. A caller that already solved for
        ``coeffs`` passes them, and ``res2`` (squared residual norms) where it knows them
        better than the running ``self.res2``."""
        coeffs = self.coefficients() if coeffs is None else coeffs
        res2 = self.res2 if res2 is None else res2
        rel = (res2.clamp(min=0) / self.norm2.clamp(min=1e-300)).sqrt()
        return OmpResult(self.picked, coeffs.float(), rel.float())


def _exact(x: torch.Tensor, atoms: torch.Tensor, k: int) -> OmpResult:
    """Exact OMP: one GEMM of the residuals against every atom per step; the orthonormal
    directions are kept in the atoms' space (B, k, D)."""
    rows = torch.arange(len(x), device=x.device)
    factor = _Factor(x, k)
    directions = torch.zeros(len(x), k, atoms.shape[1], dtype=torch.float64, device=x.device)
    residual = x.double()
    for t in range(k):
        score = (residual.float() @ atoms.T).abs_()
        score[rows[:, None], factor.picked[:, :t]] = -1.0  # never pick an atom twice
        j = score.argmax(dim=1)
        atom = atoms[j].double()
        w = torch.bmm(directions[:, :t], atom[:, :, None]).squeeze(-1)
        scale, z_t = factor.add(t, j, w, atom.pow(2).sum(dim=1), (atom * residual).sum(dim=1))
        q = (atom - torch.bmm(w[:, None, :], directions[:, :t]).squeeze(1)) * scale[:, None]
        directions[:, t] = q
        residual -= q * z_t[:, None]
    return factor.result()


def _pooled(
    x: torch.Tensor, alpha0: torch.Tensor, gram: torch.Tensor, k: int, lam: float = 0.0, pivot_tol: float = _PIVOT_TOL
) -> OmpResult:
    """OMP over each target's own M candidates, given their inner products with the target
    ``alpha0`` (B, M) and their Gram matrix ``gram`` (B, M, M). The directions are kept as
    their inner products with the candidates (B, k, M), so a pick's coordinates w are a
    gather and the correlations update by one rank-1 step: O(M·t) per step, no D.

    ``lam`` > 0 is ridge regression done as plain OMP over augmented atoms [a_i, √λ·e_i]
    (target [x, 0]): their Gram matrix is G + λI and their inner products with the target
    and with unpicked atoms' residual are unchanged, so only the picked atom's own Gram entry
    gains λ. The reported residual is the plain one, ||x - A_S c||."""
    rows = torch.arange(len(x), device=x.device)
    factor = _Factor(x, k, pivot_tol)
    corr = alpha0.to(torch.float64, copy=True)  # candidates · residual
    projections = torch.zeros(len(x), k, alpha0.shape[1], dtype=torch.float64, device=x.device)
    taken = torch.zeros_like(alpha0, dtype=torch.bool)
    for t in range(k):
        j = corr.abs().masked_fill_(taken, -1.0).argmax(dim=1)
        taken[rows, j] = True
        w = projections[rows, :t, j]
        column = gram[rows, j].double()
        column[rows, j] += lam
        scale, z_t = factor.add(t, j, w, column[rows, j], corr[rows, j])
        h = (column - torch.bmm(w[:, None, :], projections[:, :t]).squeeze(1)) * scale[:, None]
        projections[:, t] = h
        corr -= h * z_t[:, None]
    picked, coeffs = factor.picked, factor.coefficients()
    gram_s = gram[rows[:, None, None], picked[:, :, None], picked[:, None, :]].double()
    res2 = factor.norm2 - 2 * (coeffs * alpha0.gather(1, picked).double()).sum(1)
    res2 += torch.einsum("bi,bij,bj->b", coeffs, gram_s, coeffs)
    return factor.result(coeffs, res2)
