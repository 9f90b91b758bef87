"""Build multilingual evaluation corpora (dev.jsonl / test.jsonl) from offline sources.

Prose: the Debian Reference book, translated into several languages, from Debian packages
(`apt-get install -y debian-reference-en debian-reference-de ...`). Code: CPython's own
standard library. Each record is `{"text": ..., "lang": ...}`.

Only prose paragraphs are kept: the plain-text book also holds tables, tables of contents,
headings, shell examples and admonition labels, none of which measure language modelling.
Lines wrapped by the book's formatter are re-joined (without a space between CJK characters).
A paragraph goes to dev or test by a hash of its text, so the split is stable across runs
and machines and the two never share a paragraph.

    python recipes/corpora/build_eval_corpus.py -o data/eval --max-per-lang 200
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

BOOK = "/usr/share/debian-reference/debian-reference.{lang}.txt.gz"
LANGS = ("en", "de", "fr", "es", "ja", "zh-cn")
CJK_LANGS = {"ja", "zh-cn", "zh-tw"}
SENTENCE_END = tuple(".!?:;)\"'”」。！？：；）")
NUMBERED_HEADING = re.compile(r"^(\d+\.)+\d*\.?\s|^(Table|Figure|Example|Tabelle|Tableau|Tabla|表|図)\s*\d")
COMMAND = re.compile(r"^(#|\$|\.\.\.|%)\s")
BULLET = re.compile(r"^(\*|\d+\.)\s+")
MIN_CHARS = {"cjk": 30, "other": 80}
MAX_CODE_CHARS = 4000


def book_paragraphs(lang: str) -> Iterator[str]:
    """Prose paragraphs of one translation of the Debian Reference, in book order."""
    path = Path(BOOK.format(lang=lang))
    if not path.is_file():
        raise SystemExit(f"{path} missing: apt-get install -y debian-reference-{lang}")
    text = gzip.open(path, "rt", encoding="utf-8").read()
    # The front matter (title, abstract, table of contents) ends at the first rule line.
    body = text.split("\n" + "-" * 20, 1)[-1]
    cjk = lang in CJK_LANGS
    for block in re.split(r"\n\s*\n", body):
        paragraph = prose(block.splitlines(), cjk)
        if paragraph is not None:
            yield paragraph


def prose(lines: list[str], cjk: bool) -> str | None:
    """The block's lines joined into one paragraph, or None when the block is not prose."""
    lines = [line for line in lines if line.strip()]
    if not lines or not lines[0].startswith(" "):  # headings start in column 0, prose is indented
        return None
    stripped = [line.strip() for line in lines]
    if any(s.startswith(("+-", "|")) for s in stripped) or COMMAND.match(stripped[0]):
        return None
    if NUMBERED_HEADING.match(stripped[0]) and len(stripped) == 1:
        return None
    stripped[0] = BULLET.sub("", stripped[0])
    paragraph = stripped[0]
    for line in stripped[1:]:
        paragraph += join_separator(paragraph[-1], line[0], cjk) + line
    if len(paragraph) < MIN_CHARS["cjk" if cjk else "other"] or not paragraph.endswith(SENTENCE_END):
        return None
    return paragraph


def join_separator(left: str, right: str, cjk: bool) -> str:
    """A wrapped line break was a space, except between characters of CJK text."""
    if cjk and not (left.isascii() and right.isascii()):
        return ""
    return " "


def code_documents() -> Iterator[str]:
    """Top-level definitions (functions, classes) of CPython's standard library, in path order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip & set(path.relative_to(stdlib).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for chunk in re.split(r"\n(?=(?:def|class|async def) )", source)[1:]:
            chunk = chunk.strip()
            if 200 <= len(chunk) <= MAX_CODE_CHARS:
                yield chunk


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def split(texts: Iterable[str], test_fraction: float, cap: int) -> dict[str, list[str]]:
    """Deduplicate, assign each text to dev or test by its hash, keep `cap` per split.

    Within a split texts are ordered by hash, so the cap draws from the whole book rather than
    its first chapters, and the same texts are chosen on every run.
    """
    unique = sorted(set(texts), key=digest)
    threshold = int(test_fraction * 2**32)
    parts: dict[str, list[str]] = {"dev": [], "test": []}
    for text in unique:
        name = "test" if int.from_bytes(digest(text)[-4:], "big") < threshold else "dev"
        if len(parts[name]) < cap:
            parts[name].append(text)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    parser.add_argument("--langs", default=",".join(LANGS), help="Debian Reference languages")
    parser.add_argument("--no-code", action="store_true", help="leave out CPython stdlib code")
    parser.add_argument("--max-per-lang", type=int, default=200, help="documents per language and split")
    parser.add_argument("--test-fraction", type=float, default=0.5)
    args = parser.parse_args()

    sources = {lang: book_paragraphs(lang) for lang in args.langs.split(",")}
    if not args.no_code:
        sources["code"] = code_documents()
    args.out.mkdir(parents=True, exist_ok=True)
    files = {name: (args.out / f"{name}.jsonl").open("w", encoding="utf-8") for name in ("dev", "test")}
    for lang, texts in sources.items():
        for name, chosen in split(texts, args.test_fraction, args.max_per_lang).items():
            for text in chosen:
                files[name].write(json.dumps({"text": text, "lang": lang}, ensure_ascii=False) + "\n")
            print(f"{name:4s} {lang:6s} {len(chosen):5d} docs {sum(len(t.encode()) for t in chosen):9,d} bytes")
    for f in files.values():
        f.close()


if __name__ == "__main__":
    main()
