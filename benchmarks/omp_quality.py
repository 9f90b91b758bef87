"""OMP transfer quality in seconds, without a perplexity run: held-out anchors.

Anchors are the tokens whose base row is known. Hold ``--held-out`` of them out of the
dictionary, transfer each from its donor row exactly as a missing token would be, and compare
the transferred row with its true base row (cosine, relative error). Prints one row per
setting of k, pool (0 = exact OMP over all anchors) and centering, plus the mean row as the
floor. This is how the pooled default was found; perplexity (``transplant compare``) has the
last word, since held-out anchors are common tokens and missing ones often are not.

    python benchmarks/omp_quality.py --base smollm2-135m --donor gemma3-270m --held-out 2000
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from transformers import AutoTokenizer

from transplant.io.checkpoint import read_embeddings
from transplant.maths.omp import batch_omp
from transplant.io.sources import resolve_model
from transplant.vocab.matching import match_vocabularies


def anchor_rows(base: str, donor: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(donor rows, base rows) of the anchors of the pair, aligned."""
    base_dir, donor_dir = resolve_model(base), resolve_model(donor)
    match = match_vocabularies(AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(donor_dir))
    new_ids, base_ids = match.anchors
    donor_rows = read_embeddings(donor_dir).input.float()
    usable = new_ids < len(donor_rows)
    return donor_rows[new_ids[usable]], read_embeddings(base_dir).input.float()[base_ids[usable]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--donor", default="gemma3-270m")
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--pool", type=int, nargs="+", default=[0, 64, 256])
    parser.add_argument("--ridge", type=float, nargs="+", default=[0.0, 0.01])
    parser.add_argument("--center", choices=["off", "on", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    atoms, images = anchor_rows(args.base, args.donor)
    order = torch.randperm(len(atoms), generator=torch.Generator().manual_seed(args.seed))
    held, kept = order[: args.held_out], order[args.held_out :]
    x, truth, atoms, images = atoms[held], images[held], atoms[kept], images[kept]
    print(f"{len(kept)} anchors, {len(held)} held out, donor dim {atoms.shape[1]}, base dim {images.shape[1]}")

    def line(label: str, pred: torch.Tensor, residual: float, seconds: float) -> None:
        cos = torch.nn.functional.cosine_similarity(pred, truth, dim=1).mean()
        rel = ((pred - truth).norm(dim=1) / truth.norm(dim=1)).mean()
        print(f"{label:36s} {cos:7.4f} {rel:8.4f} {residual:9.3f} {seconds:8.1f}")

    print(f"{'setting':36s} {'cosine':>7s} {'rel err':>8s} {'residual':>9s} {'seconds':>8s}")
    line("mean row", images.mean(dim=0).expand_as(truth), float("nan"), 0.0)
    centers = {"off": (False,), "on": (True,), "both": (False, True)}[args.center]
    for pool, ridge, center, k in itertools.product(args.pool, args.ridge, centers, args.k):
        if (pool and pool < k) or (ridge and not pool):
            continue
        donor_mean, base_mean = (atoms.mean(dim=0), images.mean(dim=0)) if center else (0.0, 0.0)
        start = time.perf_counter()
        result = batch_omp(x - donor_mean, atoms - donor_mean, k, pool=pool, seed=args.seed, ridge=ridge)
        pred = torch.einsum("nk,nkd->nd", result.coeffs, (images - base_mean)[result.indices]) + base_mean
        line(f"k={k} pool={pool} ridge={ridge:g} center={center}", pred, float(result.rel_residual.mean()), time.perf_counter() - start)


if __name__ == "__main__":
    main()
