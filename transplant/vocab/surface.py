"""Token strings -> the bytes they stand for.

Tokenizers spell the same text differently: byte-level BPE writes a leading space as ``Ġ``
and raw bytes as printable stand-ins, SentencePiece writes ``▁`` and ``<0xNN>``, WordPiece
marks continuations with ``##`` and leaves word starts bare. Mapping every token to the
UTF-8 bytes it produces (with a leading space for a word start) gives one key on which two
vocabularies can be compared, whatever their schemes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Literal

from transformers import PreTrainedTokenizerBase

from transplant.errors import UserError

Scheme = Literal["byte_level", "metaspace", "wordpiece", "plain"]
# Special roles in priority order: when one new id holds two roles (pad == eos is common),
# it takes the row of the role the model relies on most (eos ends text; pad is never read).
ROLES = ("eos", "bos", "unk", "pad")
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@cache
def byte_encoder() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


@cache
def byte_decoder() -> dict[str, int]:
    return {c: b for b, c in byte_encoder().items()}


@dataclass(frozen=True)
class Vocabulary:
    """Every id of a tokenizer with its surface bytes.

    ``surfaces[i]`` is what token ``i`` writes (a word start begins with a space);
    for special tokens it is their literal content. ``tokens[i]`` is the raw string
    (``None`` for an id the tokenizer leaves unused).
    """

    tokens: list[str | None]
    surfaces: list[bytes]
    special: list[bool]
    byte_fallback: list[bool]
    roles: dict[str, int]
    scheme: Scheme
    continuation_prefix: str

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def byte_ids(self) -> dict[int, int]:
        """Byte value -> the id that stands for that one raw byte (a byte-level character
        or a ``<0xNN>`` piece). Cached: decompositions ask for it per token."""
        if self.scheme == "byte_level":
            chars = byte_decoder()
            return {chars[t]: i for i, t in enumerate(self.tokens) if t in chars}
        return {self.surfaces[i][0]: i for i, is_byte in enumerate(self.byte_fallback) if is_byte}


def _json(tokenizer: PreTrainedTokenizerBase) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{type(tokenizer).__name__} is not backed by a fast tokenizer")
    return json.loads(backend.to_str())


def _has_type(node: object, type_name: str) -> bool:
    """Whether a (possibly nested Sequence) tokenizer component has ``type_name``."""
    if isinstance(node, dict):
        if node.get("type") == type_name:
            return True
        return any(_has_type(v, type_name) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, type_name) for v in node)
    return False


def detect_scheme(spec: dict) -> tuple[Scheme, str]:
    """Which spelling a tokenizer uses, and its continuation prefix (WordPiece)."""
    model = spec.get("model") or {}
    if model.get("type") == "WordPiece":
        return "wordpiece", model.get("continuing_subword_prefix") or "##"
    if _has_type(spec.get("pre_tokenizer"), "ByteLevel") or _has_type(spec.get("decoder"), "ByteLevel"):
        return "byte_level", ""
    if _has_type(spec.get("decoder"), "Metaspace") or "\u2581" in json.dumps(spec.get("decoder"), ensure_ascii=False):
        return "metaspace", ""
    return "plain", ""


def token_surface(token: str, scheme: Scheme, continuation_prefix: str = "") -> tuple[bytes, bool]:
    """(surface bytes, is a byte-fallback token) of one ordinary (non-added) token."""
    if scheme == "byte_level":
        table = byte_decoder()
        if all(c in table for c in token):
            return bytes(table[c] for c in token), False
        return token.encode("utf-8"), False
    if scheme == "metaspace":
        byte = _BYTE_FALLBACK.match(token)
        if byte:
            return bytes([int(byte.group(1), 16)]), True
        return token.replace("\u2581", " ").encode("utf-8"), False
    if scheme == "wordpiece":
        if token.startswith(continuation_prefix):
            return token[len(continuation_prefix):].encode("utf-8"), False
        return b" " + token.encode("utf-8"), False
    return token.encode("utf-8"), False


def vocabulary(tokenizer: PreTrainedTokenizerBase) -> Vocabulary:
    """Read every token of ``tokenizer`` into a :class:`Vocabulary`."""
    scheme, prefix = detect_scheme(_json(tokenizer))
    size = len(tokenizer)
    added = tokenizer.added_tokens_decoder
    size = max([size, *(i + 1 for i in added)])
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    surfaces: list[bytes] = []
    special: list[bool] = []
    fallback: list[bool] = []
    for i, token in enumerate(tokens):
        if i in added:
            surfaces.append(added[i].content.encode("utf-8"))
            special.append(bool(added[i].special))
            fallback.append(False)
        elif token is None:
            surfaces.append(b"")
            special.append(True)
            fallback.append(False)
        else:
            surface, is_byte = token_surface(token, scheme, prefix)
            surfaces.append(surface)
            special.append(False)
            fallback.append(is_byte)
    roles = {
        role: getattr(tokenizer, f"{role}_token_id")
        for role in ROLES
        if getattr(tokenizer, f"{role}_token_id", None) is not None
    }
    return Vocabulary(tokens, surfaces, special, fallback, roles, scheme, prefix)
