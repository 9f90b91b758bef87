"""Exact vs approximate neighbour search: build time, search time and recall@k.

    PYTHONPATH=. python benchmarks/neighbors.py [--n 300000] [--dim 16 64 384] [--queries 20000]

Random Gaussian vectors are the hardest case for an IVF index (no cluster structure), so
the recall printed here is a lower bound for real embeddings of the same dimension.
"""

from __future__ import annotations

import argparse
import time

import torch

from transplant.neighbors import Index


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--dim", type=int, nargs="+", default=[16, 64, 384])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    print(f"{'dim':>5} {'index':>7} {'build s':>8} {'search s':>9} {'recall@k':>9}")
    g = torch.Generator().manual_seed(0)
    for dim in args.dim:
        vectors = torch.randn(args.n, dim, generator=g)
        queries = torch.randn(args.queries, dim, generator=g)
        exact, build = timed(lambda: Index(vectors, "ip", normalize=True, exact_limit=args.n))
        (_, truth), search = timed(lambda: exact.search(queries, args.k))
        print(f"{dim:>5} {'flat':>7} {build:>8.2f} {search:>9.2f} {1.0:>9.3f}")
        approx, build = timed(lambda: Index(vectors, "ip", normalize=True))
        (_, ids), search = timed(lambda: approx.search(queries, args.k))
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth))
        print(f"{dim:>5} {'ivf':>7} {build:>8.2f} {search:>9.2f} {hits / truth.numel():>9.3f}")


if __name__ == "__main__":
    main()
