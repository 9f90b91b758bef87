"""Every decoder architecture people bring, built tiny and random from its own config class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, PreTrainedTokenizerFast

import transplant

pytestmark = pytest.mark.usefixtures("one_thread")


def build(arch: str, tied: bool, tokenizer: PreTrainedTokenizerFast, out: Path) -> Path:
    config = CONFIG_MAPPING[arch](
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_gpt_neox_untied(bpe_dir: Path, sp_model: Path, tmp_path: Path) -> None:
    base = build("gpt_neox", False, PreTrainedTokenizerFast.from_pretrained(bpe_dir), tmp_path / "base")
    done = transplant.model(str(base), str(sp_model), tmp_path / "out")
    assert AutoModelForCausalLM.from_pretrained(done.out).config.vocab_size == done.counts["rows"]
