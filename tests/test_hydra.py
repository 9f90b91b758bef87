"""Hydra outputs on tiny real models: a selected vocabulary is, bit for bit, the separate transplant."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from conftest import bpe_tokenizer, checkpoint_tensors, make_text, tiny_llama
from transplant import api
from transplant import hydra
from transplant.cli import app
from transplant.errors import UserError
from transplant.hydra import BODY, HEADS, HEAD_WEIGHTS, HydraConfig, build, head_name, select
from transplant.io.checkpoint import RECORD_FILE, weight_files
from transplant.pipeline import TransplantConfig, transplant
from transplant.progress import Stages

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = {"model.safetensors", "model.safetensors.index.json"}


@pytest.fixture(scope="module")
def other_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second byte-level BPE (other text, other size): many tokens the base lacks."""
    corpus = tmp_path_factory.mktemp("text2") / "other.txt"
    corpus.write_text(make_text(seed=7))
    out = tmp_path_factory.mktemp("bpe2")
    bpe_tokenizer(corpus, vocab_size=360).save_pretrained(out)
    return out



def other_files(directory: Path) -> dict[str, bytes]:
    """Every file but the weights and transplant.json: configs, tokenizer files, initialized rows."""
    return {p.name: p.read_bytes() for p in directory.iterdir()
            if p.name not in WEIGHTS | {RECORD_FILE} and not p.name.startswith("model-")}


def record(directory: Path) -> dict:
    found = json.loads((directory / RECORD_FILE).read_text())
    found.pop("timings")
    found.pop("hydra", None)
    return found


def assert_same_checkpoint(selected: Path, separate: Path) -> None:
    mine, theirs = checkpoint_tensors(selected), checkpoint_tensors(separate)
    assert mine.keys() == theirs.keys()
    for name in theirs:
        assert mine[name].dtype == theirs[name].dtype and torch.equal(mine[name], theirs[name]), name
    assert other_files(selected) == other_files(separate)
    assert "tokenizer.json" in other_files(selected) and "initialized.safetensors" in other_files(selected)
    assert record(selected) == record(separate)


@pytest.mark.parametrize("method", ["subword", "random"])
def test_selected_vocabularies_equal_separate_transplants(base_model: Path, sp_model: Path, other_bpe: Path,
                                                          tmp_path: Path, method: str) -> None:
    out = tmp_path / "hydra"
    result = build(HydraConfig(base=str(base_model), tokenizers=[f"sp={sp_model}", str(other_bpe)], out=out,
                               method=method, seed=3))
    assert set(result.counts) == {"sp", other_bpe.name}
    for name, tokenizer in (("sp", sp_model), (other_bpe.name, other_bpe)):
        separate = tmp_path / f"separate-{name}"
        transplant(TransplantConfig(base=str(base_model), tokenizer=str(tokenizer), out=separate, method=method,
                                    seed=3))
        selected = select(out, name, tmp_path / f"selected-{name}")
        assert selected.linked and selected.note is None
        assert_same_checkpoint(selected.out, separate)
        assert result.counts[name] == json.loads((separate / RECORD_FILE).read_text())["counts"]
        origin = json.loads((selected.out / RECORD_FILE).read_text())["hydra"]
        assert origin["name"] == name and origin["weights"] == "hard links"

        body = out / BODY / "model.safetensors"
        linked = selected.out / "model-00001-of-00002.safetensors"
        assert os.stat(linked).st_ino == os.stat(body).st_ino  # the body is on disk once
        assert not os.stat(linked).st_mode & 0o222  # read-only: an in-place write would change OUT too
        model = AutoModelForCausalLM.from_pretrained(selected.out)
        assert model.config.vocab_size == result.counts[name]["rows"]

    body_names = set(tensors_in(out / BODY / "model.safetensors"))
    head_names = set(tensors_in(out / HEADS / "sp" / HEAD_WEIGHTS))
    assert not body_names & head_names and "model.embed_tokens.weight" in head_names


def tensors_in(path: Path) -> list[str]:
    with safe_open(path, "pt") as f:
        return list(f.keys())


def test_sharded_base_keeps_its_shards_in_the_body(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True, hidden=64, layers=4,
                      max_shard_size="60KB")
    out = tmp_path / "hydra"
    build(HydraConfig(base=str(base), tokenizers=[f"sp={sp_model}", f"same={base}"], out=out, method="subword"))
    body = sorted((out / BODY).glob("*.safetensors"))
    assert len(body) > 2
    separate = tmp_path / "separate"
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=separate, method="subword"))
    selected = select(out, "sp", tmp_path / "selected").out
    assert len(set(weight_files(selected).values())) == len(body) + 1
    assert_same_checkpoint(selected, separate)


