"""The Python API: the README's example, run through ``import transplant`` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import transplant
from conftest import bpe_tokenizer, make_text, tiny_llama
from transplant.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_api_example_transplants_scores_trains_and_applies_a_hypernetwork(corpus_file: Path, sp_model: Path,
                                                                           tmp_path: Path) -> None:
    base = str(tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True))
    train_text = tmp_path / "train.txt"
    train_text.write_text(make_text(seed=5, lines=200).replace("\n", "\n\n", 40))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"text": t, "lang": "en"}) + "\n" for t in make_text(seed=6, lines=4).splitlines()))

    done = transplant.model(base, str(sp_model), tmp_path / "model", method="subword",
                            options={"subword_weighting": "length"})
    assert done.out == tmp_path / "model" and done.counts["initialized"] > 0
    assert json.loads((done.out / "transplant.json").read_text())["options"]["subword_weighting"] == "length"

    scores = transplant.evaluate(done.out, base=base, corpus=dev)
    assert set(scores.ratio) == {"en", "overall"} and scores.ratio["overall"] > 0
    assert scores.to_dict()["ratio"] == scores.ratio

    trained = transplant.train(done.out, corpus=[train_text], out=tmp_path / "trained", steps=2, stage2_steps=0,
                               batch_size=2, seq_len=32,
                               objective="alm", mixed_precision="no", shuffle_buffer=0)
    assert trained.out == tmp_path / "trained" and [s["steps"] for s in trained.stages] == [2]
    assert trained.run_dir == tmp_path / "trained.run"

    hn_dir = transplant.hypernet.train(base, tmp_path / "hn", corpus=[train_text], steps=2, batch_size=2, seq_len=32,
                                       min_vocab=100, max_vocab=300, negatives=64, queue_texts=8, width=32,
                                       mixed_precision="no", shuffle_buffer=0, base_tokenizer_steps=1)
    zett = transplant.model(base, str(sp_model), tmp_path / "zett", method="zett", options={"hypernet": str(hn_dir)})
    assert zett.counts == done.counts

    ranked = transplant.compare(base, str(sp_model), ["subword", "mean"], dev, tmp_path / "compare", log=lambda line: None)
    assert set(ranked.results) == {"subword", "mean"} and (tmp_path / "compare" / "report.md").is_file()


def test_api_mistakes_are_user_errors_before_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="chat_template"):
        transplant.model("base", "tok", tmp_path / "out", chat_template="old")
    with pytest.raises(UserError, match="kind must be one of zett, hyperofa"):
        transplant.hypernet.train("base", tmp_path / "hn", kind="ofa")
    with pytest.raises(UserError, match="each method once"):
        transplant.compare("base", "tok", ["mean", "mean"], tmp_path / "c.txt", tmp_path / "cmp")
