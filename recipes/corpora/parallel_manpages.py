"""Build a German–English parallel corpus (TSV: English<TAB>German) from Debian's man pages,
for ``transplant model --method transtok --parallel FILE``.

    apt-get install -y manpages manpages-de
    python recipes/corpora/parallel_manpages.py -o out/manpages-en-de.tsv

What it reads, and nothing else: the pages that exist under one name in English
(``/usr/share/man/man{1,5,7,8}/X.gz``: package ``manpages`` and the tools themselves) and in
German (``/usr/share/man/de/man{1,5,7,8}/X.gz``: ``manpages-de``). The German pages are po4a
translations, made paragraph by paragraph, so their roff keeps the English structure:

1. sections: a page's ``.SH`` headings, the German translators' own last section
   (``ÜBERSETZUNG``, credits with no English counterpart) left out. Pages whose section
   counts then differ (the English page is a newer or older version than the translation)
   are skipped, the others paired section by section in order;
2. paragraphs: within a pair of sections with as many paragraphs on each side, paragraphs
   are paired in order; a section whose counts differ is skipped;
3. pairs: kept when the German text is 0.7 to 2 times as long as the English (German runs
   about 1.2x), the two differ (untranslated commands and copyright lines teach nothing),
   and the pair has not been seen before (boilerplate repeats across pages).

The roff -> prose rules are ``german_tokenizer.manpage_prose`` (same directory). Never reads
the Debian Reference: it is the evaluation book.
"""

from __future__ import annotations

import argparse
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from german_tokenizer import manpage_prose  # same directory: the roff -> prose rules

ENGLISH = Path("/usr/share/man")
GERMAN = Path("/usr/share/man/de")
SECTIONS = ("man1", "man5", "man7", "man8")
TRANSLATORS = "ÜBERSETZUNG"
MIN_RATIO, MAX_RATIO = 0.7, 2.0  # German characters per English character
_HEADING = re.compile(r'^\.SH\b\s*"?([^"]*)"?\s*$')


def sections(roff: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) of each ``.SH`` section, in order; text before the first is dropped."""
    found: list[tuple[str, list[str]]] = []
    heading, body = None, []
    for line in [*roff.splitlines(), ".SH"]:
        if (m := _HEADING.match(line)) is None:
            body.append(line)
            continue
        if heading is not None:
            found.append((heading, [" ".join(p.split()) for p in manpage_prose("\n".join(body))]))  # no tabs: TSV
        heading, body = m[1].strip(), []
    return found


def sane(english: str, german: str) -> bool:
    return english != german and MIN_RATIO <= len(german) / max(len(english), 1) <= MAX_RATIO


@dataclass
class Tally:
    pages: int = 0
    pages_aligned: int = 0
    sections: int = 0
    sections_aligned: int = 0
    paragraph_pairs: int = 0
    kept: int = 0


def page_pairs(english_roff: str, german_roff: str, tally: Tally) -> list[tuple[str, str]]:
    """The paragraph pairs of one page (none when its sections do not line up)."""
    english = sections(english_roff)
    german = [s for s in sections(german_roff) if s[0] != TRANSLATORS]
    tally.pages += 1
    if not english or len(english) != len(german):
        return []
    tally.pages_aligned += 1
    pairs = []
    for (_, en), (_, de) in zip(english, german):
        tally.sections += 1
        if len(en) == len(de):
            tally.sections_aligned += 1
            pairs.extend(zip(en, de))
    tally.paragraph_pairs += len(pairs)
    return [p for p in pairs if sane(*p)]


def _read(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def build(english_root: Path, german_root: Path) -> tuple[list[tuple[str, str]], Tally]:
    """Every new sane pair of every page found in both trees, in a stable order."""
    tally, seen, pairs = Tally(), set(), []
    for section in SECTIONS:
        for german_path in sorted((german_root / section).glob("*.gz")):
            english_path = english_root / section / german_path.name
            if not english_path.is_file():
                continue
            for pair in page_pairs(_read(english_path), _read(german_path), tally):
                if pair not in seen:
                    seen.add(pair)
                    pairs.append(pair)
    tally.kept = len(pairs)
    return pairs, tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--sample", type=int, default=5, help="pairs to print")
    args = parser.parse_args()
    if not (GERMAN / "man1").is_dir():
        raise SystemExit("install the man pages first: apt-get install -y manpages manpages-de")

    pairs, tally = build(ENGLISH, GERMAN)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(f"{en}\t{de}\n" for en, de in pairs), encoding="utf-8")
    print(f"{tally.pages} pages in both languages, {tally.pages_aligned} with matching sections; "
          f"{tally.sections_aligned}/{tally.sections} sections with matching paragraphs; "
          f"{tally.paragraph_pairs} paragraph pairs, {tally.kept} kept (sane length ratio, translated, "
          f"unique) -> {args.out}")
    for en, de in pairs[:: max(1, len(pairs) // args.sample)][: args.sample]:
        print(f"  en: {en[:160]}\n  de: {de[:160]}")


if __name__ == "__main__":
    main()