def test_weights_are_copied_where_hard_links_fail(base_model: Path, sp_model: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "hydra"
    build(HydraConfig(base=str(base_model), tokenizers=[str(sp_model)], out=out, method="subword"))

    def cross_device(source: Path, target: Path) -> None:  # what os.link does onto another file system
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    selected = select(out, sp_model.stem, tmp_path / "selected")
    assert not selected.linked and selected.note == os.strerror(errno.EXDEV)
    assert json.loads((selected.out / RECORD_FILE).read_text())["hydra"]["weights"] == "copied"
    separate = tmp_path / "separate"
    transplant(TransplantConfig(base=str(base_model), tokenizer=str(sp_model), out=separate, method="subword"))
    assert_same_checkpoint(selected.out, separate)


class Interrupted(Stages):
    """Ctrl-C while the given stage runs."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def run(self, name: str):
        if name == self.stage:
            raise KeyboardInterrupt
        return super().run(name)


def test_build_is_atomic(base_model: Path, sp_model: Path, other_bpe: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "hydra"
    cfg = HydraConfig(base=str(base_model), tokenizers=[str(sp_model), str(other_bpe)], out=out, method="subword")
    heads = []
    write_head = hydra._write_head

    def interrupted_at_the_second(*args):  # Ctrl-C once the body and one head are written
        heads.append(args[0])
        if len(heads) == 2:
            raise KeyboardInterrupt
        return write_head(*args)

    monkeypatch.setattr(hydra, "_write_head", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        build(cfg)
    assert not out.exists() and not list(tmp_path.glob("hydra.*"))
    monkeypatch.undo()

    build(cfg)
    before = (out / "hydra.json").read_text()
    with pytest.raises(KeyboardInterrupt):  # --force, interrupted: the old OUT stays as it was
        build(HydraConfig(**{**vars(cfg), "force": True}), Interrupted("writing the shared body"))
    assert (out / "hydra.json").read_text() == before and not list(tmp_path.glob("hydra.*"))


def test_names() -> None:
    assert head_name("/x/german16k.model") == ("german16k", "/x/german16k.model")
    assert head_name("gemma3-270m") == ("gemma3-270m", "gemma3-270m")
    assert head_name("de=/x/tokenizer.json") == ("de", "/x/tokenizer.json")
    for bad in ("a b=/x", "=/x", "de="):
        with pytest.raises(UserError, match="cannot name a vocabulary"):
            head_name(bad)


def test_refusals(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "hydra"
    with pytest.raises(UserError, match="two vocabularies are named 'sp'"):
        build(HydraConfig(base=str(base_model), tokenizers=[f"sp={sp_model}", f"sp={base_model}"], out=out))
    with pytest.raises(UserError, match="nosuch"):  # every tokenizer is loaded before the body is written
        build(HydraConfig(base=str(base_model), tokenizers=[str(sp_model), str(tmp_path / "nosuch.json")], out=out))
    assert not out.exists()
    with pytest.raises(UserError, match="is not a Hydra output"):
        select(base_model, "sp", tmp_path / "dir")

    build(HydraConfig(base=str(base_model), tokenizers=[f"sp={sp_model}"], out=out, method="subword"))
    with pytest.raises(UserError, match="exists; pass --force"):
        build(HydraConfig(base=str(base_model), tokenizers=[f"sp={sp_model}"], out=out))
    with pytest.raises(UserError, match="has no vocabulary 'de'; it has: sp"):
        select(out, "de", tmp_path / "dir")
    with pytest.raises(UserError, match="lies inside the input"):
        select(out, "sp", out / "dir")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists; pass --force"):
        select(out, "sp", existing)
    with pytest.raises(UserError, match="never replaced"):
        select(out, "sp", existing, force=True)
    assert (existing / "notes.txt").read_text() == "mine"
    again = select(out, "sp", tmp_path / "selected").out
    assert select(out, "sp", again, force=True).out == again


def test_cli_and_api(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "hydra"
    result = runner.invoke(app, ["hydra", "build", str(base_model), "-t", f"sp={sp_model}", "-t", f"self={base_model}",
                                 "-o", str(out), "--method", "subword", "--subword-weighting", "length", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["counts"]) == {"sp", "self"}
    assert json.loads((out / HEADS / "sp" / RECORD_FILE).read_text())["options"]["subword_weighting"] == "length"

    result = runner.invoke(app, ["hydra", "select", str(out), "sp", "-o", str(tmp_path / "sp")])
    assert result.exit_code == 0 and "hard links" in result.output, result.output
    result = runner.invoke(app, ["hydra", "select", str(out), "de", "-o", str(tmp_path / "de")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: {out} has no vocabulary 'de'; it has: sp, self"]
    assert not (tmp_path / "de").exists()

    selected = api.hydra_select(out, "self", tmp_path / "self")
    assert selected.linked and (selected.out / "config.json").is_file()


def test_build_flags_are_model_flags() -> None:
    """Method options become flags of `hydra build` too; the registry refuses options named like
    `transplant model`'s flags, which must therefore cover every flag of `hydra build`."""
    import typer.main

    from transplant.methods import registry

    command = typer.main.get_command(app).commands["hydra"].commands["build"]
    flags = {opt[2:].replace("-", "_") for param in command.params for opt in param.opts if opt.startswith("--")}
    assert flags <= registry.COMMAND_FLAGS
