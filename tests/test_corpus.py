"""Corpora: one reader of documents for training and evaluation, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transplant.inputs.corpus import Document, check_corpora, load_corpus, read_documents, texts
from transplant.errors import UserError


def test_load_txt_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "c.txt"
    txt.write_text("first para\nline two\n\n\n  second  \n\n", encoding="utf-8")
    assert load_corpus(txt) == [Document("first para\nline two"), Document("second")]
    jsonl = tmp_path / "c.jsonl"
    rows = [{"text": "a", "lang": "en"}, {"text": "b", "lang": "de"}, {"text": "  ", "lang": "en"}, {"text": "c", "lang": "en"},
            {"text": "d"}, {"text": "e", "lang": "en", "domain": "web"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert [(d.text, d.group) for d in load_corpus(jsonl)] == [
        ("a", "en"), ("b", "de"), ("c", "en"), ("d", "all"), ("e", "en/web")]
    assert [d.text for d in load_corpus(jsonl, max_docs=1)] == ["a", "b", "d", "e"]  # an empty text takes no slot


def test_training_and_evaluation_read_the_same_documents(tmp_path: Path) -> None:
    """Whitespace-only lines separate documents and Windows line ends are plain ones, for
    both readers (evaluation used to split on exact blank lines and keep the spaces)."""
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"one\r\nline two\r\n\r\n   \r\nthree\n  \nfour")
    assert list(texts(txt)) == ["one\nline two", "three", "four"]
    assert [d.text for d in load_corpus(txt)] == list(texts(txt))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "x", "lang": "de"}\n\n{"text": "  "}\n{"text": "y\\n\\nz"}\n')
    assert list(texts(jsonl)) == ["x", "y\n\nz"]
    assert [d.text for d in load_corpus(jsonl)] == list(texts(jsonl))


def test_a_broken_json_line_is_named(tmp_path: Path) -> None:
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "x"}\n[1]\n')
    with pytest.raises(UserError, match="b.jsonl:2"):
        list(read_documents(jsonl))


@pytest.mark.parametrize("content,name", [("{\"txt\": 1}\n", "bad.jsonl"), ("x", "c.csv"), ("\n\n", "empty.txt")])
def test_bad_corpus_is_a_user_error(tmp_path: Path, content: str, name: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError):
        load_corpus(path)


def test_check_corpora_refuses_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        check_corpora([tmp_path / "missing.txt"])
    (tmp_path / "c.csv").write_text("a")
    with pytest.raises(UserError, match=".txt or .jsonl"):
        check_corpora([tmp_path / "c.csv"])
    with pytest.raises(UserError, match="no training corpus"):
        check_corpora([])
    with pytest.raises(UserError, match="--max-docs"):
        load_corpus(tmp_path / "c.csv", max_docs=0)


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl"])
def test_text_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path: Path, name: str) -> None:
    """What a trainer streams, too: `transplant train` on a Latin-1 file stopped with a traceback."""
    path = tmp_path / name
    line = '{"text": "Grüße"}' if name.endswith(".jsonl") else "Grüße"
    path.write_bytes(f"fine\n\n{line}\n".replace("fine", '{"text": "fine"}' if name.endswith(".jsonl") else "fine")
                     .encode("latin-1"))
    with pytest.raises(UserError, match=f"{name}:3: not UTF-8"):
        list(texts(path))


def test_a_character_budget_caps_each_group_cutting_before_whitespace(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    rows = [{"text": "one two three four", "lang": "en"}, {"text": "eins zwei", "lang": "de"},
            {"text": "five six", "lang": "en"}, {"text": "drei", "lang": "de"}, {"text": "abcdefghij", "lang": "ja"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    docs = load_corpus(jsonl, max_chars=12)
    # en: the first document is cut before the space that ends "one two" (7 characters; "three"
    # would pass 12), then "five six" before its space (5 left); de: "drei" has no whitespace
    # within the 3 characters left, so it is cut at the budget itself
    assert [(d.text, d.group) for d in docs] == [("one two", "en"), ("eins zwei", "de"), ("five", "en"),
                                                 ("dre", "de"), ("abcdefghij", "ja")]
    assert [d.text for d in load_corpus(jsonl, max_chars=4)] == ["one", "eins", "f", "abcd"]
    assert [d.text for d in load_corpus(jsonl, max_docs=1, max_chars=100)] == ["one two three four", "eins zwei",
                                                                              "abcdefghij"]
    with pytest.raises(UserError, match="budget"):
        load_corpus(jsonl, max_chars=0)
