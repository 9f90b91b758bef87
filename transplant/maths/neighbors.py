"""Nearest-neighbour search: the one wrapper over FAISS.

Every method that looks for similar vectors (TokenAdapt, FOCUS, WECHSEL, ...) goes through
:class:`Index`, so the choice between exact and approximate search, normalization and
batching is made in one place. Below ``exact_limit`` vectors the search is exact
(``IndexFlat``): brute force is fast enough there and needs no tuning. Above it an
inverted-file index (IVF) is used. IVF rather than HNSW because its construction is
deterministic under a seed (seeded k-means, order-independent lists), whereas a
multi-threaded HNSW build depends on thread timing; its recall against exact search is
measured in the tests and the benchmark.
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np
import torch

Metric = Literal["ip", "l2"]


def _as_float32(x: torch.Tensor | np.ndarray, copy: bool) -> np.ndarray:
    """A C-contiguous float32 array, which is what FAISS accepts; ``copy`` when it will be
    normalized in place, so the caller's data is never modified."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.array(x, dtype=np.float32, order="C", copy=copy or None)


class Index:
    """Search ``vectors`` for the ``k`` best matches of many queries at once.

    ``metric="ip"`` ranks by inner product (highest first), ``"l2"`` by squared Euclidean
    distance (lowest first). With ``normalize=True`` vectors and queries are L2-normalized,
    so ``"ip"`` scores are cosine similarities.
    """

    def __init__(
        self,
        vectors: torch.Tensor | np.ndarray,
        metric: Metric = "ip",
        normalize: bool = False,
        exact_limit: int = 200_000,
        seed: int = 0,
        probe_fraction: float = 1 / 16,
    ) -> None:
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', not {metric!r}")
        data = _as_float32(vectors, copy=normalize)
        if data.ndim != 2 or len(data) == 0:
            raise ValueError(f"need a non-empty (n, d) matrix, got shape {data.shape}")
        self.metric = metric
        self.normalize = normalize
        if normalize:
            faiss.normalize_L2(data)
        n, dim = data.shape
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        flat = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        if n <= exact_limit:
            self.index: faiss.Index = flat
        else:
            nlist = int(4 * math.sqrt(n))
            ivf = faiss.IndexIVFFlat(flat, dim, nlist, faiss_metric)
            ivf.cp.seed = seed
            ivf.cp.max_points_per_centroid = 64  # a subsample trains the centroids well enough
            ivf.train(data)
            ivf.nprobe = max(1, math.ceil(nlist * probe_fraction))
            self.index = ivf
            self._quantizer = flat  # FAISS does not own it from Python: keep it alive
        self.index.add(data)

    @property
    def exact(self) -> bool:
        """Whether searches are exact (flat index) rather than approximate (IVF)."""
        return isinstance(self.index, faiss.IndexFlat)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(
        self, queries: torch.Tensor | np.ndarray, k: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (float32) and ids (int64) of the ``k`` best matches of each query row,
        best first; ``k`` is capped at the index size. All queries go to FAISS in one call
        (it blocks them internally and uses all cores). FAISS works on the CPU; the results
        are moved to ``device``, by default the queries' own, so a caller on a GPU gets ids
        it can index its GPU tensors with."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = _as_float32(queries, copy=self.normalize)
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise ValueError(f"queries must be (m, {self.index.d}), got shape {q.shape}")
        if self.normalize:
            faiss.normalize_L2(q)
        scores, ids = self.index.search(q, min(k, len(self)))
        if device is None:
            device = queries.device if isinstance(queries, torch.Tensor) else "cpu"
        return torch.from_numpy(scores).to(device), torch.from_numpy(ids).to(device)
