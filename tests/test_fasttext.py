"""fastText vectors: trained with gensim on a real (tiny) corpus, cached, loaded from files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gensim.models import FastText
from gensim.models.fasttext import save_facebook_model

from conftest import make_text
from transplant.io.cache import cache_dir
from transplant.errors import UserError
from transplant.inputs.fasttext import FastTextOptions, escape, load_vectors, train_vectors, unescape

SMALL = FastTextOptions(dim=16, epochs=2, min_count=3)


def whitespace(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines]


@pytest.mark.parametrize("word", ["", "\\e", "a b", "▁Straße", "日本", "x\\y", "\t", "\\u0020", "é\n", "Ġthe"])
def test_escape_round_trips_and_keeps_one_word(word: str) -> None:
    escaped = escape(word)
    assert escaped and not any(c.isspace() for c in escaped)
    assert unescape(escaped) == word


def test_trained_vectors_are_reproducible_and_cached(corpus_file: Path) -> None:
    first = train_vectors([corpus_file], whitespace, "whitespace", SMALL)
    entries = list((cache_dir() / "fasttext").iterdir())
    second = train_vectors([corpus_file], whitespace, "whitespace", SMALL)
    assert list((cache_dir() / "fasttext").iterdir()) == entries  # loaded, not trained again
    metas = [json.loads(p.read_text()) for p in (cache_dir() / "fasttext").glob("*/meta.json")]
    meta = next(m for m in metas if m["corpus"] == [str(corpus_file)] and m["options"]["seed"] == 0
                and m["split_key"] == "whitespace" and m["options"]["dim"] == SMALL.dim)
    assert meta["words"] > 1000 and meta["vocabulary"] == len(first) and meta["train_seconds"] >= 0
    assert first.index_to_key == second.index_to_key
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert {"haus", "garden", "the"} <= set(first.key_to_index)
    assert first["straße"].shape == (16,)


def test_words_with_spaces_keep_their_vectors(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(1, 200))
    vectors = train_vectors([corpus], lambda lines: [[f"<{w} >" for w in line.split()] for line in lines],
                            "spaced", SMALL)
    assert "<haus >" in vectors.key_to_index


def test_another_seed_or_splitter_is_another_cache_entry(corpus_file: Path) -> None:
    a = train_vectors([corpus_file], whitespace, "whitespace", SMALL)
    b = train_vectors([corpus_file], whitespace, "whitespace", FastTextOptions(dim=16, epochs=2, min_count=3, seed=1))
    c = train_vectors([corpus_file], lambda ls: [line.upper().split() for line in ls], "upper", SMALL)
    assert not np.array_equal(a.vectors, b.vectors)
    assert "HAUS" in c.key_to_index and "haus" not in c.key_to_index


def test_empty_corpus_and_rare_words_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    empty.with_name("words.txt").write_text("text no splitter finds words in\n")
    with pytest.raises(UserError, match="empty.txt: the corpus is empty"):
        train_vectors([empty], whitespace, "whitespace", SMALL)
    with pytest.raises(UserError, match="no words"):
        train_vectors([empty.with_name("words.txt")], lambda lines: [[] for _ in lines], "nothing", SMALL)
    rare = tmp_path / "rare.txt"
    rare.write_text("one two three\n")
    with pytest.raises(UserError, match="min_count"):
        train_vectors([rare], whitespace, "whitespace", SMALL)
    with pytest.raises(UserError, match="n-grams"):
        FastTextOptions(min_n=5, max_n=3)


def test_load_vectors_reads_fasttext_word2vec_and_gensim_files(tmp_path: Path, corpus_file: Path) -> None:
    model = FastText(vector_size=8, min_count=1, epochs=1, seed=0, workers=1)
    sentences = whitespace(corpus_file.read_text().splitlines())
    model.build_vocab(sentences)
    model.train(sentences, total_examples=len(sentences), epochs=1)
    save_facebook_model(model, str(tmp_path / "ft.bin"))
    model.wv.save_word2vec_format(str(tmp_path / "w.vec"))
    model.wv.save(str(tmp_path / "g.kv"))
    for name in ("ft.bin", "w.vec", "g.kv"):
        loaded = load_vectors(tmp_path / name)
        np.testing.assert_allclose(loaded["haus"], model.wv["haus"], rtol=1e-5, atol=1e-6)
    assert np.abs(load_vectors(tmp_path / "ft.bin")["hausgarten"]).sum() > 0  # n-grams: any string
    with pytest.raises(UserError, match="not found"):
        load_vectors(tmp_path / "missing.bin")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="must be"):
        load_vectors(tmp_path / "x.csv")
    (tmp_path / "broken.vec").write_text("3 2\nhaus 0.1\n")
    with pytest.raises(UserError, match="cannot read"):
        load_vectors(tmp_path / "broken.vec")
