"""Orthogonal Procrustes: the rotation that best maps one set of vectors onto another.

WECHSEL aligns two monolingual word-vector spaces with the pairs of a bilingual dictionary:
W = argmin over orthogonal W of ‖X W − Y‖_F, where row i of X and of Y are the vectors of
a word and of its translation. The solution is W = U Vᵀ for the SVD U Σ Vᵀ = Xᵀ Y
(Schönemann 1966). Orthogonality keeps each space's geometry (cosines within a language are
unchanged), so only the relative orientation of the two spaces is learned from the pairs.
"""

from __future__ import annotations

import torch


def procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The orthogonal (d, d) matrix W minimizing ‖source @ W − target‖ (rows are pairs)."""
    if source.shape != target.shape or source.ndim != 2:
        raise ValueError(f"need two (n, d) matrices of one shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    u, _, vh = torch.linalg.svd(source.double().T @ target.double())
    return (u @ vh).to(source.dtype)
