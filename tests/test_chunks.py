"""Building the new matrices a part of the missing ids at a time changes no bit, in any dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import bpe_tokenizer, checkpoint_tensors, tiny_llama
from test_methods import make_context, with_options
from transplant import matrices
from transplant.io.tokenizer import load_tokenizer
from transplant.matrices import build_matrices
from transplant.methods import registry
from transplant.pipeline import TransplantConfig, transplant
from transplant.vocab.matching import match_vocabularies

pytestmark = pytest.mark.usefixtures("one_thread")

# mergekit runs on checkpoint directories, not on matrices (tests/test_mergekit.py)
METHODS = sorted(set(registry.available()) - {"mergekit"})
CHUNKABLE = [name for name in METHODS if registry.get(name).chunkable]


@pytest.fixture(scope="module")
def match(corpus_file: Path, sp_model: Path):
    return match_vocabularies(bpe_tokenizer(corpus_file), load_tokenizer(str(sp_model)))


def test_the_row_separable_methods_say_so() -> None:
    assert {"zero", "mean", "subword", "omp", "tokenadapt"} <= set(CHUNKABLE)
    assert not {"random", "auto", "focus", "wechsel", "transtok", "zett", "hyperofa"} & set(CHUNKABLE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", METHODS)
def test_chunks_give_the_same_rows(match, encoder_dir: Path, tmp_path: Path, name: str, dtype: torch.dtype) -> None:
    """Every method, with parts of 3 ids and with one part: equal bit for bit (a method that is
    not chunkable is called once per matrix either way). The matrices keep the base dtype."""
    cls = registry.get(name)

    def built(chunk: int | None) -> dict[str, torch.Tensor]:
        ctx = with_options(cls, make_context(match), encoder_dir, tmp_path)
        ctx.base_input, ctx.base_output = ctx.base_input.to(dtype), ctx.base_output.to(dtype)
        ctx.donor_input, ctx.donor_output = ctx.donor_input.to(dtype), ctx.donor_output.to(dtype)
        bases = {"input": ctx.base_input, "output": ctx.base_output}
        return build_matrices(cls(), ctx, match, bases, chunk), bases

    whole, bases = built(None)
    parts, _ = built(3)
    assert len(match.missing) > 30
    for which in ("input", "output"):
        assert whole[which].dtype == dtype
        assert torch.equal(parts[which], whole[which]), which
        assert torch.equal(whole[which][match.copy_new], bases[which][match.copy_base])


def test_chunkable_rows_equal_one_call(match, encoder_dir: Path, tmp_path: Path) -> None:
    """For a chunkable method, the parts equal a plain call of init_rows on every missing id."""
    for name in CHUNKABLE:
        cls = registry.get(name)
        ctx = with_options(cls, make_context(match), encoder_dir, tmp_path)
        parts = build_matrices(cls(), ctx, match, {"input": ctx.base_input, "output": ctx.base_output}, chunk=5)
        fresh = with_options(cls, make_context(match), encoder_dir, tmp_path)
        for which in ("input", "output"):
            assert torch.equal(parts[which][match.missing], cls().init_rows(fresh, which, match.missing)), name


def bfloat16_model(directory: Path) -> Path:
    """Rewrite a tiny model's weights and config in bfloat16, as real checkpoints ship."""
    weights = directory / "model.safetensors"
    save_file({name: t.to(torch.bfloat16) for name, t in load_file(weights).items()}, weights, metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (directory / "config.json").write_text(json.dumps(config))
    return directory



@pytest.mark.parametrize("method", ["subword", "random"])
def test_bfloat16_in_bfloat16_out(corpus_file: Path, sp_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  method: str) -> None:
    """A bfloat16 base gives a bfloat16 checkpoint: copied rows bit for bit, every other
    tensor unchanged; 3-row parts (a tiny CHUNK_BYTES) write the same checkpoint."""
    base_tokenizer = bpe_tokenizer(corpus_file)
    base = bfloat16_model(tiny_llama(base_tokenizer, tmp_path / "base", tied=False))
    cfg = TransplantConfig(base=str(base), tokenizer=str(sp_model), out=tmp_path / "out", method=method)
    transplant(cfg)
    monkeypatch.setattr(matrices, "CHUNK_BYTES", 3 * 4 * 32)
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=tmp_path / "parts", method=method))
    before, after, parts = checkpoint_tensors(base), checkpoint_tensors(cfg.out), checkpoint_tensors(tmp_path / "parts")
    assert after.keys() == before.keys() == parts.keys()
    assert all(t.dtype == torch.bfloat16 for t in after.values())
    match = match_vocabularies(base_tokenizer, load_tokenizer(str(cfg.out)))  # NEW with the base's chat markers
    for name in before:
        assert torch.equal(parts[name], after[name]), name
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[name][match.copy_new], before[name][match.copy_base]), name
            assert after[name].shape[0] == match.num_rows
        else:
            assert torch.equal(after[name], before[name]), name
