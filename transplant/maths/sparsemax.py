"""Sparsemax weights over cosine similarities to many candidates, without the full matrix.

FOCUS weighs each new token's overlap tokens by sparsemax of their cosine similarities.
Sparsemax keeps only entries above a threshold τ (weight = s − τ, summing to 1), so its
support is a handful of candidates out of tens of thousands. Computing it on the top-M
similarities alone (found by FAISS) is exact whenever τ lies at or above the M-th largest
similarity: every candidate outside the top M scores no higher than that one, so it would
get weight 0 in the full sparsemax too. Where τ falls below it, all M are in the support
and more may be: those rows are searched again with twice the M, until the check holds or
M covers every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from entmax import sparsemax

from transplant.maths.neighbors import Index


@dataclass
class SparseWeights:
    """Per query row: the supported candidates' indices (-1 = padding) and weights, best
    first, padded to the largest support; ``widest`` is the largest M any row needed."""

    ids: torch.Tensor
    weights: torch.Tensor
    widest: int


def threshold(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sparsemax's τ per row, from its output: every supported entry has weight s − τ."""
    support = weights > 0
    return ((scores * support).sum(1) - 1) / support.sum(1)


def sparsemax_topm(queries: torch.Tensor, candidates: torch.Tensor, m: int = 256, seed: int = 0) -> SparseWeights:
    """Exact sparsemax over the cosine similarities of each query to all ``candidates``.

    FAISS finds the top ``m`` candidates per query (one batched search); rows whose check
    fails are searched again with a doubled ``m``, only those rows, until exact. Only the
    support is kept, so memory follows the support size, not the widest search."""
    if m < 1:
        raise ValueError(f"m must be at least 1, got {m}")
    index = Index(candidates, "ip", normalize=True, seed=seed)
    n, total = len(queries), len(index)
    width = min(m, total)
    ids = torch.full((n, 1), -1, dtype=torch.long)
    weights = torch.zeros(n, 1)
    pending = torch.arange(n)
    while len(pending):
        scores, found = index.search(queries[pending], width, device="cpu")
        w = sparsemax(scores, dim=-1)
        exact = (threshold(scores, w) >= scores[:, -1]) | (width >= total)
        kept = int(w[exact].gt(0).sum(1).max()) if exact.any() else 0
        if kept > ids.shape[1]:
            ids = torch.cat([ids, ids.new_full((n, kept - ids.shape[1]), -1)], 1)
            weights = torch.cat([weights, weights.new_zeros(n, kept - weights.shape[1])], 1)
        done = pending[exact]
        ids[done, :kept] = torch.where(w[exact, :kept] > 0, found[exact, :kept], -1)
        weights[done, :kept] = w[exact, :kept]
        pending = pending[~exact]
        if len(pending):
            width = min(2 * width, total)
    return SparseWeights(ids, weights, width)
