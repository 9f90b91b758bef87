"""A hypernetwork serves the fine-tuned variants of its base (issue 23, item 1): a variant is
accepted and the decision recorded, another model of the same shape is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from conftest import RANDOM_HYPERNETS, assert_refused, bpe_tokenizer, tiny_llama
from transplant.cli import app
from transplant.hypernet.fingerprint import SAMPLE_FILE, VARIANT_DISTANCE, BaseSample
from transplant.io.checkpoint import read_embeddings
from transplant.io.tokenizer import load_tokenizer
from transplant.methods.base import Context
from transplant.vocab.matching import match_vocabularies

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_distance_separates_a_nudge_from_another_matrix(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(500, 16, generator=g)
    sample = BaseSample.of([f"t{i}" for i in range(500)], rows, None, rows=64)
    assert sample.ids.tolist() == sorted(set(sample.ids.tolist())) and len(sample.ids) == 64
    assert sample.distance(rows, None) == 0.0
    assert sample.distance(rows + 0.01 * torch.randn(rows.shape, generator=g), None) == pytest.approx(0.01, rel=0.2)
    assert sample.distance(torch.randn(rows.shape, generator=g), None) == pytest.approx(2**0.5, abs=0.15)
    sample.save(tmp_path)
    again = BaseSample.read(tmp_path)
    assert again.vocab == sample.vocab and again.output is None
    assert torch.equal(again.ids, sample.ids) and torch.equal(again.input, sample.input)
    assert BaseSample.read(tmp_path / "nowhere") is None


def light_fine_tune(base: Path, out: Path, fraction: float = 0.01, seed: int = 0) -> Path:
    """A copy of ``base`` with every weight moved by N(0, (fraction × its tensor's std)²)."""
    model = AutoModelForCausalLM.from_pretrained(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn(weight.shape, generator=g) * fraction * weight.std())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def family(request: pytest.FixtureRequest, corpus_file: Path, sp_model: Path,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base, a light fine-tune of it, another model of the same shape and vocabulary, and
    a hypernetwork of each kind for the base."""
    root = tmp_path_factory.mktemp("tied" if request.param else "untied")
    tokenizer = bpe_tokenizer(corpus_file)
    base = tiny_llama(tokenizer, root / "base", tied=request.param)
    models = {"base": base, "variant": light_fine_tune(base, root / "variant"),
              "other": tiny_llama(tokenizer, root / "other", tied=request.param, seed=1)}
    embeddings = read_embeddings(base)
    ctx = Context(match=match_vocabularies(load_tokenizer(str(base)), load_tokenizer(str(sp_model))),
                  base_input=embeddings.input.float(), base_output=None if embeddings.tied else embeddings.output.float())
    return models | {kind: make(ctx, root / f"hn-{kind}") for kind, make in RANDOM_HYPERNETS.items()}


def run(base: Path, kind: str, hypernet: Path, tokenizer: Path, out: Path):
    return CliRunner().invoke(app, ["model", str(base), "-t", str(tokenizer), "-o", str(out), "--method", kind,
                                    "--hypernet", str(hypernet)])


@pytest.mark.parametrize("kind", list(RANDOM_HYPERNETS))
def test_a_variant_is_served_and_the_decision_recorded(family: dict[str, Path], kind: str, sp_model: Path,
                                                       tmp_path: Path) -> None:
    for model, relation in (("base", "same"), ("variant", "variant")):
        result = run(family[model], kind, family[kind], sp_model, tmp_path / model)
        assert result.exit_code == 0, result.output
        check = json.loads((tmp_path / model / "transplant.json").read_text())["method_report"]["base_check"]
        assert check["relation"] == relation and check["threshold"] == VARIANT_DISTANCE
        assert "relative Frobenius distance" in check["statistic"]
        if relation == "same":
            assert check["distance"] == 0.0
        else:  # 1 % of each tensor's std moves the rows by ~1 % of their norm
            assert check["distance"] == pytest.approx(0.01, rel=0.3)


@pytest.mark.parametrize("kind", list(RANDOM_HYPERNETS))
def test_a_model_that_is_not_a_variant_is_refused(family: dict[str, Path], kind: str, sp_model: Path,
                                                 corpus_file: Path, tmp_path: Path) -> None:
    refused = run(family["other"], kind, family[kind], sp_model, tmp_path / "other")
    assert_refused(refused, "was trained for another base model: its embedding rows are 1.")
    assert not (tmp_path / "other").exists()

    tied = read_embeddings(family["base"]).tied
    other_vocabulary = tiny_llama(bpe_tokenizer(corpus_file, vocab_size=280), tmp_path / "vocab", tied=tied)
    assert_refused(run(other_vocabulary, kind, family[kind], sp_model, tmp_path / "x"), "the vocabularies differ")


def test_a_directory_without_a_sample_serves_its_exact_base_only(family: dict[str, Path], sp_model: Path,
                                                                 tmp_path: Path) -> None:
    """Hypernetworks saved before samples were kept: the hash decides, as it did then."""
    old = tmp_path / "old"
    old.mkdir()
    for path in family["zett"].iterdir():
        if path.name != SAMPLE_FILE:
            (old / path.name).write_bytes(path.read_bytes())
    assert run(family["base"], "zett", old, sp_model, tmp_path / "same").exit_code == 0
    assert_refused(run(family["variant"], "zett", old, sp_model, tmp_path / "variant"), "predates variant checks")
