"""Compression of tokenizers on held-out text: UTF-8 bytes per token, per group and overall.

    python benchmarks/supertokens.py --corpus data/eval/dev.jsonl TOKENIZER… [--groups de,en] [--examples 12]

Each TOKENIZER is anything ``transplant model --tokenizer`` takes (a directory from
``transplant tokenizer train``, a packaged name such as ``smollm2-135m``). Besides bytes per
token it reports the share of the text's tokens that span words (supertokens,
:func:`transplant.vocab.supertokens.is_supertoken`) and the most frequent of them. Held-out
text only: the evaluation book must never have trained the tokenizers.
"""

from __future__ import annotations

import argparse
from collections import Counter

from transplant.inputs.corpus import load_corpus
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.supertokens import is_supertoken
from transplant.vocab.surface import vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizers", nargs="+")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--groups", default=None, help="Comma-separated groups to keep (default: all).")
    parser.add_argument("--examples", type=int, default=12, help="Most frequent supertokens to show per tokenizer.")
    args = parser.parse_args()
    keep = None if args.groups is None else set(args.groups.split(","))
    docs = [d for d in load_corpus(args.corpus) if keep is None or d.group in keep]
    groups = sorted({d.group for d in docs})
    print("| tokenizer | vocab | " + " | ".join(groups) + " | overall | tokens spanning words |")
    print("|---|---:|" + "---:|" * (len(groups) + 2))
    examples = {}
    for ref in args.tokenizers:
        tokenizer = load_tokenizer(ref)
        surfaces = vocabulary(tokenizer).surfaces
        size, tokens, spanning = Counter(), Counter(), Counter()
        for doc in docs:
            ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
            size[doc.group] += len(doc.text.encode("utf-8"))
            tokens[doc.group] += len(ids)
            spanning.update(surfaces[i] for i in ids if is_supertoken(surfaces[i]))
        cells = [f"{size[g] / tokens[g]:.3f}" for g in groups]
        total = sum(tokens.values())
        print(f"| {ref} | {len(tokenizer):,} | " + " | ".join(cells)
              + f" | {sum(size.values()) / total:.3f} | {sum(spanning.values()) / total:.1%} |")
        examples[ref] = [s.decode("utf-8", "replace") for s, _ in spanning.most_common(args.examples)]
    for ref, shown in examples.items():
        if shown:
            print(f"\n{ref}: " + ", ".join(repr(s) for s in shown))


if __name__ == "__main__":
    main()
