"""NaN and infinity are refused wherever a number comes in (method options, training
settings) and stop training or evaluation in one line where they come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import bpe_tokenizer, make_text, tiny_llama
from transplant.cli import app
from transplant.errors import UserError
from transplant.pipeline import TransplantConfig, transplant
from transplant.training.continued import load_train_config, train
from transplant.training.loop import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_one_line(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]] and fragment in errors[0] and "Traceback" not in result.output, result.output


@pytest.mark.parametrize(("method", "flag", "value"), [
    ("omp", "--ridge", "nan"), ("omp", "--ridge", "inf"), ("omp", "--fallback-threshold", "nan"),
    ("tokenadapt", "--temperature", "nan"), ("tokenadapt", "--threshold", "-inf"),
    ("transtok", "--null-prior", "nan"),
])
def test_non_finite_method_option_is_refused_before_anything_loads(tmp_path: Path, method: str, flag: str,
                                                                   value: str) -> None:
    """The base does not exist: an error about the option proves it was checked first."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["model", str(tmp_path / "no-base"), "-t", str(tmp_path / "no-tok"), "-o", str(out),
                                      "-m", method, flag, value])
    assert_one_line(result, f"{flag} must be a finite number")
    assert not out.exists()


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("clip", float("nan"), "clip must be a finite number"),
    ("clip", -1.0, "clip must be positive"),
    ("lr", float("inf"), "lr must be a finite number"),
    ("weight_decay", -0.1, "weight_decay must not be negative"),
    ("stage2_lr", float("nan"), "stage2.lr must be a finite number"),
    ("embedding_eps", 0.0, "embedding_eps must be positive"),
])
def test_non_finite_or_out_of_range_training_setting_is_refused(tmp_path: Path, key: str, value: float,
                                                                fragment: str) -> None:
    """From a YAML file (``clip: .nan``) and from Python alike."""
    config = tmp_path / "train.yaml"
    config.write_text(f"{key}: {json.dumps(value).replace('NaN', '.nan').replace('Infinity', '.inf')}\n")
    with pytest.raises(UserError, match=fragment):
        load_train_config(config, None, model=str(tmp_path), corpus=[], out=str(tmp_path / "out"))
    if hasattr(TrainConfig, key):
        with pytest.raises(UserError, match=fragment):
            TrainConfig(**{key: value})


@pytest.fixture(scope="module")
def nan_model(corpus_file: Path, sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transplanted model whose embedding matrix holds NaN (what `clip: .nan` used to export)."""
    root = tmp_path_factory.mktemp("nan")
    base = tiny_llama(bpe_tokenizer(corpus_file), root / "base", tied=True)
    out = transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=root / "model")).out
    weights = load_file(out / "model.safetensors")
    weights["model.embed_tokens.weight"][:] = float("nan")
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_training_stops_in_one_line_on_a_non_finite_loss(nan_model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "train.txt"
    corpus.write_text(make_text(seed=1, lines=200))
    cfg = load_train_config(None, None, model=str(nan_model), corpus=[str(corpus)], out=str(tmp_path / "trained"),
                            objective="lm", steps=3, stage2_steps=0, warmup_steps=1, batch_size=2, seq_len=16, mixed_precision="no",
                            shuffle_buffer=0)
    with pytest.raises(UserError, match="loss is nan at step 1") as e:
        train(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "trained").exists()


def test_evaluate_refuses_non_finite_scores_instead_of_writing_nan(nan_model: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "dev.txt"
    corpus.write_text("the quick brown fox\n\nder schöne garten\n")
    figures = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", str(nan_model), "--base", str(nan_model), "--corpus", str(corpus),
                                      "--json", str(figures)])
    assert_one_line(result, "not finite")
    assert not figures.exists()
