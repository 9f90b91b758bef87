"""Outputs never destroy what the tool did not write: ``--force`` replaces only a directory that
carries the tool's own record, and no OUT, run directory or HN_DIR is, holds or lies inside an
input. A hypernetwork directory is written atomically like every other output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import bpe_tokenizer, tiny_llama
from transplant.cli import app
from transplant.errors import UserError
from transplant.evaluation.compare import CompareConfig, compare
from transplant.hypernet.zett_train import HypernetTask, HypernetTrainConfig, train as train_hypernet
from transplant.pipeline import TransplantConfig, transplant
from transplant.training.continued import ContinuedConfig, load_train_config
from transplant.training.loop import load_config

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def refused(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tied_base(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(bpe_tokenizer(corpus_file), tmp_path_factory.mktemp("base"), tied=True)


@pytest.fixture
def inputs(tied_base: Path, sp_model: Path, tmp_path: Path) -> dict[str, Path]:
    """Copies of a base and a tokenizer the test may lose, a transplant of them, and a directory of the user's."""
    base = shutil.copytree(tied_base, tmp_path / "base")
    tokenizer = tmp_path / "tok" / "sp.model"
    tokenizer.parent.mkdir()
    shutil.copy(sp_model, tokenizer)
    model = tmp_path / "model"
    transplant(TransplantConfig(base=str(base), tokenizer=str(tokenizer), out=model))
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("x")
    corpus = tmp_path / "data" / "train.txt"
    corpus.parent.mkdir()
    corpus.write_text("the quick brown fox jumps over the lazy dog\n\n" * 40)
    return {"base": base, "tokenizer": tokenizer, "model": model, "keep": keep, "corpus": corpus}


def test_force_replaces_only_a_directory_the_tool_wrote(inputs: dict[str, Path]) -> None:
    keep = inputs["keep"]
    refused(runner.invoke(app, ["model", str(inputs["base"]), "-t", str(inputs["tokenizer"]), "-o", str(keep), "--force"]),
            "not written by transplant")
    assert (keep / "notes.txt").read_text() == "x"
    assert not list(keep.parent.glob("keep.tmp-*"))
    again = runner.invoke(app, ["model", str(inputs["base"]), "-t", str(inputs["tokenizer"]), "-o", str(inputs["model"]),
                                "--force"])
    assert again.exit_code == 0, again.output  # its own output: replaced


@pytest.mark.parametrize(("out", "fragment"), [
    ("base", "is the input"),
    ("model", "is the input"),  # the tool's own output, but read by this very run
    ("base/sub", "lies inside the input"),
    ("tok", "holds the input"),
])
def test_out_that_is_holds_or_lies_inside_an_input_is_refused(inputs: dict[str, Path], tmp_path: Path, out: str,
                                                              fragment: str) -> None:
    base = "model" if out == "model" else "base"
    before = snapshot(tmp_path)
    refused(runner.invoke(app, ["model", str(inputs[base]), "-t", str(inputs["tokenizer"]), "-o", str(tmp_path / out),
                                "--force"]), fragment)
    assert snapshot(tmp_path) == before


def test_compare_out_may_not_be_an_input(inputs: dict[str, Path]) -> None:
    cfg = CompareConfig(base=str(inputs["base"]), tokenizer=str(inputs["tokenizer"]), methods=("subword",),
                        corpus=inputs["corpus"], out=inputs["base"])
    with pytest.raises(UserError, match="is the input"):
        compare(cfg, log=lambda line: None)
    assert not (inputs["base"] / "subword").exists()


def train_config(inputs: dict[str, Path], **overrides) -> ContinuedConfig:
    values = dict(model=str(inputs["model"]), corpus=[str(inputs["corpus"])], out=str(inputs["model"].parent / "trained"))
    return load_train_config(None, None, **(values | overrides))


@pytest.mark.parametrize(("where", "fragment"), [
    ({"run_dir": "keep"}, "not written by transplant"),
    ({"run_dir": "model"}, "is the input"),
    ({"run_dir": "data"}, "holds the input"),  # the corpus
    ({"run_dir": "trained"}, "is the output"),  # the run directory and OUT are one: the export would replace it
    ({"out": "keep"}, "not written by transplant"),
    ({"out": "model/trained"}, "lies inside the input"),
    ({"out": "corpus"}, "is the input"),
])
def test_train_outputs_replace_only_their_own_and_touch_no_input(inputs: dict[str, Path], tmp_path: Path,
                                                                  where: dict[str, str], fragment: str) -> None:
    paths = {key: str(inputs.get(name, tmp_path / name)) for key, name in where.items()}
    with pytest.raises(UserError, match=fragment):
        train_config(inputs, force=True, **paths)


def hypernet_config(inputs: dict[str, Path], out: Path, **overrides) -> HypernetTrainConfig:
    values = dict(base=str(inputs["base"]), corpus=[str(inputs["corpus"])], out=str(out), steps=2, warmup_steps=1,
                  batch_size=2, seq_len=16, min_vocab=100, max_vocab=200, negatives=16, queue_texts=4, width=16,
                  mixed_precision="no", log_every=100, save_every=1, shuffle_buffer=0)
    return load_config(HypernetTrainConfig, None, **(values | overrides))


@pytest.mark.parametrize(("out", "fragment"), [("base", "is the input"), ("keep", "not written by transplant"),
                                               ("base/hn", "lies inside the input")])
def test_hypernet_dir_replaces_only_its_own_and_touches_no_input(inputs: dict[str, Path], tmp_path: Path, out: str,
                                                                 fragment: str) -> None:
    settings = tmp_path / "hn.yaml"  # a tiny run, should the refusal be missing
    settings.write_text("steps: 1\nwarmup_steps: 1\nbatch_size: 2\nseq_len: 16\nwidth: 16\nmin_vocab: 100\n"
                        "max_vocab: 200\nnegatives: 16\nmixed_precision: 'no'\n")
    before = snapshot(tmp_path)
    refused(runner.invoke(app, ["hypernet", "train", "--base", str(inputs["base"]), "--corpus", str(inputs["corpus"]),
                                "--config", str(settings), "-o", str(tmp_path / out), "--force"]), fragment)
    assert snapshot(tmp_path) == before


class Crash(Exception):
    pass


def test_a_failed_forced_rerun_keeps_the_hypernetwork_directory(inputs: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    hn = tmp_path / "hn"
    train_hypernet(hypernet_config(inputs, hn))
    assert json.loads((hn / "config.json").read_text())["format"] == "transplant-zett-1"
    before = snapshot(hn)

    def crash(self, model, batch, share):
        raise Crash

    monkeypatch.setattr(HypernetTask, "loss", crash)
    with pytest.raises(Crash):
        train_hypernet(hypernet_config(inputs, hn, force=True, seed=1))
    assert snapshot(hn) == before
    assert not list(tmp_path.glob("hn.tmp-*"))
