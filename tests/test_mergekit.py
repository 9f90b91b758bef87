"""The `mergekit` method: mergekit-tokensurgeon's rows, through the pipeline and `compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from conftest import make_text, tiny_llama
from transplant.io.checkpoint import read_embeddings
from transplant.evaluation.compare import CompareConfig, compare
from transplant.errors import UserError
from transplant.evaluation.evaluate import EvalConfig, ppl_ratio
from transplant.methods import registry
from transplant.pipeline import TransplantConfig, transplant
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies

tokensurgeon = pytest.importorskip("mergekit.scripts.tokensurgeon")
K = 8


@pytest.fixture(scope="module")
def donor(sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A donor whose tokenizer (SentencePiece) is the new one, wider than the base."""
    return tiny_llama(load_tokenizer(str(sp_model)), tmp_path_factory.mktemp("donor"), tied=False, seed=1, hidden=48)


def surgeon_output(base: Path, donor: Path, out: Path, *flags: str) -> dict[str, torch.Tensor]:
    """What the `mergekit-tokensurgeon` command itself writes (its click entry point)."""
    tokensurgeon.main.main([str(base), str(donor), str(out), "-k", str(K), *flags], standalone_mode=False)
    tensors: dict[str, torch.Tensor] = {}
    for path in out.glob("*.safetensors"):
        tensors.update(load_file(path))
    return tensors


def test_rows_are_what_tokensurgeon_writes(base_model: Path, donor: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(base_model), tokenizer=str(donor), donor=str(donor), out=out,
                                method="mergekit", options={"k": K}))
    reference = surgeon_output(base_model, donor, tmp_path / "mergekit", "-a", "omp")
    ours, base = read_embeddings(out), read_embeddings(base_model)
    match = match_vocabularies(AutoTokenizer.from_pretrained(base_model), AutoTokenizer.from_pretrained(out))
    assert len(match.missing) > 20
    pairs = [(ours.input, reference[ours.input_name], base.input)]
    if ours.output is not None:
        pairs.append((ours.output, reference[ours.output_name], base.output))
    for mine, theirs, original in pairs:
        assert torch.equal(mine[match.missing], theirs[match.missing])
        assert torch.equal(mine[match.copy_new], original[match.copy_base])  # copied rows stay ours
        assert not torch.equal(mine[match.missing], torch.zeros_like(mine[match.missing]))
    record = json.loads((out / "transplant.json").read_text())
    assert record["method"] == "mergekit" and record["options"] == {"approach": "omp", "k": K}


@pytest.mark.parametrize("base_model", [False], ids=["untied"], indirect=True)
def test_other_approach_and_option_checks(base_model: Path, donor: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(base_model), tokenizer=str(donor), donor=str(donor), out=out,
                                method="mergekit", options={"approach": "common_interpolation", "k": K}))
    reference = surgeon_output(base_model, donor, tmp_path / "mergekit", "-a", "common_interpolation")
    ours = read_embeddings(out)
    missing = match_vocabularies(AutoTokenizer.from_pretrained(base_model), AutoTokenizer.from_pretrained(out)).missing
    assert torch.equal(ours.input[missing], reference[ours.input_name][missing])
    options = registry.get("mergekit").Options
    with pytest.raises(UserError, match="--k"):
        options(k=0)
    with pytest.raises(UserError, match="--approach"):
        transplant(TransplantConfig(base=str(base_model), tokenizer=str(donor), donor=str(donor), out=tmp_path / "x",
                                    method="mergekit", options={"approach": "nope"}))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("base_model", [False], ids=["untied"], indirect=True)
def test_compare_puts_mergekit_in_the_table(base_model: Path, donor: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "dev.jsonl"
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in make_text(seed=5, lines=8).splitlines()))
    methods = (f"mergekit:k={K}", f"omp:k={K}:pool=0:fallback=none")
    result = compare(CompareConfig(base=str(base_model), tokenizer=str(donor), donor=str(donor), methods=methods,
                                   corpus=corpus, out=tmp_path / "cmp", scoring=EvalConfig(batch_size=4)), log=lambda _: None)
    assert set(result.results) == set(methods)
    ratios = {name: ppl_ratio(result.results[name], result.base)["overall"] for name in methods}
    assert all(0.0 < r < float("inf") for r in ratios.values()) and len(set(ratios.values())) == 2, ratios
    ranking = json.loads((tmp_path / "cmp" / "report.json").read_text())["ranking"]
    assert {row["method"] for row in ranking} == set(methods)
