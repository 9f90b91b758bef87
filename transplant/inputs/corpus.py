"""Text corpora: what a document is, for everything that reads text.

A ``.txt`` holds documents separated by blank lines; a ``.jsonl`` holds one JSON object per
line with a ``text`` and optional ``lang``/``domain`` labels, which name the group a
document's figures are reported under. Trainers stream documents (corpora of gigabytes);
evaluation lists the first few of each group. One reader serves both, so a document is
the same thing whether it is trained on or scored.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from transplant.errors import UserError

DEFAULT_GROUP = "all"
CUT_BEFORE = (" ", "\n", "\t")  # a long text is cut just before one of these (see pieces)


@dataclass(frozen=True)
class Document:
    text: str
    group: str = DEFAULT_GROUP


def check_corpus(path: Path | str) -> Path:
    """The path, refused with one line if missing or of an unknown kind."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"corpus not found: {path}")
    if path.suffix not in (".txt", ".jsonl"):
        raise UserError(f"corpus must be .txt or .jsonl, got {path.name}")
    return path


def check_corpora(paths: Sequence[Path | str]) -> list[Path]:
    """Training corpus paths, each checked; at least one."""
    if not paths:
        raise UserError("no training corpus given (--corpus FILE)")
    return [check_corpus(p) for p in paths]


def read_corpora(paths: Sequence[Path]) -> None:
    """Read every document of the training corpora once, before training: a line that is not
    UTF-8, or not a JSON document, then stops the run at once in one line, not at step 87 after
    the model loaded (one pass of reading, small beside any training on the same text)."""
    for path in paths:
        for _ in read_documents(path):
            pass


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a text file without their line ends (Windows ones too), streamed; the
    first line that is not UTF-8 stops the reading in one line naming the file and line."""
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{number}: not UTF-8 text (convert it, e.g. with iconv)") from None


def read_documents(path: Path) -> Iterator[Document]:
    """Documents of one file, streamed."""
    path = check_corpus(path)
    if path.suffix == ".jsonl":
        for line_no, line in enumerate(text_lines(path), 1):
            if line.strip():
                yield _json_document(path, line_no, line)
        return
    paragraph: list[str] = []
    for line in itertools.chain(text_lines(path), [""]):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield Document("\n".join(paragraph).strip())
            paragraph = []


def _json_document(path: Path, line_no: int, line: str) -> Document:
    try:
        record = json.loads(line)
        text = record["text"].strip()
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise UserError(f"{path}:{line_no}: expected a JSON object with a 'text' string ({e})") from None
    labels = [str(record[k]) for k in ("lang", "domain") if record.get(k)]
    return Document(text, "/".join(labels) or DEFAULT_GROUP)


def texts(path: Path) -> Iterator[str]:
    """The non-empty texts of one file's documents, streamed: what trainers read."""
    return (doc.text for doc in read_documents(path) if doc.text)


def load_corpus(path: Path | str, max_docs: int | None = None, max_chars: int | None = None) -> list[Document]:
    """Every document of ``path`` with text; ``max_docs`` keeps the first N of each group, so
    every language of an evaluation corpus stays represented. ``max_chars`` caps each group's
    text too (documents of the Debian Reference run to 70k characters): the document that
    crosses the cap is cut before the last whitespace that fits, and later ones are left out,
    so what an evaluation costs is known before it starts."""
    if max_docs is not None and max_docs < 1:
        raise UserError(f"--max-docs must be at least 1, got {max_docs}")
    if max_chars is not None and max_chars < 1:
        raise UserError(f"a character budget must be at least 1, got {max_chars}")
    seen: dict[str, int] = {}
    chars: dict[str, int] = {}
    docs = []
    for doc in read_documents(Path(path)):
        if not doc.text:
            continue
        seen[doc.group] = seen.get(doc.group, 0) + 1
        left = None if max_chars is None else max_chars - chars.get(doc.group, 0)
        if (max_docs is not None and seen[doc.group] > max_docs) or (left is not None and left <= 0):
            continue
        text = doc.text if left is None or len(doc.text) <= left else next(pieces(doc.text, left))
        chars[doc.group] = chars.get(doc.group, 0) + len(text)
        docs.append(Document(text, doc.group))
    if not docs:
        raise UserError(f"corpus has no documents: {path}")
    return docs


def pieces(text: str, max_chars: int) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``max_chars`` characters that join back into it.

    Each piece ends just before the last whitespace character in its span, so the whitespace
    starts the next piece as it starts the next word inside the text, where tokenizers expect
    it (``Ġword``, ``▁word``); a span without whitespace is cut at its end.
    """
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(space, start + 1, end + 1) for space in CUT_BEFORE)
        stop = cut if cut > start else end
        yield text[start:stop]
        start = stop
    yield text[start:]


