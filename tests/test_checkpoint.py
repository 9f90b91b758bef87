"""Checkpoint export: never destroys an existing OUT, keeps tied/untied heads consistent, copies any dtype."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import bpe_tokenizer, tiny_llama
from transplant.io.checkpoint import export, read_embeddings, weight_files
from transplant.errors import UserError
from transplant.pipeline import TransplantConfig, transplant
from transplant.io.shards import read_header


@pytest.fixture
def tied_base(corpus_file: Path, tmp_path: Path) -> Path:
    return tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True)


def _rewrite(model_dir: Path, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """Add tensors to a single-file checkpoint; returns the new state."""
    state = load_file(model_dir / "model.safetensors") | extra
    save_file(state, model_dir / "model.safetensors", metadata={"format": "pt"})
    return state


def _logits(model_dir: Path, text: str = "the quick brown fox over the lazy dog") -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_force_keeps_old_out_when_the_final_rename_fails(tied_base: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The old export removed both OUT.old-* and the temporary when tmp -> OUT failed: OUT was lost."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the user's previous checkpoint")
    real = os.replace

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        if Path(dst) == out and ".tmp-" in Path(src).name:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    tokenizer = AutoTokenizer.from_pretrained(tied_base)
    with pytest.raises(OSError, match="No space"):
        export(tied_base, out, {}, len(tokenizer), tokenizer, tokenizer, lambda: {"tool": "transplant"}, force=True)
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"the user's previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "out"]


def test_force_keeps_old_out_when_writing_fails(tied_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous")
    tokenizer = AutoTokenizer.from_pretrained(tied_base)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", interrupted)  # after the weights were written
    with pytest.raises(KeyboardInterrupt):
        export(tied_base, out, {}, len(tokenizer), tokenizer, tokenizer, dict, force=True)
    assert (out / "model.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "out"]


def test_tied_config_with_a_copy_of_the_embeddings_as_lm_head(tied_base: Path, sp_model: Path, tmp_path: Path) -> None:
    """A tied config whose files also hold lm_head.weight (= the embeddings): the copy is dropped, so the
    output is tied like the base instead of carrying an lm_head of the old vocabulary size."""
    state = load_file(tied_base / "model.safetensors")
    _rewrite(tied_base, **{"lm_head.weight": state["model.embed_tokens.weight"].clone()})
    out = tmp_path / "out"
    result = transplant(TransplantConfig(base=str(tied_base), tokenizer=str(sp_model), out=out, method="subword"))
    assert _logits(out).shape[-1] == result.counts["rows"]
    assert "lm_head.weight" not in weight_files(out)
    assert json.loads((out / "transplant.json").read_text())["tied"] is True


def test_tied_config_with_a_distinct_lm_head_is_transplanted_as_untied(tied_base: Path, sp_model: Path,
                                                                       tmp_path: Path) -> None:
    """transformers loads a tied config whose file holds a different lm_head untied (it warns and keeps both),
    so that lm_head is the base's output matrix: it is resized with the method like any untied head."""
    _rewrite(tied_base, **{"lm_head.weight": torch.randn(len(AutoTokenizer.from_pretrained(tied_base)), 32)})
    same = tmp_path / "same"
    transplant(TransplantConfig(base=str(tied_base), tokenizer=str(tied_base), out=same, method="subword"))
    assert torch.equal(_logits(same), _logits(tied_base))
    out = tmp_path / "out"
    result = transplant(TransplantConfig(base=str(tied_base), tokenizer=str(sp_model), out=out, method="subword"))
    assert _logits(out).shape[-1] == result.counts["rows"]
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_slice("lm_head.weight").get_shape() == [result.counts["rows"], 32]
    assert json.loads((out / "transplant.json").read_text())["tied"] is False


def _raw(path: Path, name: str) -> tuple[str, list[int], bytes]:
    """A tensor's dtype, shape and bytes exactly as the file stores them."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(size))[name]
        start, end = entry["data_offsets"]
        f.seek(8 + size + start)
        return entry["dtype"], entry["shape"], f.read(end - start)


def test_every_safetensors_dtype_is_copied_bit_for_bit(tied_base: Path, sp_model: Path, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    extra = {
        "extra.u16": torch.randint(0, 2**16, (5, 3), generator=generator, dtype=torch.int32).to(torch.uint16),
        "extra.u32": torch.randint(0, 2**31, (7,), generator=generator, dtype=torch.int64).to(torch.uint32),
        "extra.u64": torch.randint(0, 2**62, (2,), generator=generator, dtype=torch.int64).to(torch.uint64),
        "extra.e8m0": torch.randint(0, 255, (4,), generator=generator, dtype=torch.uint8).view(torch.float8_e8m0fnu),
        "extra.e4m3fnuz": torch.randint(0, 255, (4,), generator=generator, dtype=torch.uint8).view(torch.float8_e4m3fnuz),
        "extra.f4": torch.randint(0, 255, (3, 2), generator=generator, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
    }
    _rewrite(tied_base, **extra)
    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(tied_base), tokenizer=str(sp_model), out=out, method="subword"))
    for name in extra:
        assert _raw(out / "model.safetensors", name) == _raw(tied_base / "model.safetensors", name)


def test_embeddings_in_a_dtype_torch_cannot_hold_are_one_line(tied_base: Path) -> None:
    path = tied_base / "model.safetensors"
    header, data_start = read_header(path)
    data = path.read_bytes()[data_start:]
    entry = header["model.embed_tokens.weight"]
    start, end = entry["data_offsets"]
    entry["dtype"], entry["shape"] = "F6_E2M3", [(end - start) * 8 // 6]  # 6-bit floats: same bytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)
    with pytest.raises(UserError, match="F6_E2M3, which torch cannot represent"):
        read_embeddings(tied_base)
