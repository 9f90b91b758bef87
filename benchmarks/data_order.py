"""How mixed ``transplant train``'s batches are: the language of every example of the first steps.

A corpus holds long documents (a handbook page is 80 examples of 768 characters); cut into
examples in order, one document fills many batches in a row. This reads the training stream
of ``objective: alm`` (pieces of ``6 x seq_len`` characters) once with the documents shuffled
only, once as trained (documents, then examples shuffled), finds each example's document in
the corpus (``.jsonl`` with a ``lang`` field) and prints a table: steps whose whole batch is
one language, the longest run of such steps on one language, and languages per step.

    python benchmarks/data_order.py CORPUS.jsonl [--steps 150] [--batch 4] [--seq-len 128] [--buffer 2000]
"""

from __future__ import annotations

import argparse
import bisect
import json
from collections.abc import Iterator
from pathlib import Path

from transplant.training.loop import CHARS_PER_TOKEN, documents, epoch_examples, text_chunks


def locate(corpus: Path) -> tuple[str, list[int], list[str]]:
    """Every document joined (a NUL between them), each one's start offset, and its language."""
    texts, starts, langs, offset = [], [], [], 0
    for line in corpus.read_text().splitlines():
        record = json.loads(line)
        if record["text"]:
            texts.append(record["text"])
            starts.append(offset)
            langs.append(record["lang"])
            offset += len(record["text"]) + 1
    return "\0".join(texts), starts, langs


def languages(stream: Iterator[str], count: int, joined: str, starts: list[int], langs: list[str]) -> list[str]:
    """The language of each of the first ``count`` examples: of the document holding its middle."""
    found = []
    for _ in range(count):
        example = next(stream)
        piece = max((p.strip() for p in example.split("\n\n")), key=len)[:60]  # within one document
        at = joined.find(piece)
        if at < 0:
            raise SystemExit(f"an example's text is not in the corpus: {piece!r}")
        found.append(langs[bisect.bisect_right(starts, at) - 1])
    return found


def summary(langs: list[str], batch: int) -> tuple[int, int, float]:
    steps = [langs[i:i + batch] for i in range(0, len(langs), batch)]
    single = [s[0] if len(set(s)) == 1 else None for s in steps]
    longest = run = 0
    for previous, current in zip([None] + single, single):
        run = (run + 1 if current == previous else 1) if current is not None else 0
        longest = max(longest, run)
    return sum(s is not None for s in single), longest, sum(len(set(s)) for s in steps) / len(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--buffer", type=int, default=2000, help="shuffle_buffer")
    args = parser.parse_args()
    joined, starts, langs = locate(args.corpus)
    chars, count = CHARS_PER_TOKEN * args.seq_len, args.steps * args.batch
    streams = {
        "documents shuffled": text_chunks(documents([args.corpus], 0, 0, args.buffer), chars),
        "documents, then examples shuffled": epoch_examples([args.corpus], 0, 0, args.buffer,
                                                            lambda docs: text_chunks(docs, chars)),
    }
    print(f"\n{args.corpus}: first {args.steps} steps of {args.batch} x {chars} characters, shuffle_buffer {args.buffer}")
    print("| order | steps all one language | longest run of them | languages per step |")
    print("|---|---:|---:|---:|")
    for name, stream in streams.items():
        single, longest, per_step = summary(languages(stream, count, joined, starts, langs), args.batch)
        print(f"| {name} | {single}/{args.steps} | {longest} | {per_step:.2f} |")


if __name__ == "__main__":
    main()
