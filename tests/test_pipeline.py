"""End to end on tiny real models: identity, BPE -> SentencePiece, shards, chat, padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import bpe_tokenizer, tiny_llama
from transplant.io.checkpoint import weight_files
from transplant.pipeline import TransplantConfig, transplant
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies


def logits(model_dir: Path, text: str) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_identity_gives_bit_identical_logits(base_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = transplant(TransplantConfig(base=str(base_model), tokenizer=str(base_model), out=out, method="random"))
    assert result.counts["initialized"] == 0
    text = "the quick brown fox über the lazy dog"
    assert torch.equal(logits(base_model, text), logits(out, text))


def test_bpe_onto_sentencepiece(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = transplant(TransplantConfig(base=str(base_model), tokenizer=str(sp_model), out=out, method="subword"))
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_model)
    tied = base.config.tie_word_embeddings

    assert model.config.vocab_size == len(tok) == result.counts["rows"]
    assert model.config.tie_word_embeddings == tied
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert result.counts["copied"] > 50 and result.counts["initialized"] > 20

    match = match_vocabularies(AutoTokenizer.from_pretrained(base_model), tok)
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight):
        new_rows, base_rows = get(model).detach(), get(base).detach()
        assert torch.equal(new_rows[match.copy_new], base_rows[match.copy_base])
        assert torch.isfinite(new_rows).all()
    prompt = tok("the house", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert_continues(generated, prompt.input_ids, len(tok))
    record = json.loads((out / "transplant.json").read_text())
    assert record["method"] == "subword" and record["counts"] == result.counts and record["tied"] == tied


def assert_continues(generated: torch.Tensor, prompt: torch.Tensor, vocab: int) -> None:
    """Generation kept the prompt, added tokens, and every added id is a token of the tokenizer
    (an id among the zero padding rows, or past the tokenizer, would decode to nothing)."""
    assert torch.equal(generated[:, : prompt.shape[1]], prompt)
    continuation = generated[0, prompt.shape[1] :]
    assert len(continuation) > 0 and int(continuation.max()) < vocab


def test_record_has_every_stage_timing_and_the_total(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = transplant(TransplantConfig(base=str(base_model), tokenizer=str(sp_model), out=out))
    timings = json.loads((out / "transplant.json").read_text())["timings"]
    assert set(timings) == set(result.timings)
    assert timings["writing checkpoint"] > 0
    stages = sum(v for k, v in timings.items() if k != "total")
    assert stages <= timings["total"] + 0.005 and timings["total"] <= result.timings["total"]  # rounded to ms


def test_base_chat_template_is_kept(base_model: Path, sp_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = transplant(TransplantConfig(base=str(base_model), tokenizer=str(sp_model), out=out))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_model)
    base_tok = AutoTokenizer.from_pretrained(base_model)
    assert result.counts["chat_markers_added"] == 2
    assert tok.eos_token == "<|im_end|>" and model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    for marker in ("<|im_start|>", "<|im_end|>"):
        assert torch.equal(
            model.get_input_embeddings().weight[tok.convert_tokens_to_ids(marker)],
            base.get_input_embeddings().weight[base_tok.convert_tokens_to_ids(marker)],
        )
    prompt = tok.apply_chat_template([{"role": "user", "content": "the house"}], add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>user\n")
    assert tok.convert_tokens_to_ids("<|im_start|>") in tok(prompt).input_ids

    new_out = tmp_path / "new"
    kept = transplant(TransplantConfig(base=str(base_model), tokenizer=str(sp_model), out=new_out, chat_template="new"))
    assert kept.counts["chat_markers_added"] == 0
    assert AutoTokenizer.from_pretrained(new_out).eos_token == load_tokenizer(str(sp_model)).eos_token


def test_sharded_base_is_streamed_and_other_tensors_untouched(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=False, hidden=64, layers=4, max_shard_size="60KB")
    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=out, pad_to_multiple_of=64))
    base_files, out_files = weight_files(base), weight_files(out)
    assert len(set(base_files.values())) > 2 and len(set(out_files.values())) == len(set(base_files.values()))
    assert set(base_files) == set(out_files)
    for name in base_files:
        with safe_open(base_files[name], "pt") as a, safe_open(out_files[name], "pt") as b:
            if "embed_tokens" in name or "lm_head" in name:
                rows = b.get_tensor(name)
                assert rows.shape[0] % 64 == 0
                assert torch.count_nonzero(rows[len(load_tokenizer(str(sp_model))) + 2 :]) == 0  # padding rows
            else:
                assert torch.equal(a.get_tensor(name), b.get_tensor(name))


@pytest.mark.parametrize("method", ["zero", "mean", "random", "subword"])
def test_same_seed_same_checkpoint(base_model: Path, sp_model: Path, tmp_path: Path, method: str) -> None:
    outs = [tmp_path / f"out{i}" for i in range(2)]
    for out in outs:
        transplant(TransplantConfig(base=str(base_model), tokenizer=str(sp_model), out=out, method=method, seed=3))
    files = sorted(p.name for p in outs[0].glob("*.safetensors"))
    assert files and all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files)
