"""Build the multilingual TRAINING corpus (prose and code) for hypernetworks and continued
pretraining, from Debian packages and installed Python packages.

    apt-get update && apt-get install -y manpages manpages-de manpages-fr manpages-es \
        manpages-ja manpages-zh fortunes-de debian-handbook maint-guide
    python recipes/corpora/train_corpus.py -o out/train-corpus [--max-mb 8]

What it reads, and nothing else:
- man pages (roff -> prose): ``/usr/share/man/{de,fr,es,ja,zh_CN}/man*`` (packages
  ``manpages-LANG``) and the English originals of those pages in ``/usr/share/man/man{1,5,7,8}``
  (package ``manpages`` and the tools themselves);
- ``fortunes-de``: ``/usr/share/games/fortunes/de/*.u8``;
- the Debian Administrator's Handbook (``debian-handbook``), HTML in en, de, fr, es, ja, zh-CN;
- the Debian New Maintainers' Guide (``maint-guide``), English HTML;
- Python code: ``.py`` files of the installed third-party packages (``site-packages``;
  tests excluded).

It never reads the Debian Reference (``/usr/share/debian-reference``) nor CPython's standard
library: those are the evaluation text (``build_eval_corpus.py``); :func:`read` refuses them.

Writes ``train.jsonl`` and ``dev.jsonl`` (``{"text", "lang", "domain"}``, ``lang`` labelled
like the evaluation corpus: en, de, fr, es, ja, zh-cn, code). Every source is capped at
``--max-mb`` of text so no one dominates; documents are ordered by a hash of their text (a
stable shuffle that mixes sources) and every 50th goes to ``dev``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sysconfig
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from german_tokenizer import manpage_prose  # same directory: the roff -> prose rules

EVALUATION_TEXT = (Path("/usr/share/debian-reference"), Path(sysconfig.get_paths()["stdlib"]))
MAN = Path("/usr/share/man")
MAN_LANGS = {"en": ".", "de": "de", "fr": "fr", "es": "es", "ja": "ja", "zh-cn": "zh_CN"}
ENGLISH_SECTIONS = ("man1", "man5", "man7", "man8")
FORTUNES_DE = Path("/usr/share/games/fortunes/de")
HANDBOOK = Path("/usr/share/doc/debian-handbook/html")
HANDBOOK_LANGS = {"en": "en-US", "de": "de-DE", "fr": "fr-FR", "es": "es-ES", "ja": "ja-JP", "zh-cn": "zh-CN"}
MAINT_GUIDE = Path("/usr/share/doc/maint-guide/html")
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
DEV_EVERY = 50
MAX_CODE_FILE = 40_000  # characters; longer files are mostly generated tables


def read(path: Path) -> str:
    """A text file's content (gzip transparently); refuses the evaluation text."""
    resolved = path.resolve()
    if any(resolved.is_relative_to(root.resolve()) and not resolved.is_relative_to(SITE_PACKAGES.resolve())
           for root in EVALUATION_TEXT):
        raise SystemExit(f"refusing to read evaluation text {path}")
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    return path.read_text(encoding="utf-8", errors="replace")


def in_hash_order(paths: list[Path]) -> list[Path]:
    """A stable shuffle, so a size cap samples a whole collection rather than its first letters."""
    return sorted(paths, key=lambda p: hashlib.sha256(str(p).encode()).digest())


def manpages(lang: str) -> Iterator[str]:
    """One document per man page: its prose paragraphs."""
    if lang == "en":  # only pages that are translated too: others here are mostly vendor CLI references
        translated = {p.name for code in MAN_LANGS.values() if code != "." for p in (MAN / code).glob("man*/*.gz")}
        paths = [p for s in ENGLISH_SECTIONS for p in (MAN / s).glob("*.gz") if p.name in translated]
    else:
        paths = list((MAN / MAN_LANGS[lang]).glob("man*/*.gz"))
    for path in in_hash_order(paths):
        paragraphs = manpage_prose(read(path))
        if paragraphs:
            yield "\n\n".join(paragraphs)


