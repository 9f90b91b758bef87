"""How good is WECHSEL's bilingual alignment on the corpora given? Translation retrieval on
held-out dictionary words.

Procrustes is fitted on the dictionary pairs of 80% of the target words found in both
fastText vocabularies; for each of the other 20%, is one of its dictionary translations
among the k nearest source words (cosine, aligned space)? Also: the same with a random
rotation (chance), and a few examples. Uses (or trains, minutes) the same cached vectors as
``--method wechsel`` with default options.

    PYTHONPATH=. python benchmarks/wechsel_alignment.py --corpus out/german/train.txt \
        --source-corpus out/english.txt --dictionary /usr/share/dictd/freedict-deu-eng.index
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
import torch.nn.functional as F

from transplant.inputs.fasttext import train_vectors
from transplant.methods.wechsel import WORD_SPLIT_KEY, WechselOptions, _variants, dictionary_pairs, split_words
from transplant.maths.procrustes import procrustes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--source-corpus", required=True)
    parser.add_argument("--dictionary", required=True)
    args = parser.parse_args()
    options = WechselOptions(corpus=[args.corpus], source_corpus=[args.source_corpus], dictionary=args.dictionary)
    ft = options.fasttext_options(0)
    source = train_vectors(options.source_corpus, split_words, WORD_SPLIT_KEY, ft)
    target = train_vectors(options.corpus, split_words, WORD_SPLIT_KEY, ft)
    found = sorted({(s, t) for a, b in dictionary_pairs(args.dictionary, False) for s in _variants(a)
                    if s in source.key_to_index for t in _variants(b) if t in target.key_to_index})
    words = sorted({t for _, t in found})
    random.Random(0).shuffle(words)
    held_out = set(words[: len(words) // 5])
    gold: dict[str, set[str]] = {}
    for s, t in found:
        if t in held_out:
            gold.setdefault(t, set()).add(s)
    fit = [(s, t) for s, t in found if t not in held_out]
    rotation = procrustes(torch.from_numpy(np.stack([source[s] for s, _ in fit])),
                          torch.from_numpy(np.stack([target[t] for _, t in fit])))
    queries = sorted(gold)
    q = F.normalize(torch.from_numpy(np.stack([target[t] for t in queries])), dim=1)
    names = source.index_to_key

    def hits(w: torch.Tensor, k: int) -> float:
        top = (q @ F.normalize(torch.from_numpy(source.vectors) @ w, dim=1).T).topk(k, dim=1).indices
        return sum(bool(gold[t] & {names[i] for i in top[j].tolist()}) for j, t in enumerate(queries)) / len(queries)

    chance, _ = torch.linalg.qr(torch.randn(ft.dim, ft.dim, generator=torch.Generator().manual_seed(0)))
    print(f"{len(source)} source words, {len(target)} target words, {len(found)} dictionary pairs in both "
          f"({len(fit)} fit, {len(queries)} held-out target words)")
    print(f"P@1 {hits(rotation, 1):.3f}  P@10 {hits(rotation, 10):.3f}  (random rotation P@10 {hits(chance, 10):.3f})")
    aligned = F.normalize(torch.from_numpy(source.vectors) @ rotation, dim=1)
    for j, t in enumerate(queries[:10]):
        nearest = [names[i] for i in (q[j] @ aligned.T).topk(5).indices.tolist()]
        print(f"  {t} -> {nearest}  (dictionary: {sorted(gold[t])[:3]})")


if __name__ == "__main__":
    main()
