"""Hostile model directories: their code never runs and their pickles never load unless the
user says so (``--trust-remote-code``, ``--allow-pickle``); otherwise one line, exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import assert_refused, bpe_tokenizer, tiny_llama
from transplant.cli import app
from transplant.io.tokenizer import load_tokenizer
from transplant.pipeline import TransplantConfig, transplant

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], input="y\n")  # a prompt would get "y"


@pytest.fixture(scope="module")
def base(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(bpe_tokenizer(corpus_file), tmp_path_factory.mktemp("base") / "base", tied=True)


@pytest.fixture(scope="module")
def donor(sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose tokenizer is the new one (SentencePiece), for methods that need a donor."""
    return tiny_llama(load_tokenizer(str(sp_model)), tmp_path_factory.mktemp("donor") / "donor", tied=False, seed=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "dev.txt"
    path.write_text("the quick brown fox\n\nder schöne garten\n")
    return path


def with_remote_code(source: Path, target: Path, file: str = "tokenizer_config.json",
                     drop_class: bool = False) -> Path:
    """A copy of ``source`` whose ``file`` maps its Auto class to a Python file of its own,
    which writes a marker next to the directory when imported; returns the marker's path."""
    shutil.copytree(source, target)
    marker = target.with_name(target.name + ".ran")
    (target / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
    )
    spec = json.loads((target / file).read_text())
    if file == "config.json":
        spec["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    else:
        spec["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    if drop_class:  # nothing local to fall back on: transformers would ask whether to run it
        spec.pop("tokenizer_class", None)
    (target / file).write_text(json.dumps(spec))
    return marker


@pytest.mark.parametrize("where", ["new", "base"])
def test_mergekit_never_runs_a_tokenizer_directory_s_code(base: Path, donor: Path, tmp_path: Path, where: str) -> None:
    pytest.importorskip("mergekit.scripts.tokensurgeon")
    hostile = tmp_path / "hostile"
    marker = with_remote_code(donor if where == "new" else base, hostile)
    base_ref, new_ref = (base, hostile) if where == "new" else (hostile, donor)
    out = tmp_path / "out"
    assert_refused(run("model", base_ref, "-t", new_ref, "-m", "mergekit", "--k", "4", "-o", out), "--trust-remote-code")
    assert not marker.exists() and not out.exists()


def test_default_path_never_asks_to_run_a_tokenizer_s_code(base: Path, donor: Path, tmp_path: Path) -> None:
    """A tokenizer_config with an auto_map and no tokenizer_class made transformers prompt."""
    hostile = tmp_path / "hostile"
    marker = with_remote_code(donor, hostile, drop_class=True)
    out = tmp_path / "out"
    result = run("model", base, "-t", hostile, "-o", out)
    assert "Do you wish" not in result.output
    assert_refused(result, "--trust-remote-code")
    assert not marker.exists() and not out.exists()


def test_compare_refuses_a_tokenizer_with_code(base: Path, donor: Path, corpus: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    marker = with_remote_code(donor, hostile)
    out = tmp_path / "cmp"
    assert_refused(run("compare", base, "-t", hostile, "--methods", "subword", "--corpus", corpus, "-o", out),
                   "--trust-remote-code")
    assert not marker.exists()


def test_evaluate_and_train_refuse_a_model_config_with_code(base: Path, sp_model: Path, corpus: Path,
                                                            tmp_path: Path) -> None:
    transplanted = transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=tmp_path / "t")).out
    hostile = tmp_path / "hostile"
    marker = with_remote_code(transplanted, hostile, file="config.json")
    assert_refused(run("evaluate", hostile, "--base", base, "--corpus", corpus), "--trust-remote-code")
    assert_refused(run("train", hostile, "--corpus", corpus, "-o", tmp_path / "trained", "--steps", "1"),
                   "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "trained").exists()


def test_trust_remote_code_lets_transformers_use_the_directory_s_class(base: Path, donor: Path, tmp_path: Path) -> None:
    """With the flag the tokenizer's own class is what loads (its file runs: the marker appears).
    A separate process, so that transformers caches the imported module under tmp_path."""
    hostile = tmp_path / "hostile"
    marker = with_remote_code(donor, hostile, drop_class=True)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-m", "cli", "model", str(base), "-t", str(hostile), "-o",
                           str(tmp_path / "out"), "--trust-remote-code"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert marker.exists()


@pytest.fixture
def pickle_beside_ours(base: Path, sp_model: Path, tmp_path: Path) -> Path:
    """A transplanted model whose weights are only a pickle, beside our own initialized.safetensors."""
    out = transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=tmp_path / "pickled")).out
    torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    assert (out / "initialized.safetensors").is_file()
    return out


def test_pickle_beside_other_safetensors_needs_allow_pickle(pickle_beside_ours: Path, base: Path, sp_model: Path,
                                                            corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert_refused(run("model", pickle_beside_ours, "-t", sp_model, "-o", out), "--allow-pickle")
    assert not out.exists()
    assert_refused(run("evaluate", pickle_beside_ours, "--base", base, "--corpus", corpus), "--allow-pickle")
    assert run("model", pickle_beside_ours, "-t", sp_model, "-o", out, "--allow-pickle").exit_code == 0
    result = run("evaluate", pickle_beside_ours, "--base", base, "--corpus", corpus, "--allow-pickle")
    assert result.exit_code == 0, result.output


def test_a_pickle_index_beside_the_safetensors_is_never_read(base: Path, sp_model: Path, corpus: Path,
                                                              tmp_path: Path) -> None:
    """The model's own safetensors win over a pickle (index) in the same directory, which
    is never opened: here it points at a file that is not a checkpoint at all."""
    both = tmp_path / "both"
    shutil.copytree(base, both)
    (both / "garbage.bin").write_bytes(b"not a pickle")
    names = load_file(both / "model.safetensors").keys()
    index = {"metadata": {}, "weight_map": {name: "garbage.bin" for name in names}}
    (both / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    result = run("model", both, "-t", sp_model, "-o", out)
    assert result.exit_code == 0, result.output
    result = run("evaluate", both, "--base", base, "--corpus", corpus)
    assert result.exit_code == 0, result.output
