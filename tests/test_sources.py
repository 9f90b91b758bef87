"""Model and tokenizer references that are not plain HF directories."""

from __future__ import annotations

from pathlib import Path

import pytest

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
