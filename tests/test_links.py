"""A base shard the transplant does not change is hard-linked into the output, not copied."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import bpe_tokenizer, tiny_llama
from transplant.io.checkpoint import weight_files
from transplant.io.shards import read_header
from transplant.pipeline import TransplantConfig, transplant

pytestmark = pytest.mark.usefixtures("one_thread")

EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")
INDEX = "model.safetensors.index.json"


def embeddings_apart(directory: Path) -> Path:
    """Re-shard a tiny model as big checkpoints are laid out: its embeddings (and lm_head) in
    one shard, the body in another; returns the body shard."""
    tensors = load_file(directory / "model.safetensors")
    shards = {"model-00001-of-00002.safetensors": {n: t for n, t in tensors.items() if n in EMBEDDINGS},
              "model-00002-of-00002.safetensors": {n: t for n, t in tensors.items() if n not in EMBEDDINGS}}
    for file, part in shards.items():
        save_file(part, directory / file, metadata={"format": "pt"})
    weight_map = {name: file for file, part in shards.items() for name in part}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "model.safetensors").unlink()
    return directory / "model-00002-of-00002.safetensors"


def transplanted(corpus_file: Path, sp_model: Path, root: Path, tied: bool) -> tuple[Path, Path, Path]:
    base = tiny_llama(bpe_tokenizer(corpus_file), root / "base", tied=tied)
    body = embeddings_apart(base)
    out = root / "out"
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=out, method="subword"))
    return base, body, out


def check_loads(out: Path, base: Path) -> Path:
    """The output's index names every base tensor; it loads and runs; returns its body shard."""
    files = weight_files(out)
    assert files.keys() == weight_files(base).keys()
    index = json.loads((out / INDEX).read_text())
    headers = [read_header(path)[0] for path in set(files.values())]
    assert index["metadata"]["total_size"] == sum(e["data_offsets"][1] - e["data_offsets"][0]
                                                  for header in headers for e in header.values())
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    return files["model.norm.weight"]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_body_shard_is_linked(corpus_file: Path, sp_model: Path, tmp_path: Path, tied: bool) -> None:
    base, body, out = transplanted(corpus_file, sp_model, tmp_path, tied)
    linked = check_loads(out, base)
    assert os.stat(linked).st_ino == os.stat(body).st_ino  # the body is on disk once
    assert not os.stat(linked).st_mode & 0o222  # read-only: an in-place write would change the base too
    assert weight_files(out)["model.embed_tokens.weight"] != linked


def test_body_shard_is_copied_where_links_fail(corpus_file: Path, sp_model: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(source: Path, target: Path) -> None:  # what os.link does onto another file system
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    base, body, out = transplanted(corpus_file, sp_model, tmp_path, tied=False)
    copied = check_loads(out, base)
    assert os.stat(copied).st_ino != os.stat(body).st_ino
    assert copied.read_bytes() == body.read_bytes()
