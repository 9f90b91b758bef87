"""A Hugging Face tokenizer as llama.cpp's GGUF vocabulary, or one line saying why it cannot be.

llama.cpp does not run a tokenizer.json: it has a few tokenizer algorithms of its own
(``gpt2``: byte-level BPE with merges; ``llama``: SentencePiece-style BPE driven by scores;
``t5``: unigram with SentencePiece's normalization map) and, for byte-level BPE, a fixed list
of pre-tokenizers known by name (``tokenizer.ggml.pre``). A GGUF whose vocabulary does not
say which one reproduces the tokenizer loads with a warning and tokenizes differently.

llama.cpp's own converter recognises the pre-tokenizer by hashing the token ids that the
whole tokenizer gives a test string, against a table of known models. That cannot name a
tokenizer trained yesterday, which is what a transplant often brings. Here the question is
asked of the behaviour instead: the tokenizer's own normalizer and pre-tokenizer split a set
of probe texts, and that is compared with what each llama.cpp recipe would do to the same
texts (its splitting regexes, or its SentencePiece space handling). The vocabulary and merges
are then the tokenizer's own, so equal pieces give equal token ids. No recipe matching is a
refusal naming the first text where they part.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import regex
from gguf import TokenType
from gguf.vocab import bytes_to_unicode
from tokenizers import Tokenizer, normalizers

from transplant.errors import UserError

Kind = Literal["gpt2", "llama", "t5"]

# Texts that tell the pre-tokenizers apart: contractions in both cases, digit runs (split one
# by one, in threes, or kept), whitespace runs, newlines and tabs, punctuation before words,
# several scripts, emoji, code. Written for this module, not taken from llama.cpp.
PROBES = (
    "Hello world! I'll say it's fine; THEY'RE sure we'VE seen what's DONE.",
    "Numbers: 7 42 314 2718 31415 926535 9.81 1,000,000 x2y3 v10.4",
    "  two leading spaces, double  spaces and a trailing one ",
    "tabs\tand\nnew lines\n\n  indented\r\nwindows line",
    "(parens) [brackets] {braces} ...!!! ??? --- === ''' \"\" ``` @user #tag $5 50%",
    "Grüße aus Köln, naïve café; Ελληνικά γράμματα; Русский текст",
    "中文文本和日本語のテキスト, 한국어 문장",
    "emoji 🚀🦙 and ✅ mixed😁text",
    "def f(x):\n    return x**2  # code\n",
)

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    """A byte-level BPE pre-tokenizer llama.cpp knows by ``name``: its regexes, applied one
    after another to the pieces the previous one left, and whether BPE skips merging a piece
    that is a whole token already (tokenizers' ``ignore_merges``)."""

    name: str
    regexes: tuple[str, ...]
    ignore_merges: bool = False


# Long-standing names, so that older llama.cpp builds load the file too.
PRE_TOKENIZERS = (
    PreTokenizer("gpt-2", (_GPT2,)),
    PreTokenizer("smollm", (r"\p{N}", _GPT2)),
    PreTokenizer("llama-bpe", (_LLAMA3,), ignore_merges=True),
    PreTokenizer("qwen2", (_QWEN2,)),
)

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPACE = "\u2581"  # SentencePiece's visible space
UNREACHABLE = -1e9  # the score of a llama-kind token that no merge produces: merged last


@dataclass
class GGUFVocab:
    """Everything the ``tokenizer.ggml.*`` keys hold, one entry per embedding row."""

    kind: Kind
    tokens: list[str]
    types: list[TokenType]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None  # gpt2 kind: the pre-tokenizer's llama.cpp name
    add_space_prefix: bool = False  # llama / t5 kinds
    remove_extra_whitespaces: bool = False  # t5 kind
    charsmap: bytes | None = None  # t5 kind: SentencePiece's precompiled normalization map


def _regex_pieces(text: str, expressions: tuple[str, ...]) -> list[str]:
    """Split as llama.cpp does: each regex cuts every piece into its matches and the text
    between them (nothing is dropped), and the next regex works on those pieces."""
    pieces = [text]
    for expression in expressions:
        cut = []
        for piece in pieces:
            start = 0
            for match in regex.finditer(expression, piece):
                if match.start() > start:
                    cut.append(piece[start:match.start()])
                if match.end() > match.start():
                    cut.append(match.group())
                start = match.end()
            if start < len(piece):
                cut.append(piece[start:])
        pieces = cut
    return pieces


def _byte_level(piece: str, table: dict[int, str] = bytes_to_unicode()) -> str:
    return "".join(table[b] for b in piece.encode("utf-8"))


def _hf_pieces(tokenizer: Tokenizer, text: str) -> list[str]:
    """The pieces the tokenizer's model is given for ``text``: normalized, then pre-tokenized."""
    if tokenizer.normalizer is not None:
        text = tokenizer.normalizer.normalize_str(text)
    if tokenizer.pre_tokenizer is None:
        return [text]
    return [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def _sentencepiece_text(text: str, add_space_prefix: bool, remove_extra_whitespaces: bool) -> str:
    """The text llama.cpp's SentencePiece tokenizers segment: spaces as ``▁``, one ``▁`` in
    front when asked, and with ``remove_extra_whitespaces`` runs of spaces as one, none at
    the ends (the ``t5`` kind does that after its normalization map)."""
    if remove_extra_whitespaces:
        words = [w for w in text.split(" ") if w]
        return (_SPACE if words else "") + _SPACE.join(words)
    return (_SPACE if add_space_prefix and text else "") + text.replace(" ", _SPACE)


def _first_difference(expected: list[list[str]], got: list[list[str]]) -> str:
    for probe, want, have in zip(PROBES, expected, got):
        if want != have:
            return f"{probe[:30]!r} gives {have[:6]}… where llama.cpp would have {want[:6]}…"
    return ""


def _inner_space(vocab: dict[str, int]) -> bool:
    """Whether some token holds a ``▁`` after its first character (so it spans a word break)."""
    return any(_SPACE in token[1:] for token in vocab)


def _sentencepiece_matches(tokenizer: Tokenizer, expected: list[str]) -> bool:
    """Whether the tokenizer hands its model the texts llama.cpp would segment: the same text,
    in one piece, or in words when no token could span a word break anyway."""
    got = [_hf_pieces(tokenizer, probe) for probe in PROBES]
    if any("".join(pieces) != text for pieces, text in zip(got, expected)):
        return False
    return all(len(pieces) <= 1 for pieces in got) or not _inner_space(tokenizer.get_vocab(with_added_tokens=False))


def _byte_level_pre(tokenizer: Tokenizer, model: dict[str, Any]) -> str:
    got = [_hf_pieces(tokenizer, probe) for probe in PROBES]
    reasons = []
    for pre in PRE_TOKENIZERS:
        expected = [[_byte_level(p) for p in _regex_pieces(probe, pre.regexes)] for probe in PROBES]
        if expected == got and pre.ignore_merges == bool(model.get("ignore_merges", False)):
            return pre.name
        reasons.append(f"not {pre.name}: {_first_difference(expected, got) or 'ignore_merges differs'}")
    raise UserError("llama.cpp has no pre-tokenizer that splits text as this BPE tokenizer does, so a GGUF "
                    f"would tokenize differently ({reasons[0]}; nor {', '.join(p.name for p in PRE_TOKENIZERS[1:])})")


def _sentencepiece_flags(tokenizer: Tokenizer) -> bool:
    """add_space_prefix of the ``llama`` kind that reproduces the tokenizer (byte-fallback BPE)."""
    for prefix in (False, True):
        if _sentencepiece_matches(tokenizer, [_sentencepiece_text(p, prefix, False) for p in PROBES]):
            return prefix
    got = [_hf_pieces(tokenizer, probe) for probe in PROBES]
    expected = [[_sentencepiece_text(p, True, False)] for p in PROBES]
    raise UserError("llama.cpp's SentencePiece BPE applies no normalizer and splits nothing, and this tokenizer "
                    f"does ({_first_difference(expected, got)})")


def _charsmap(spec: dict[str, Any]) -> bytes | None:
    """SentencePiece's precompiled normalization map, from the tokenizer's Precompiled normalizer."""
    spec = spec.get("normalizer") or {}
    for node in spec.get("normalizers", [spec]):
        if node.get("type") == "Precompiled" and node.get("precompiled_charsmap"):
            return base64.b64decode(node["precompiled_charsmap"])
    return None


def _unigram_flags(tokenizer: Tokenizer, charsmap: bytes | None) -> tuple[bool, bool]:
    """(add_space_prefix, remove_extra_whitespaces) of the ``t5`` kind that reproduces the tokenizer."""
    mapped = [normalizers.Precompiled(charsmap).normalize_str(p) if charsmap else p for p in PROBES]
    for prefix, collapse in ((True, True), (True, False), (False, False)):
        if _sentencepiece_matches(tokenizer, [_sentencepiece_text(m, prefix, collapse) for m in mapped]):
            return prefix, collapse
    got = [_hf_pieces(tokenizer, probe) for probe in PROBES]
    expected = [[_sentencepiece_text(m, True, True)] for m in mapped]
    raise UserError("llama.cpp's unigram tokenizer normalizes text only by SentencePiece's map and its space rules, "
                    f"and this tokenizer does more ({_first_difference(expected, got)})")


def _merge_strings(merges: list[Any]) -> list[str]:
    """Merges as GGUF stores them, ``"left right"``; a space inside a part cannot be stored."""
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    if any(len(pair) != 2 for pair in pairs):
        raise UserError("the BPE tokenizer has merges with spaces inside a token, which GGUF cannot store")
    return [f"{left} {right}" for left, right in pairs]


def _merge_scores(vocab: dict[str, int], merges: list[str], rows: int) -> list[float]:
    """Scores for llama.cpp's ``llama`` kind, which merges the adjacent pair whose joined text
    is the highest-scoring token: minus the rank of the first merge that makes each token,
    so it merges in the order tokenizers' BPE does. Other tokens are never merged first."""
    scores = [UNREACHABLE] * rows
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ")
        token = vocab.get(left + right)
        if token is not None and scores[token] == UNREACHABLE:
            scores[token] = -float(rank)
    return scores


def _token_types(tokenizer: Tokenizer, tokens: list[str], byte_fallback: bool) -> list[TokenType]:
    added = tokenizer.get_added_tokens_decoder()
    types = []
    for i, token in enumerate(tokens):
        if i in added:
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        elif token is None:
            types.append(TokenType.UNUSED)
        elif byte_fallback and _BYTE_TOKEN.fullmatch(token):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    return types


def gguf_vocab(tokenizer: Tokenizer, rows: int) -> GGUFVocab:
    """The GGUF vocabulary of ``tokenizer`` for an embedding of ``rows`` rows (ids without a
    token, padding rows included, become unused ``[PADn]`` entries); a UserError where
    llama.cpp has no tokenizer that would give the same token ids."""
    spec = json.loads(tokenizer.to_str())
    model = spec["model"]
    kind_of = {"BPE": "llama" if model.get("byte_fallback") else "gpt2", "Unigram": "t5"}
    if model["type"] not in kind_of:
        raise UserError(f"llama.cpp runs no {model['type']} tokenizer for a causal LM (it has byte-level BPE, "
                        "SentencePiece BPE and unigram)")
    kind: Kind = kind_of[model["type"]]
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= rows:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {rows} rows")
    by_id: list[Any] = [None] * rows
    for token, i in vocab.items():
        by_id[i] = token
    types = _token_types(tokenizer, by_id, kind != "gpt2")
    tokens = [f"[PAD{i}]" if token is None else token for i, token in enumerate(by_id)]
    if kind != "gpt2":  # llama.cpp matches user-defined tokens in the raw text, before any ▁
        tokens = [t.replace(_SPACE, " ") if ty == TokenType.USER_DEFINED else t for t, ty in zip(tokens, types)]
    if kind == "gpt2":
        return GGUFVocab(kind, tokens, types, merges=_merge_strings(model["merges"]),
                         pre=_byte_level_pre(tokenizer, model))
    if kind == "llama":
        merges = _merge_strings(model["merges"])
        return GGUFVocab(kind, tokens, types, scores=_merge_scores(vocab, merges, rows),
                         add_space_prefix=_sentencepiece_flags(tokenizer))
    charsmap = _charsmap(spec)
    prefix, collapse = _unigram_flags(tokenizer, charsmap)
    scores = [0.0] * rows
    for i, (_, score) in enumerate(model["vocab"]):
        scores[i] = float(score)
    return GGUFVocab(kind, tokens, types, scores=scores, add_space_prefix=prefix,
                     remove_extra_whitespaces=collapse, charsmap=charsmap)
