"""Parallel corpora: one TSV file (``source<TAB>target`` per line) or two line-aligned files.

Source is the language the base model knows, target the language the new tokenizer is for.
A parallel corpus is only useful if its lines really correspond, so structural damage (a
line without its tab, files of different lengths, an empty file) is refused with one line
naming the file and the line, instead of silently shifting every pair after it. A pair with
one side blank is kept out quietly: that is a legitimate untranslated segment in real
corpora (OPUS has them), not damage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from transplant.errors import UserError


@dataclass(frozen=True)
class ParallelCorpus:
    """Pairs of sentences, neither side blank."""

    source: list[str]
    target: list[str]

    def __len__(self) -> int:
        return len(self.source)


def _lines(path: Path) -> Iterator[str]:
    """The lines of ``path`` without their line ends; refuses a missing or empty file."""
    if not path.is_file():
        raise UserError(f"parallel corpus not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the parallel corpus is empty")
    with path.open(encoding="utf-8", errors="replace", newline="\n") as f:
        for line in f:
            yield line.rstrip("\r\n")


def _tsv_pairs(path: Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(_lines(path), 1):
        if line.count("\t") != 1:
            found = "no tab" if "\t" not in line else f"{line.count(chr(9))} tabs"
            raise UserError(f"{path}:{number}: {found}; each line must be source<TAB>target")
        source, target = line.split("\t")
        yield source, target


def _aligned_pairs(source_path: Path, target_path: Path) -> Iterator[tuple[str, str]]:
    for number, (s, t) in enumerate(zip_longest(_lines(source_path), _lines(target_path)), 1):
        if s is None or t is None:
            longer, shorter = (source_path, target_path) if t is None else (target_path, source_path)
            raise UserError(f"{longer}:{number}: {shorter} has only {number - 1} lines; "
                            "the two files must be line-aligned")
        yield s, t


def parallel_pairs(tsv: str | None = None, source: str | None = None, target: str | None = None
                   ) -> Iterator[tuple[str, str]]:
    """Every (source, target) line pair, streamed, blank sides included."""
    if tsv is not None:
        return _tsv_pairs(Path(tsv))
    if source is None or target is None:
        raise UserError("a parallel corpus is one TSV file or two line-aligned files (source and target)")
    return _aligned_pairs(Path(source), Path(target))


def check_parallel(tsv: str | None = None, source: str | None = None, target: str | None = None) -> int:
    """Read the corpus once, raising on damage; returns how many usable pairs it holds.
    Cheap (a pass over the text), so options can call it before any model is loaded."""
    return sum(1 for s, t in parallel_pairs(tsv, source, target) if s.strip() and t.strip())


def read_parallel(tsv: str | None = None, source: str | None = None, target: str | None = None) -> ParallelCorpus:
    """The usable pairs of the corpus (pairs with a blank side are left out)."""
    pairs = [(s.strip(), t.strip()) for s, t in parallel_pairs(tsv, source, target) if s.strip() and t.strip()]
    return ParallelCorpus([s for s, _ in pairs], [t for _, t in pairs])
