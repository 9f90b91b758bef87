"""Build a German text corpus from Debian packages and train a 16k unigram SentencePiece
tokenizer on it: a new tokenizer for a language the base model barely saw.

    apt-get install -y fortunes-de manpages-de
    python recipes/corpora/german_tokenizer.py -o out/german [--vocab-size 16000]

Writes ``train.txt`` and ``dev.txt`` (documents separated by blank lines: every 20th
document is held out for evaluation), and ``german16k.model`` (unigram, byte fallback,
<unk>/<s>/</s>/<pad> = 0/1/2/3), which ``transplant model --tokenizer`` accepts directly.
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

import sentencepiece as spm

FORTUNES = Path("/usr/share/games/fortunes/de")
MANPAGES = Path("/usr/share/man/de")
HELD_OUT_EVERY = 20

# roff: requests that start a new paragraph, and inline escapes (font changes, spacing hints)
_BREAKS = re.compile(r"^[.'](PP|P|LP|TP|IP|SH|SS|HP|sp|br|RS|RE|nf|fi|EX|EE|TH)\b")
_LITERAL = {"\\-": "-", "\\ ": " ", "\\~": " ", "\\e": "\\"}  # \e last: it makes a backslash
_GLYPHS = {":a": "ä", ":o": "ö", ":u": "ü", ":A": "Ä", ":O": "Ö", ":U": "Ü", "ss": "ß", "lq": "“", "rq": "”",
           "Bq": "„", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "em": "—", "en": "–", "bu": "•", "co": "©",
           "aq": "'", "dq": '"', "oq": "‘", "cq": "’", "hy": "-", "mi": "-", "rs": "\\", "ti": "~", "dg": "†"}
_GLYPH = re.compile(r"\\\((..)|\\\[([^]]*)\]")
_ESCAPES = re.compile(r"\\f(\(..|\[[^]]*\]|.)|\\[*](\(..|\[[^]]*\]|.)|\\[mM](\[[^]]*\]|.)|\\s[+-]?\d+|\\[&,/:%|^)ud]")


def fortunes() -> list[str]:
    """One document per fortune (files ``*.u8`` are the UTF-8 ones; entries split by ``%``)."""
    docs = []
    for path in sorted(FORTUNES.glob("*.u8")):
        for entry in path.read_text("utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.split())
            if len(text) > 20:
                docs.append(text)
    return docs


def manpage_prose(roff: str) -> list[str]:
    """Paragraphs of running text: requests and comments dropped, escapes resolved."""
    paragraphs, current = [], []
    for line in roff.splitlines():
        if _BREAKS.match(line) or not line.strip():
            paragraphs.append(" ".join(current))
            current = []
        elif not line.startswith((".", "'")):
            line = _ESCAPES.sub("", line)
            for name, char in _LITERAL.items():
                line = line.replace(name, char)
            current.append(_GLYPH.sub(lambda m: _GLYPHS.get(m[1] or m[2], ""), line).strip())
    paragraphs.append(" ".join(current))
    return [p for p in paragraphs if sum(c.isalpha() for c in p) > 40]


def manpages() -> list[str]:
    docs = []
    for path in sorted(MANPAGES.glob("man*/*.gz")):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            docs.extend(manpage_prose(f.read()))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, default=16_000)
    args = parser.parse_args()
    if not FORTUNES.is_dir() or not MANPAGES.is_dir():
        raise SystemExit("install the text first: apt-get install -y fortunes-de manpages-de")

    docs = fortunes() + manpages()
    train = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY]
    dev = docs[::HELD_OUT_EVERY]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.txt").write_text("\n\n".join(train) + "\n")
    (args.out / "dev.txt").write_text("\n\n".join(dev) + "\n")

    prefix = args.out / f"german{args.vocab_size // 1000}k"
    spm.SentencePieceTrainer.train(
        input=str(args.out / "train.txt"), model_prefix=str(prefix), vocab_size=args.vocab_size,
        model_type="unigram", byte_fallback=True, character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2,
        pad_id=3, input_sentence_size=2_000_000, shuffle_input_sentence=True, seed_sentencepiece_size=1_000_000,
        max_sentence_length=16384, num_threads=2, minloglevel=1,
    )
    size = sum(len(d.encode()) for d in docs)
    print(f"{len(train)} train + {len(dev)} dev documents ({size / 1e6:.1f} MB); tokenizer {prefix}.model")


if __name__ == "__main__":
    main()
