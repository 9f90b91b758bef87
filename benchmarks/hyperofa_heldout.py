"""HyperOFA against subword on the base tokens its training held out.

    PYTHONPATH=. python benchmarks/hyperofa_heldout.py HN_DIR [--base smollm2-135m]

Both predict the held-out base rows (``heldout_ids`` in HN_DIR/config.json), compared by
cosine to the true rows. For ``subword`` a base token's own decomposition is the token
itself (cosine 1, nothing learned), so it is decomposed as if the base lacked it: for a
BPE base that is the merge pair that makes the token (without that merge, BPE stops at the
two parts), and ``subword`` is the mean of their rows — the figure ``subword`` gets for a
new token the base spells in two pieces. Tokens without a merge (single bytes) are left out;
the count is printed. The mean base row is printed too: base rows share a large common part,
so plain cosine flatters anything near it, and "centered" cosine (the mean row subtracted
from both sides) shows what a method knows about the token itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from transplant.hypernet.hyperofa import load_hyperofa, predict
from transplant.hypernet.wordsets import build_word_sets
from transplant.io.checkpoint import read_embeddings
from transplant.io.sources import resolve_model
from transplant.vocab.surface import vocabulary


def merge_parents(tokenizer) -> dict[int, tuple[int, int]]:
    """token id -> the ids of the two tokens its BPE merge joins."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        raise SystemExit(f"a BPE base is needed for the leave-one-out decomposition, this one is {model['type']}")
    vocab = model["vocab"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    return {vocab[a + b]: (vocab[a], vocab[b]) for a, b in pairs if a + b in vocab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hypernet", type=Path)
    parser.add_argument("--base", default="smollm2-135m")
    args = parser.parse_args()
    base_dir = resolve_model(args.base)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    vocab = vocabulary(tokenizer)
    embeddings = read_embeddings(base_dir)
    base_input = embeddings.input.float()
    base_output = None if embeddings.output is None else embeddings.output.float()
    model, words, _ = load_hyperofa(args.hypernet, vocab.tokens, base_input, base_output)
    sets = build_word_sets(tokenizer, vocab, words, {w: i for i, w in enumerate(words)}, model.config.max_words)

    held = torch.tensor(json.loads((args.hypernet / "config.json").read_text())["heldout_ids"])
    parents = merge_parents(tokenizer)
    pairs = [parents.get(i) for i in held.tolist()]
    both = torch.tensor([p is not None for p in pairs])
    print(f"{len(held)} held-out base tokens, {int(both.sum())} with a merge pair (compared below)")
    for which, matrix in (("input", base_input), ("output", base_output)):
        if matrix is None:
            continue
        ids = held[both]
        left, right = torch.tensor([p for p in pairs if p is not None]).T
        rows = {"hyperofa": predict(model, sets.inputs(ids), which), "subword (merge pair)": (matrix[left] + matrix[right]) / 2,
                "mean row": matrix.mean(0).expand(len(ids), -1)}
        center = matrix.mean(0)
        for name, predicted in rows.items():
            print(f"{which:6s} {name:20s} cosine {F.cosine_similarity(predicted, matrix[ids]).mean():.4f}   "
                  f"centered {F.cosine_similarity(predicted - center, matrix[ids] - center).mean():.4f}")


if __name__ == "__main__":
    main()
