"""User mistakes found before the work starts, each one line and exit 2: outputs that could
not be written, devices that do not exist, and model directories whose files are broken."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models
from typer.testing import CliRunner

from conftest import assert_refused, bpe_tokenizer, tiny_llama
from transplant.cli import app
from transplant.errors import UserError
from transplant.io.tokenizer import load_tokenizer
from transplant.pipeline import TransplantConfig, transplant

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(bpe_tokenizer(corpus_file), tmp_path_factory.mktemp("base") / "base", tied=True)


@pytest.fixture(scope="module")
def sharded(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(bpe_tokenizer(corpus_file), tmp_path_factory.mktemp("sharded") / "base", tied=False,
                      hidden=64, max_shard_size="20KB")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "dev.txt"
    path.write_text("the quick brown fox\n\nder schöne garten\n")
    return path


@pytest.fixture(scope="module")
def transplanted(base: Path, sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model),
                                       out=tmp_path_factory.mktemp("transplanted") / "model")).out


# --- outputs and devices, before any work ---------------------------------------------------


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("x")
    return path


def test_out_under_a_file_is_refused_before_the_work(base: Path, sp_model: Path, corpus: Path, transplanted: Path,
                                                     a_file: Path, tmp_path: Path) -> None:
    assert_refused(run("model", base, "-t", sp_model, "-o", a_file / "out"), "is not a directory")
    assert_refused(run("compare", base, "-t", sp_model, "--methods", "zero", "--corpus", corpus, "-o", a_file / "c"),
                    "is not a directory")
    assert_refused(run("train", transplanted, "--corpus", corpus, "-o", a_file / "t"), "is not a directory")
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_under_a_read_only_directory_is_refused(base: Path, sp_model: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_refused(run("model", base, "-t", sp_model, "-o", locked / "out"), "not writable")
    finally:
        locked.chmod(0o755)


def test_json_into_a_missing_directory_is_refused_before_scoring(base: Path, corpus: Path, tmp_path: Path) -> None:
    assert_refused(run("evaluate", base, "--base", base, "--corpus", corpus, "--json", tmp_path / "no" / "x.json"),
                    "no such directory")


@pytest.mark.parametrize("device", ["nosuch", "cuda:99", "meta"])
def test_unknown_or_absent_device_is_refused_before_the_work(base: Path, sp_model: Path, corpus: Path,
                                                             tmp_path: Path, device: str) -> None:
    assert_refused(run("model", base, "-t", sp_model, "-o", tmp_path / "out", "--device", device), "--device")
    assert_refused(run("evaluate", base, "--base", base, "--corpus", corpus, "--device", device), "--device")
    assert_refused(run("compare", base, "-t", sp_model, "--methods", "zero", "--corpus", corpus,
                        "-o", tmp_path / "cmp", "--device", device), "--device")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("multiple", ["0", "1000000000"])
def test_pad_to_multiple_of_is_bounded(base: Path, sp_model: Path, tmp_path: Path, multiple: str) -> None:
    assert_refused(run("model", base, "-t", sp_model, "-o", tmp_path / "out", "--pad-to-multiple-of", multiple),
                    "--pad-to-multiple-of must be between 1 and")


# --- broken model directories ---------------------------------------------------------------


def broken_config(base: Path, target: Path, text: str) -> Path:
    shutil.copytree(base, target)
    (target / "config.json").write_text(text)
    return target


@pytest.mark.parametrize(("text", "fragment"), [
    ("not json {", "not a readable JSON file"),
    ("{}", "config.json"),
    ('{"model_type": "nosuchmodel", "vocab_size": 10}', "nosuchmodel"),
    ('["a list"]', "expected a JSON object"),
])
def test_broken_config_json_is_one_line(base: Path, sp_model: Path, corpus: Path, tmp_path: Path, text: str,
                                        fragment: str) -> None:
    model = broken_config(base, tmp_path / "model", text)
    assert_refused(run("model", model, "-t", sp_model, "-o", tmp_path / "out"), fragment)
    assert_refused(run("evaluate", model, "--base", base, "--corpus", corpus), fragment)


def test_hidden_size_that_disagrees_with_the_tensors_is_one_line(base: Path, sp_model: Path, corpus: Path,
                                                                  tmp_path: Path) -> None:
    config = json.loads((base / "config.json").read_text())
    model = broken_config(base, tmp_path / "model", json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    assert_refused(run("model", model, "-t", sp_model, "-o", tmp_path / "out"), "model.embed_tokens.weight")
    assert_refused(run("evaluate", model, "--base", base, "--corpus", corpus), "model.embed_tokens.weight")
    assert not (tmp_path / "out").exists()


def a_shard(directory: Path) -> Path:
    return sorted(directory.glob("model-*.safetensors"))[1]


@pytest.mark.parametrize("damage", ["missing shard", "garbage shard", "truncated shard", "index not JSON",
                                    "index without a weight map", "index names a tensor the shard lacks"])
def test_broken_sharded_checkpoint_is_one_line(sharded: Path, sp_model: Path, corpus: Path, tmp_path: Path,
                                              damage: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(sharded, model)
    shard, index = a_shard(model), model / "model.safetensors.index.json"
    if damage == "missing shard":
        shard.unlink()
    elif damage == "garbage shard":
        shard.write_bytes(b"garbage!" + b"x" * 100)
    elif damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "index not JSON":
        index.write_text("nope")
    elif damage == "index without a weight map":
        index.write_text('{"weight_map": 3}')
    else:
        spec = json.loads(index.read_text())
        spec["weight_map"]["model.no_such.weight"] = shard.name
        index.write_text(json.dumps(spec))
    assert_refused(run("model", model, "-t", sp_model, "-o", tmp_path / "out"), str(model))
    assert_refused(run("evaluate", model, "--base", sharded, "--corpus", corpus), str(model))
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_truncated_checkpoint(transplanted: Path, base: Path, corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(transplanted, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_refused(run("evaluate", model, "--base", base, "--corpus", corpus), "model.safetensors")


def test_evaluate_refuses_a_tokenizer_larger_than_the_model(transplanted: Path, base: Path, corpus: Path,
                                                           tmp_path: Path) -> None:
    """The transplanted (SentencePiece, 400) tokenizer beside the base's 300 rows."""
    model = tmp_path / "model"
    shutil.copytree(base, model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(transplanted / name, model / name)
    assert_refused(run("evaluate", model, "--base", base, "--corpus", corpus), "embedding rows")


def test_a_tokenizer_with_no_tokens_is_one_line(base: Path, tmp_path: Path) -> None:
    empty = tmp_path / "tokenizer.json"
    Tokenizer(models.WordLevel({}, unk_token=None)).save(str(empty))
    assert_refused(run("model", base, "-t", empty, "-o", tmp_path / "out"), "no tokens")
    with pytest.raises(UserError, match="no tokens"):
        load_tokenizer(str(empty))
