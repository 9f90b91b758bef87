"""Exact vs approximate neighbour search: build time, search time and recall@k.

    PYTHONPATH=. python benchmarks/neighbors.py [--n 300000] [--dim 16 64 384] [--queries 20000]
    PYTHONPATH=. python benchmarks/neighbors.py --vectors A.npy --query-file B.npy

Random Gaussian vectors are the hardest case for an IVF index (no cluster structure), so
the recall printed for them is a lower bound. ``--vectors``/``--query-file`` measure real
data instead, e.g. the cached text embeddings under ``<cache>/textembed/`` (Gemma-3's
vocabulary as the index, SmolLM2's as queries).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from transplant.maths.neighbors import Index


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def datasets(args: argparse.Namespace) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(index vectors, queries): the given files, or random Gaussian ones per dimension.
    Duplicate rows are dropped from files, so ties cannot make exact and approximate
    search disagree about ids of equal vectors."""
    if args.vectors:
        queries = torch.unique(torch.from_numpy(np.load(args.query_file)), dim=0)
        pick = torch.randperm(len(queries), generator=torch.Generator().manual_seed(0))[: args.queries]
        yield torch.unique(torch.from_numpy(np.load(args.vectors)), dim=0), queries[pick]
        return
    g = torch.Generator().manual_seed(0)
    for dim in args.dim:
        yield torch.randn(args.n, dim, generator=g), torch.randn(args.queries, dim, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--dim", type=int, nargs="+", default=[16, 64, 384])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--vectors", type=Path, help="an (n, d) .npy to index instead of random vectors")
    parser.add_argument("--query-file", type=Path, help="an (m, d) .npy of queries (with --vectors)")
    args = parser.parse_args()

    print(f"{'dim':>5} {'index':>7} {'build s':>8} {'search s':>9} {'recall@k':>9}")
    for vectors, queries in datasets(args):
        dim = vectors.shape[1]
        exact, build = timed(lambda: Index(vectors, "ip", normalize=True, exact_limit=len(vectors)))
        (_, truth), search = timed(lambda: exact.search(queries, args.k))
        print(f"{dim:>5} {'flat':>7} {build:>8.2f} {search:>9.2f} {1.0:>9.3f}")
        approx, build = timed(lambda: Index(vectors, "ip", normalize=True, exact_limit=0))  # always IVF
        (_, ids), search = timed(lambda: approx.search(queries, args.k))
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth))
        print(f"{dim:>5} {'ivf':>7} {build:>8.2f} {search:>9.2f} {hits / truth.numel():>9.3f}")


if __name__ == "__main__":
    main()
