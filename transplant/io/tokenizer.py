"""Load the new tokenizer from whatever the user names.

A tokenizer reference is a tokenizer directory, a ``tokenizer.json``, a SentencePiece
``.model``, a ``.gguf`` (its embedded tokenizer), any model reference (its tokenizer) or a
packaged name. Every loader's failure becomes one :class:`UserError` line.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from transplant.errors import UserError, reason
from transplant.io.sources import resolve_model
from transplant.io.trust import Trust


def _sentencepiece_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Wrap a bare SentencePiece ``.model`` as a fast tokenizer with its special roles."""
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise UserError(f"{path}: not a SentencePiece model") from e
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp) / "tokenizer.model")
        tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
    roles = {"bos": processor.bos_id(), "eos": processor.eos_id(), "pad": processor.pad_id(), "unk": processor.unk_id()}
    tokenizer.add_special_tokens(
        {f"{role}_token": processor.id_to_piece(i) for role, i in roles.items() if 0 <= i < processor.get_piece_size()}
    )
    return tokenizer


# Names that say a special token's role, most telling first. ``<|endoftext|>`` both ends a
# document and (GPT-2's convention) starts the next one.
_ROLE_NAMES = {
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
}


def _declared_roles(spec: dict) -> dict[str, str]:
    """Roles a tokenizer.json states itself: the specials its post-processor wraps a text
    in (``<s> $A </s>``; BERT/RoBERTa's cls and sep) and its model's unknown token."""
    roles: dict[str, str] = {}
    processor = spec.get("post_processor") or {}
    for node in processor.get("processors", [processor]):
        if node.get("type") == "TemplateProcessing":
            marks = ["$" if "Sequence" in item else item["SpecialToken"]["id"] for item in node["single"]]
            if marks and marks[0] != "$":
                roles.setdefault("bos", marks[0])
            if marks and marks[-1] != "$":
                roles.setdefault("eos", marks[-1])
        elif "cls" in node and "sep" in node:
            roles.setdefault("bos", node["cls"][0])
            roles.setdefault("eos", node["sep"][0])
    model = spec.get("model") or {}
    if model.get("unk_token"):
        roles["unk"] = model["unk_token"]
    elif model.get("unk_id") is not None:
        roles["unk"] = model["vocab"][model["unk_id"]][0]
    return roles


def _with_roles(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Name the bos/eos/unk/pad of a bare tokenizer.json, which carries no such names.

    Without them the checkpoint's config gets ``None`` ids and nothing can start or end a
    document (evaluation has no token to condition on). What the file declares comes first,
    then the usual names; a role with no evidence stays unset rather than guessed.
    """
    declared = _declared_roles(json.loads(tokenizer.backend_tokenizer.to_str()))
    vocab = tokenizer.get_vocab()
    found = {}
    for role, names in _ROLE_NAMES.items():
        token = declared.get(role) or next((name for name in names if name in vocab), None)
        if token is not None and getattr(tokenizer, f"{role}_token") is None:
            found[f"{role}_token"] = token
    tokenizer.add_special_tokens(found)
    return tokenizer


def _load(ref: str, trust: Trust) -> PreTrainedTokenizerBase:
    """The tokenizer ``ref`` names, by the loader its kind needs (see :func:`load_tokenizer`)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".model":
        return _sentencepiece_tokenizer(path)
    if path.is_file() and path.suffix == ".json":
        return _with_roles(PreTrainedTokenizerFast(tokenizer_file=str(path)))
    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    if path.is_file():
        raise UserError(f"{path} is not a tokenizer (expected a directory, tokenizer.json, .model or .gguf)")
    directory = path if path.is_dir() else resolve_model(ref, trust)
    trust.check_code(directory)
    return _as_written(AutoTokenizer.from_pretrained(directory, **trust.code_kwargs()), directory, trust)


_PIPELINE = ("normalizer", "pre_tokenizer", "decoder")


def _as_written(tokenizer: PreTrainedTokenizerBase, directory: Path, trust: Trust) -> PreTrainedTokenizerBase:
    """The directory's tokenizer as its tokenizer.json says, whatever class AutoTokenizer chose.

    transformers 5 rebuilds the tokenizer of some model types with the type's own class
    whatever tokenizer.json holds (a qwen2 checkpoint always gets Qwen2Tokenizer, Qwen's
    byte-level BPE pipeline). A transplanted model carries another model's tokenizer, which
    the rebuilt one reads wrongly (a SentencePiece vocabulary loses its word starts), and
    evaluation or training would then score and learn garbage. When the pipeline loaded is
    not the file's, the file is loaded as it is.
    """
    from transformers import PreTrainedTokenizerFast

    path = directory / "tokenizer.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not path.is_file():
        return tokenizer
    written, loaded = json.loads(path.read_text()), json.loads(backend.to_str())
    if written["model"]["type"] == loaded["model"]["type"] and all(written.get(k) == loaded.get(k) for k in _PIPELINE):
        return tokenizer
    return PreTrainedTokenizerFast.from_pretrained(directory, **trust.code_kwargs())


def load_tokenizer(ref: str, trust: Trust = Trust()) -> PreTrainedTokenizerBase:
    """A tokenizer from a directory, tokenizer.json, SentencePiece .model, .gguf, a model
    reference or a packaged name; a directory whose code ``trust`` does not allow is refused,
    and so is a tokenizer with no tokens but special ones: it cannot encode any text, and
    every later step would fail on it."""
    try:
        tokenizer = _load(ref, trust)
    except UserError:
        raise
    except Exception as e:  # tokenizer loaders raise many types for a file that is not theirs
        raise UserError(f"{ref}: not a readable tokenizer ({reason(e)})") from e
    if not set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens):
        raise UserError(f"{ref}: the tokenizer has no tokens (besides special ones)")
    return tokenizer


def check_fits(tokenizer: PreTrainedTokenizerBase, rows: int, model: str) -> None:
    """Every id the tokenizer can produce has an embedding row in ``model``; otherwise the
    first such token stops a run midway with an index error."""
    largest = max([len(tokenizer) - 1, *tokenizer.added_tokens_decoder])
    if largest >= rows:
        raise UserError(f"{model}: the tokenizer has ids up to {largest} but the model has only {rows} embedding rows")
