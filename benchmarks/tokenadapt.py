"""Where TokenAdapt spends its time on real models: embedding, search, weights, rows.

    PYTHONPATH=. python benchmarks/tokenadapt.py [--base smollm2-135m] [--tokenizer gemma3-270m] [--cold]

``--cold`` uses an empty temporary cache for the text embeddings (the auxiliary model is
still taken from the normal cache), so the first and the cached run can be compared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from transplant.io.checkpoint import read_embeddings
from transplant.methods.base import Context
from transplant.methods.tokenadapt import TokenAdaptOptions, apply_plan, build_plan
from transplant.io.sources import resolve_model
from transplant.io.tokenizer import load_tokenizer
from transplant.inputs.textembed import TextEncoder, embed_cached, resolve_text_model
from transplant.vocab.matching import match_vocabularies

rows: list[tuple[str, float]] = []


@contextmanager
def step(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    rows.append((name, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--tokenizer", default="gemma3-270m")
    parser.add_argument("--aux-model", default=None)
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()

    with step("load base embeddings + tokenizers"):
        base_dir = resolve_model(args.base)
        base_tok, new_tok = load_tokenizer(str(base_dir)), load_tokenizer(args.tokenizer)
        embeddings = read_embeddings(base_dir)
    with step("match vocabularies"):
        match = match_vocabularies(base_tok, new_tok)
    with step("decompose missing tokens"):
        match.decompose_padded(match.missing)
    model_dir = resolve_text_model(args.aux_model)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            os.environ["TRANSPLANT_CACHE"] = tmp
        with step("load text encoder"):
            encoder = TextEncoder(model_dir)
        base_strings = [s.decode("utf-8", "replace") for s in match.base_vocab.surfaces]
        with step(f"embed {len(base_strings):,} base strings"):
            embed_cached(encoder, base_strings)
        with step(f"embed {len(match.missing):,} new strings"):
            embed_cached(encoder, [match.surface(i) for i in match.missing.tolist()])
        ctx = Context(match, embeddings.input.float(), None, TokenAdaptOptions(aux_model=args.aux_model))
        with step("plan: local weights + kNN search (cached embeddings)"):
            plan = build_plan(ctx, match.missing, encoder)
        with step("rows for one matrix"):
            out = apply_plan(ctx, "input", plan, ctx.options.global_weight, ctx.options.batch_size)
    assert torch.isfinite(out).all()

    print(f"{args.base} -> {args.tokenizer}: {len(match.missing):,} of {len(match.new_vocab):,} rows initialized")
    print(f"{'step':<55} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:<55} {seconds:>8.1f}")
    print(f"{'total':<55} {sum(s for _, s in rows):>8.1f}")


if __name__ == "__main__":
    main()
