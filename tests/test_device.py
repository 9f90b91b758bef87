"""Every method on ``--device``: each tensor op must combine tensors of one device (FAISS
searches on the CPU, so its results have to be moved). Only a GPU can check this: CPU and
meta tensors mix without an error (a CPU gather with meta indices returns garbage), so on a
machine without CUDA the cuda cases are skipped and say so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import bpe_tokenizer, tiny_llama
from test_methods import make_context, with_options
from transplant.methods import registry
from transplant.pipeline import TransplantConfig, transplant
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def match(corpus_file: Path, sp_model: Path):
    return match_vocabularies(bpe_tokenizer(corpus_file), load_tokenizer(str(sp_model)))


def _on(ctx, device: torch.device):
    for name in ("base_input", "base_output", "donor_input", "donor_output"):
        if getattr(ctx, name) is not None:
            setattr(ctx, name, getattr(ctx, name).to(device))
    ctx.device = device
    return ctx


@needs_cuda
@pytest.mark.parametrize("name", sorted(set(registry.available()) - {"mergekit"}))  # mergekit: CPU tool on checkpoints
def test_method_runs_on_cuda_like_on_cpu(match, encoder_dir: Path, tmp_path: Path, name: str) -> None:
    cls = registry.get(name)
    for which in ("input", "output"):
        cpu = cls().init_rows(with_options(cls, make_context(match), encoder_dir, tmp_path), which, match.missing)
        ctx = _on(with_options(cls, make_context(match), encoder_dir, tmp_path), torch.device("cuda"))
        rows = cls().init_rows(ctx, which, match.missing)
        assert rows.device.type == "cuda" and rows.shape == cpu.shape
        close = torch.isclose(rows.cpu(), cpu, rtol=1e-3, atol=1e-3).all(dim=1)
        assert close.float().mean() > 0.95, (name, which)  # greedy OMP picks may flip on near-ties


@needs_cuda
@pytest.mark.parametrize("method", ["omp", "random", "subword"])
def test_transplant_on_cuda(corpus_file: Path, tmp_path: Path, method: str) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=False)
    donor = tiny_llama(bpe_tokenizer(corpus_file, vocab_size=420), tmp_path / "donor", tied=False, hidden=48)
    config = TransplantConfig(base=str(base), tokenizer=str(donor), out=tmp_path / "out", method=method, device="cuda")
    assert transplant(config).counts["initialized"] > 64  # more than the OMP pool: the FAISS candidate path


@needs_cuda
def test_compare_on_cuda_scores_like_cpu(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    from transplant.evaluation.compare import CompareConfig, compare
    from transplant.evaluation.evaluate import EvalConfig

    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=False)
    corpus = tmp_path / "docs.txt"
    corpus.write_text(corpus_file.read_text()[:4000].replace("\n", "\n\n"))
    ratios = {}
    for device in ("cpu", "cuda"):
        config = CompareConfig(base=str(base), tokenizer=str(sp_model), methods=("subword",), corpus=corpus,
                               out=tmp_path / device, device=device, scoring=EvalConfig(batch_size=4))
        ratios[device] = compare(config, log=lambda line: None).results["subword"].overall.bits_per_byte
    assert abs(ratios["cuda"] - ratios["cpu"]) < 1e-3 * ratios["cpu"]
