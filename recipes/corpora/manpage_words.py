"""Build a multilingual man-page corpus for training HyperOFA's external word vectors.

    apt-get install -y manpages manpages-de manpages-fr manpages-es   # and any manpages-LANG
    python recipes/corpora/manpage_words.py -o out/manpages.txt [--langs fr,es,it,...]

Reads the roff sources of ``/usr/share/man/LANG/man*/*.gz`` for each language asked for and
the English originals (``/usr/share/man/man{1,5,7,8}/``) of the pages translated into any language, strips roff with the rules of
``german_tokenizer.py`` (the same directory), and writes one paragraph per document
(blank-line separated ``.txt``, what ``--train-vectors`` reads). German pages are left out
by default: ``out/german/train.txt`` (fortunes-de + manpages-de) already holds them,
so give that file as a second corpus. Never reads the Debian Reference (the evaluation book).
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Iterator
from pathlib import Path

from german_tokenizer import manpage_prose  # same directory: the roff -> prose rules

MAN = Path("/usr/share/man")
LANGS = "fr,es,it,nl,pl,pt,sv,da,fi,cs,hu,ro,tr"  # languages written with spaces between words
ENGLISH_SECTIONS = ("man1", "man5", "man7", "man8")


def pages(langs: list[str]) -> Iterator[Path]:
    """The pages of ``langs``, then the English originals of pages translated into any
    language (man1 alone holds ~18k vendor command references, most of them untranslated)."""
    translated = {p.name for lang in (*langs, "de") for p in (MAN / lang).glob("man*/*.gz")}
    for lang in langs:
        yield from sorted((MAN / lang).glob("man*/*.gz"))
    for section in ENGLISH_SECTIONS:
        yield from sorted(p for p in (MAN / section).glob("*.gz") if p.name in translated)


def paragraphs(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return manpage_prose(f.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--langs", default=LANGS, help="comma-separated /usr/share/man/LANG folders; English is always read")
    args = parser.parse_args()
    langs = [lang for lang in args.langs.split(",") if (MAN / lang).is_dir()]
    count = 0
    with args.out.open("w", encoding="utf-8") as f:
        for path in pages(langs):
            for paragraph in paragraphs(path):
                f.write(paragraph + "\n\n")
                count += 1
    print(f"{count} paragraphs from English and {','.join(langs)} man pages -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
