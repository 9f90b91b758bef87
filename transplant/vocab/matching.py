"""Match a new vocabulary against the base one.

Tokens whose surface (see :mod:`transplant.vocab.surface`) exists in the base vocabulary are
*copied*: their rows are taken bit for bit from the base. Special tokens match by role
(bos/eos/pad/unk) first, then by literal string. Everything else is *missing* and goes to
an initialization method, which may ask for a token's decomposition into base tokens.

One kind of token is neither: a byte-fallback token (``<0x31>``) whose byte has an ordinary
piece of its own (``1``) in the new vocabulary. The tokenizer writes that byte with the piece
and never with the byte token, so the byte token is *unreachable*. Given the piece's row it
would be the piece's twin, and in a tied head a twin takes half of every probability the
piece should get; its row is left zero (a logit of 0, far below a likely token's). Only a
base token of the very same spelling (the base has the same twin, with a row it learned)
is copied for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from tokenizers import models
from transformers import PreTrainedTokenizerBase

from transplant.vocab.surface import ROLES, Vocabulary, byte_encoder, vocabulary


@dataclass
class VocabMatch:
    """The outcome of matching: which new ids copy which base ids, and which are missing."""

    base_tokenizer: PreTrainedTokenizerBase
    new_tokenizer: PreTrainedTokenizerBase
    base_vocab: Vocabulary
    new_vocab: Vocabulary
    num_rows: int
    copy_new: torch.Tensor
    copy_base: torch.Tensor
    missing: torch.Tensor
    padding: torch.Tensor
    special_matched: int
    unreachable: torch.Tensor  # byte-fallback ids the tokenizer never writes (see the module docstring): zero rows
    _decompositions: dict[int, list[int]] = field(default_factory=dict, repr=False)

    @property
    def anchors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(new ids, base ids) of copied tokens that are not special: shared ground for
        methods that learn a map between the two spaces."""
        keep = torch.tensor([not self.new_vocab.special[i] for i in self.copy_new.tolist()], dtype=torch.bool)
        return self.copy_new[keep], self.copy_base[keep]

    def predicting_all(self) -> VocabMatch:
        """The same match with every ordinary copied token moved to ``missing``: for a method
        asked to predict all rows (``zett --predict-all``). Special tokens stay copied."""
        ordinary = torch.tensor([not self.new_vocab.special[i] for i in self.copy_new.tolist()], dtype=torch.bool)
        missing, _ = torch.sort(torch.cat([self.missing, self.copy_new[ordinary]]))
        return dataclasses.replace(self, copy_new=self.copy_new[~ordinary], copy_base=self.copy_base[~ordinary],
                                   missing=missing, _decompositions=self._decompositions)

    def surface(self, new_id: int) -> str:
        """The text a new token writes (leading space kept), for display and text models."""
        return self.new_vocab.surfaces[new_id].decode("utf-8", errors="replace")

    def decompose(self, new_id: int) -> list[int]:
        """Base ids that spell the new token; ``[]`` for special tokens and empty ones."""
        if new_id not in self._decompositions:
            vocab = self.new_vocab
            if new_id >= len(vocab) or vocab.special[new_id]:
                pieces: list[int] = []
            else:
                pieces = encode_bytes(self.base_tokenizer, self.base_vocab, vocab.surfaces[new_id])
            self._decompositions[new_id] = pieces
        return self._decompositions[new_id]

    def decompose_padded(self, new_ids: torch.Tensor) -> torch.Tensor:
        """Decompositions of ``new_ids`` as a (n, longest) LongTensor padded with -1, so
        methods can work on all tokens at once instead of looping."""
        rows = [self.decompose(i) for i in new_ids.tolist()]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        flat = torch.tensor([piece for r in rows for piece in r], dtype=torch.long)
        row = torch.repeat_interleave(torch.arange(len(rows)), lengths)
        col = torch.arange(len(flat)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        width = int(lengths.max()) if len(rows) else 0
        out = torch.full((len(rows), max(width, 1)), -1, dtype=torch.long)
        out[row, col] = flat
        return out


def encode_bytes(base_tokenizer: PreTrainedTokenizerBase, vocab: Vocabulary, surface: bytes) -> list[int]:
    """Tokenize raw surface bytes with the base tokenizer's model alone.

    The base's normalizer and pre-tokenizer are bypassed on purpose: the surface already is
    the exact text (a leading space is a word start), and running e.g. SentencePiece's
    dummy-prefix logic on a lone piece would invent a word start that is not there.
    """
    model = base_tokenizer.backend_tokenizer.model
    if vocab.scheme == "byte_level":
        table = byte_encoder()
        return [t.id for t in model.tokenize("".join(table[b] for b in surface))]
    if vocab.scheme == "wordpiece":
        return _wordpiece(model, vocab.continuation_prefix, surface.decode("utf-8", errors="ignore"))
    text = surface.decode("utf-8", errors="surrogateescape")
    if vocab.scheme == "metaspace":
        text = text.replace(" ", "\u2581")
    ids: list[int] = []
    run = ""
    for ch in text + "\0":
        if "\udc80" <= ch <= "\udcff" or ch == "\0":
            if run:
                ids.extend(t.id for t in model.tokenize(run))
                run = ""
            if ch != "\0" and ord(ch) - 0xDC00 in vocab.byte_ids:
                ids.append(vocab.byte_ids[ord(ch) - 0xDC00])
        else:
            run += ch
    return ids


def _wordpiece(model: models.WordPiece, prefix: str, text: str) -> list[int]:
    """WordPiece ids of ``text``: each space-led word from a word start, and the text before
    the first space, which continues a word, in ``prefix`` pieces."""
    first, *words = text.split(" ")
    return _continuation(model, prefix, first) + [t.id for word in words if word for t in model.tokenize(word)]


def _continuation(model: models.WordPiece, prefix: str, text: str) -> list[int]:
    """``text`` spelled as WordPiece spells the inside of a word: greedy longest piece
    first, and the whole run unknown when no piece fits. The model itself cannot do this:
    it always starts a word, which would spell ``ing`` as a word start instead of ``##ing``."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        for end in range(len(text), start, -1):
            piece = model.token_to_id(prefix + text[start:end])
            if piece is not None:
                break
        else:
            unk = model.token_to_id(model.unk_token)
            return [] if unk is None else [unk]
        ids.append(piece)
        start = end
    return ids


def _base_lookup(vocab: Vocabulary) -> dict[bytes, int]:
    """Surface -> base id for ordinary tokens; a real piece wins over a byte-fallback twin.

    Used after the exact-spelling lookup, so a vocabulary with two tokens of one surface
    still maps each of its own tokens onto itself."""
    lookup: dict[bytes, int] = {}
    for i, surface in enumerate(vocab.surfaces):
        if vocab.special[i] or not surface:
            continue
        if surface not in lookup or (vocab.byte_fallback[lookup[surface]] and not vocab.byte_fallback[i]):
            lookup[surface] = i
    return lookup


def match_vocabularies(
    base_tokenizer: PreTrainedTokenizerBase,
    new_tokenizer: PreTrainedTokenizerBase,
    pad_to_multiple_of: int = 1,
) -> VocabMatch:
    """Match every id of ``new_tokenizer`` against ``base_tokenizer``."""
    base, new = vocabulary(base_tokenizer), vocabulary(new_tokenizer)
    by_surface = _base_lookup(base)
    by_spelling = {(t, base.surfaces[i]): i for i, t in enumerate(base.tokens) if t is not None and not base.special[i]}
    by_literal = {t: i for i, t in enumerate(base.tokens) if t is not None and base.special[i]}
    by_literal_any = {t: i for i, t in enumerate(base.tokens) if t is not None}
    by_role: dict[int, int] = {}
    for role in ROLES:  # priority order: an id with two roles keeps the first one's row
        if role in new.roles and role in base.roles:
            by_role.setdefault(new.roles[role], base.roles[role])

    written_by_pieces = {s for i, s in enumerate(new.surfaces) if s and not new.special[i] and not new.byte_fallback[i]}
    copy_new: list[int] = []
    copy_base: list[int] = []
    missing: list[int] = []
    unreachable: list[int] = []
    special_matched = 0
    for i in range(len(new)):
        if new.special[i]:
            token = new.tokens[i]
            target = by_role.get(i)
            if target is None and token is not None:
                target = by_literal.get(token, by_literal_any.get(token))
            special_matched += target is not None
        else:
            target = by_spelling.get((new.tokens[i], new.surfaces[i]))
            if target is None and new.byte_fallback[i] and new.surfaces[i] in written_by_pieces:
                unreachable.append(i)
                continue
            if target is None and new.surfaces[i]:
                target = by_surface.get(new.surfaces[i])
        if target is None:
            missing.append(i)
        else:
            copy_new.append(i)
            copy_base.append(target)

    rows = len(new)
    if pad_to_multiple_of > 1:
        rows = -(-rows // pad_to_multiple_of) * pad_to_multiple_of
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return VocabMatch(
        base_tokenizer=base_tokenizer,
        new_tokenizer=new_tokenizer,
        base_vocab=base,
        new_vocab=new,
        num_rows=rows,
        copy_new=as_long(copy_new),
        copy_base=as_long(copy_base),
        missing=as_long(missing),
        padding=torch.arange(len(new), rows, dtype=torch.long),
        special_matched=special_matched,
        unreachable=as_long(unreachable),
    )
