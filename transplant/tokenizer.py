"""Load the new tokenizer from whatever the user names.

A tokenizer reference is a tokenizer directory, a ``tokenizer.json``, a SentencePiece
``.model``, a ``.gguf`` (its embedded tokenizer), any model reference (its tokenizer) or a
packaged name. Every loader's failure becomes one :class:`UserError` line.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from transplant.errors import UserError
from transplant.sources import resolve_model


def _sentencepiece_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Wrap a bare SentencePiece ``.model`` as a fast tokenizer with its special roles."""
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise UserError(f"{path}: not a SentencePiece model") from e
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp) / "tokenizer.model")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    roles = {"bos": processor.bos_id(), "eos": processor.eos_id(), "pad": processor.pad_id(), "unk": processor.unk_id()}
    tokenizer.add_special_tokens(
        {f"{role}_token": processor.id_to_piece(i) for role, i in roles.items() if 0 <= i < processor.get_piece_size()}
    )
    return tokenizer


def load_tokenizer(ref: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a directory, tokenizer.json, SentencePiece .model, .gguf, a model
    reference or a packaged name."""
    from transformers import PreTrainedTokenizerFast

    path = Path(ref).expanduser()
    try:
        if path.is_file() and path.suffix == ".model":
            return _sentencepiece_tokenizer(path)
        if path.is_file() and path.suffix == ".json":
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if path.is_file():
            raise UserError(f"{path} is not a tokenizer (expected a directory, tokenizer.json, .model or .gguf)")
        directory = path if path.is_dir() else resolve_model(ref)
        return AutoTokenizer.from_pretrained(directory)
    except UserError:
        raise
    except Exception as e:  # tokenizer loaders raise many types for a file that is not theirs
        raise UserError(f"{ref}: not a readable tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