def fortunes() -> Iterator[str]:
    for path in sorted(FORTUNES_DE.glob("*.u8")):
        for entry in read(path).split("\n%\n"):
            if len(entry.strip()) > 20:
                yield entry.strip()


class _Paragraphs(HTMLParser):
    """Text of paragraphs (``<p>``, ``<li>``, and the handbook's ``<div class="para">``);
    code blocks and navigation are left out."""

    def __init__(self) -> None:
        super().__init__()
        self.paragraphs: list[str] = []
        self._depth = 0  # open elements of the paragraph being read (nested divs count)
        self._closing = ""
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if self._depth:
            self._depth += tag == "div"
        elif tag in ("p", "li") or (tag == "div" and ("class", "para") in attrs):
            self._depth = 1
            self._closing = "div" if tag == "div" else tag

    def handle_endtag(self, tag: str) -> None:
        if self._depth and tag in ("div", self._closing):
            self._depth -= 1
            if not self._depth:
                text = re.sub(r"\s+", " ", "".join(self._text)).strip()
                if len(text) > 40:
                    self.paragraphs.append(text)
                self._text = []

    def handle_data(self, data: str) -> None:
        if self._depth:
            self._text.append(data)


def html_pages(files: list[Path], cjk: bool = False) -> Iterator[str]:
    """One document per HTML page (its paragraphs); CJK text loses the spaces wrapping added."""
    for path in files:
        parser = _Paragraphs()
        parser.feed(read(path))
        paragraphs = parser.paragraphs
        if cjk:
            paragraphs = [re.sub(r"(?<=[^\x00-\x7f]) (?=[^\x00-\x7f])", "", p) for p in paragraphs]
        if paragraphs:
            yield "\n\n".join(paragraphs)


def python_files() -> Iterator[str]:
    """Sources of installed third-party packages, tests left out."""
    for path in in_hash_order(list(SITE_PACKAGES.rglob("*.py"))):
        if {"test", "tests", "testing"} & set(path.relative_to(SITE_PACKAGES).parts):
            continue
        text = read(path).strip()
        if 200 <= len(text) <= MAX_CODE_FILE:
            yield text


def sources() -> dict[tuple[str, str], Iterator[str]]:
    """(lang, domain) -> documents."""
    found: dict[tuple[str, str], Iterator[str]] = {}
    for lang in MAN_LANGS:
        found[(lang, "man")] = manpages(lang)
    found[("de", "fortunes")] = fortunes()
    for lang, folder in HANDBOOK_LANGS.items():
        found[(lang, "handbook")] = html_pages(sorted((HANDBOOK / folder).glob("*.html")), cjk=lang in ("ja", "zh-cn"))
    found[("en", "maint-guide")] = html_pages(sorted(MAINT_GUIDE.glob("*.en.html")))
    found[("code", "python")] = python_files()
    return found


def capped(docs: Iterator[str], max_bytes: int) -> list[str]:
    kept, size = [], 0
    for doc in docs:
        if size >= max_bytes:
            break
        kept.append(doc)
        size += len(doc.encode())
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--max-mb", type=float, default=8.0, help="text per (language, source)")
    args = parser.parse_args()
    missing = [p for p in (MAN / "de", MAN / "ja", FORTUNES_DE, HANDBOOK, MAINT_GUIDE) if not p.exists()]
    if missing:
        raise SystemExit(f"missing {missing[0]}: install the packages listed in {Path(__file__).name}'s docstring")

    records = []
    for (lang, domain), docs in sources().items():
        kept = capped(docs, int(args.max_mb * 1e6))
        records.extend({"text": text, "lang": lang, "domain": domain} for text in kept)
        print(f"{lang:6s} {domain:12s} {len(kept):6d} docs {sum(len(t.encode()) for t in kept) / 1e6:7.2f} MB")
    records.sort(key=lambda r: hashlib.sha256(r["text"].encode()).digest())
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "train.jsonl").open("w") as train, (args.out / "dev.jsonl").open("w") as dev:
        for i, record in enumerate(records):
            (dev if i % DEV_EVERY == 0 else train).write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(records) - len(records[::DEV_EVERY])} train + {len(records[::DEV_EVERY])} dev documents in {args.out}")


if __name__ == "__main__":
    main()
