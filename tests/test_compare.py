"""compare resumes: a finished transplant is reused only when it is the transplant asked for."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from conftest import bpe_tokenizer, tiny_llama
from transplant.evaluation.compare import CompareConfig, compare, variant_dir
from transplant.evaluation.evaluate import EvalConfig


@pytest.fixture
def config(corpus_file: Path, sp_model: Path, tmp_path: Path) -> CompareConfig:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True)
    corpus = tmp_path / "dev.txt"
    corpus.write_text("the quick brown fox\n\nover the lazy dog in the garden\n")
    return CompareConfig(base=str(base), tokenizer=str(sp_model), methods=("subword",), corpus=corpus,
                         out=tmp_path / "cmp", scoring=EvalConfig(batch_size=2))


def _record(config: CompareConfig, method: str) -> dict:
    return json.loads((variant_dir(config.out, method) / "transplant.json").read_text())


def test_same_request_is_reused(config: CompareConfig) -> None:
    compare(config, log=lambda line: None)
    logs: list[str] = []
    compare(config, log=logs.append)
    assert any("reusing" in line for line in logs), logs


def _made_with_other_options(config: CompareConfig) -> None:
    """As if an older version, with another default, had made it."""
    path = config.out / "subword" / "transplant.json"
    record = json.loads(path.read_text())
    record["options"]["subword_weighting"] = "first"
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("change", ["seed", "tokenizer", "options"])
def test_changed_request_is_transplanted_again(config: CompareConfig, change: str) -> None:
    compare(config, log=lambda line: None)
    changed = config
    if change == "seed":
        changed = dataclasses.replace(config, seed=1)
    elif change == "tokenizer":
        changed = dataclasses.replace(config, tokenizer=config.base)
    else:
        _made_with_other_options(config)
    logs: list[str] = []
    compare(changed, log=logs.append)
    assert not any("reusing" in line for line in logs), logs
    assert any(f"{change} differs" in line and "transplanting again" in line for line in logs), logs
    record = _record(changed, "subword")
    assert (record["seed"], record["tokenizer"], record["options"]) == (changed.seed, changed.tokenizer,
                                                                        {"subword_weighting": "mean"})


def test_variants_whose_names_differ_only_in_punctuation_get_their_own_folders(config: CompareConfig,
                                                                               encoder_dir: Path,
                                                                               tmp_path: Path) -> None:
    """``tokenadapt:aux_model=enc/a/b`` and ``…=enc/a_b`` were both written to one folder
    (each overwriting the other); a short hash of the whole spec tells them apart."""
    slash, underscore = tmp_path / "enc" / "a" / "b", tmp_path / "enc" / "a_b"
    for where in (slash, underscore):
        shutil.copytree(encoder_dir, where)
    specs = (f"tokenadapt:aux_model={slash}", f"tokenadapt:aux_model={underscore}")
    compare(dataclasses.replace(config, methods=specs), log=lambda line: None)
    records = [json.loads(p.read_text()) for p in sorted(config.out.glob("*/transplant.json"))]
    assert sorted(r["options"]["aux_model"] for r in records) == sorted(map(str, (slash, underscore)))

