"""Build an English text corpus for the source side of WECHSEL (English word vectors to
align with the target language's), from Debian packages.

    apt-get install -y manpages debian-handbook maint-guide
    python recipes/corpora/english_corpus.py -o out/english.txt

What it reads, and nothing else (through ``train_corpus.py``'s readers, which refuse the
evaluation text):
- English man pages, ``/usr/share/man/man{1,5,7,8}``, those translated into another
  installed language (the rest are mostly vendor command references);
- the Debian Administrator's Handbook in English (``debian-handbook``, HTML);
- the Debian New Maintainers' Guide (``maint-guide``, HTML).

Never the Debian Reference: it is the evaluation book. Writes one ``.txt`` (documents
separated by blank lines), the format ``--source-corpus`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train_corpus import HANDBOOK, HANDBOOK_LANGS, MAINT_GUIDE, MAN, html_pages, manpages  # same directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    missing = [p for p in (MAN / "man1", HANDBOOK, MAINT_GUIDE) if not p.exists()]
    if missing:
        raise SystemExit(f"missing {missing[0]}: apt-get install -y manpages debian-handbook maint-guide")

    sources = {
        "man pages": manpages("en"),
        "handbook": html_pages(sorted((HANDBOOK / HANDBOOK_LANGS["en"]).glob("*.html"))),
        "maint-guide": html_pages(sorted(MAINT_GUIDE.glob("*.en.html"))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with args.out.open("w", encoding="utf-8") as f:
        for name, docs in sources.items():
            size = 0
            for doc in docs:
                f.write(doc + "\n\n")
                size += len(doc.encode())
            print(f"{name:12s} {size / 1e6:6.2f} MB")
            total += size
    print(f"{total / 1e6:.1f} MB of English in {args.out}")


if __name__ == "__main__":
    main()
