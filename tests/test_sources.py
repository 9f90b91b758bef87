"""Model and tokenizer references that are not plain HF directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM

from conftest import bpe_tokenizer, tiny_llama
from transplant.errors import UserError
from transplant.sources import resolve_model
from transplant.tokenizer import load_tokenizer


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub is unreachable"):
        resolve_model("no-such-org/no-such-model")


def test_sentencepiece_model_keeps_its_special_roles(sp_model: Path) -> None:
    tok = load_tokenizer(str(sp_model))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens(tok("the house").input_ids)[-1].startswith("\u2581")


def test_tokenizer_json_and_model_directory(base_model: Path) -> None:
    from_json = load_tokenizer(str(base_model / "tokenizer.json"))
    from_dir = load_tokenizer(str(base_model))
    assert from_json("the house").input_ids == from_dir("the house").input_ids


def test_bare_tokenizer_json_finds_its_special_roles(sp_model: Path, bpe_dir: Path, tmp_path: Path) -> None:
    """A tokenizer.json names no roles; they are read from its post-processor (``<s> $A``),
    its model's unk token and the usual names, and the encoding is left as it was."""
    load_tokenizer(str(sp_model)).save_pretrained(tmp_path)
    sp = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert [sp.unk_token, sp.bos_token, sp.eos_token, sp.pad_token] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert sp("the house").input_ids == load_tokenizer(str(sp_model))("the house").input_ids
    gpt2_style = load_tokenizer(str(bpe_dir / "tokenizer.json"))  # only <|endoftext|> says what it is
    assert [gpt2_style.bos_token, gpt2_style.eos_token, gpt2_style.pad_token] == ["<|endoftext|>"] * 2 + [None]
    assert gpt2_style("the house").input_ids == load_tokenizer(str(bpe_dir))("the house").input_ids


def test_bare_tokenizer_json_roles_from_its_post_processor(tmp_path: Path) -> None:
    """Names no list knows are still found where the file itself uses them."""
    vocab = {"[?]": 0, "[BEGIN]": 1, "[END]": 2, "the": 3, "house": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[?]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BEGIN] $A [END]", special_tokens=[("[BEGIN]", 1), ("[END]", 2)])
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert [loaded.unk_token, loaded.bos_token, loaded.eos_token] == ["[?]", "[BEGIN]", "[END]"]
    assert loaded("the house").input_ids == [1, 3, 4, 2]


def test_gguf_is_converted_once_to_safetensors(corpus_file: Path, tmp_path: Path) -> None:
    """Write a real GGUF of a tiny llama with the gguf package, then resolve it."""
    import gguf

    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=True)
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = load_tokenizer(str(base))
    path = tmp_path / "tiny.gguf"
    _write_llama_gguf(gguf, model, tokenizer, path)
    directory = resolve_model(str(path))
    assert any(directory.glob("*.safetensors"))
    converted = AutoModelForCausalLM.from_pretrained(directory)
    ids = torch.tensor([tokenizer("the quick brown fox").input_ids])
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, model(ids).logits, atol=1e-4)
    assert resolve_model(str(path)) == directory  # cached
    assert len(load_tokenizer(str(path))) == len(tokenizer)


def _write_llama_gguf(gguf, model, tokenizer, path: Path) -> None:
    """A minimal llama GGUF (float32 tensors, GPT-2 style tokenizer) in llama.cpp's layout."""
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
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    import json

    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        base, suffix = name.rsplit(".", 1)
        array = tensor.float().numpy()
        if base.endswith(("q_proj", "k_proj")):  # llama.cpp stores q/k permuted for its rope
            heads = cfg.num_attention_heads if base.endswith("q_proj") else cfg.num_key_value_heads
            array = array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        writer.add_tensor(names.get_name(base) + "." + suffix, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
