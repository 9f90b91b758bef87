"""Model and tokenizer references that are not plain HF directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from transplant.errors import UserError
from transplant.io.sources import resolve_model
from transplant.io.tokenizer import load_tokenizer


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

