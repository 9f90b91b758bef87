"""Bilingual dictionaries as (source word, target word) pairs, for aligning word vectors.

Two formats:

- a plain ``source<TAB>target`` file, one pair a line (WECHSEL's format: the language the
  base model knows first);
- a dictd dictionary, as Debian's ``dict-freedict-*`` packages install it: ``NAME.index``
  beside ``NAME.dict.dz`` (dictzip, which is gzip) or ``NAME.dict``. Each index line is
  ``headword<TAB>offset<TAB>length`` with offset and length written in dictd's base-64
  digits (``A``-``Z``, ``a``-``z``, ``0``-``9``, ``+``, ``/``; most significant first) into the
  uncompressed ``.dict``. An entry starts with the headword as written (``Haus /haʊ̯s/
  <n>``), then translation lines (``house <n>, home``), then notes indented by three or
  more spaces and ``see:`` lines. FreeDict names the headword language first
  (``freedict-deu-eng``: German headwords), and the headword is taken as the *target*
  language: a dictionary from the new language into the base's.

Phrases are kept as they are; a caller that needs single words drops them.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from transplant.inputs.corpus import text_lines
from transplant.errors import UserError

Pair = tuple[str, str]  # (source word, target word)
_DIGITS = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_ANNOTATION = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")  # [domain], <part of speech>, (comment)


def read_dictionary(path: Path | str) -> list[Pair]:
    """Every (source, target) pair of a dictd ``.index`` or a ``source<TAB>target`` file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dictionary not found: {path}")
    pairs = _read_dictd(path) if path.suffix == ".index" else _read_tsv(path)
    if not pairs:
        raise UserError(f"{path}: no word pairs in this dictionary")
    return pairs


def _read_tsv(path: Path) -> list[Pair]:
    pairs = []
    for number, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise UserError(f"{path}:{number}: expected 'source<TAB>target', got {line[:60]!r}")
        pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


def _number(digits: str) -> int:
    value = 0
    for c in digits:
        value = value * 64 + _DIGITS[c]
    return value


def _dict_file(index: Path) -> Path:
    for suffix in (".dict.dz", ".dict"):
        candidate = index.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise UserError(f"{index}: a dictd index needs its {index.stem}.dict.dz or {index.stem}.dict beside it")


def _read_dictd(index: Path) -> list[Pair]:
    data_path = _dict_file(index)
    try:
        data = gzip.decompress(data_path.read_bytes()) if data_path.suffix == ".dz" else data_path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"{data_path}: not a readable dictzip file ({e})") from None
    seen: set[int] = set()
    pairs = []
    for number, line in enumerate(text_lines(index), 1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(c in _DIGITS for c in fields[1] + fields[2]) or not fields[1] or not fields[2]:
            raise UserError(f"{index}:{number}: expected 'headword<TAB>offset<TAB>length' (dictd base-64 numbers), "
                            f"got {line[:60]!r}")
        start, length = _number(fields[1]), _number(fields[2])
        if start + length > len(data):
            raise UserError(f"{index}:{number}: entry ends at byte {start + length}, past the end of {data_path}")
        if fields[0].startswith("00database") or start in seen:  # metadata; several headwords share an entry
            continue
        seen.add(start)
        pairs.extend(_entry_pairs(data[start : start + length].decode("utf-8", errors="replace")))
    return pairs


def _entry_pairs(entry: str) -> list[Pair]:
    """(translation, headword) for each translation on the entry's translation lines."""
    first, *rest = entry.split("\n")
    headword = re.split(r" /| <", first, maxsplit=1)[0].strip()
    pairs = []
    for line in rest:
        if line.startswith("   ") or line.lstrip().startswith("see:"):
            continue
        for word in re.split(r"[,;]", _ANNOTATION.sub("", line)):
            if word.strip() and headword:
                pairs.append((word.strip(), headword))
    return pairs
