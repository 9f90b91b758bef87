"""Supertokens: tokens that span word boundaries, learned from a corpus.

An ordinary tokenizer splits text at every space before it learns anything, so no token can
hold two words. TokenAdapt (Sharthak et al. 2025) pairs its transplant with a tokenizer whose
pre-tokenization lets frequent multi-word sequences (" of the", " kann nicht") become single
tokens, for better compression. Their trainer cuts the training text at random character
offsets; here the cuts fall at random *word* boundaries, into groups of 1 to ``max_words``
words, so that:

- a token never holds more than ``max_words`` words (nothing it is learned from does), and
  never more than ``max_chars`` characters (the trainer's own cap);
- single words are still seen on their own often, so the usual word and subword tokens are
  learned too; a cross-word merge has to earn its place against them.

When the finished tokenizer reads text, it splits it as GPT-2 does (letters, digits,
punctuation and whitespace runs apart), except that a run of words separated by single
spaces stays one piece (:data:`PIECE`): tokens may cross the space between two words, never
a digit, punctuation mark or line break, so numbers are split as by an ordinary tokenizer.
Inside a piece, the learned merges (BPE) or pieces (unigram) decide where tokens end.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers

from transplant.errors import UserError

# What a token may lie within: GPT-2's pre-tokens (an English contraction's end, a word, a
# number, a run of punctuation or of whitespace, each with the space before it), a word joined
# by the words that follow it after one space each.
PIECE = r"'s|'t|'re|'ve|'m|'ll|'d|(?: ?\p{L}+)+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_WORD = re.compile(r"\s*\S+")  # a word with the whitespace before it
_SUPERTOKEN = re.compile(rb"\S ")  # a word's end followed by a space: the token goes on past it


@dataclass(frozen=True)
class SupertokenOptions:
    """Caps on a supertoken: words (the largest training group) and characters (bytes: the
    tokenizers are byte-level, each character stands for a byte). ``transition``: the share of a BPE
    vocabulary learned as ordinary tokens before merges across words begin
    (:mod:`transplant.vocab.superbpe`; SuperBPE's best was 0.8 to 0.9)."""

    max_words: int = 4
    max_chars: int = 24
    transition: float = 0.8

    def __post_init__(self) -> None:
        if self.max_words < 2:
            raise UserError(f"--max-words must be at least 2 (1 is an ordinary tokenizer), got {self.max_words}")
        if self.max_chars < 2:
            raise UserError(f"--max-chars must be at least 2, got {self.max_chars}")
        if not 0 < self.transition < 1:
            raise UserError(f"--transition must lie between 0 and 1, got {self.transition}")


def piece_split() -> pre_tokenizers.Split:
    """Split text into :data:`PIECE` s."""
    return pre_tokenizers.Split(Regex(PIECE), behavior="isolated")


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """How a byte-level supertokens tokenizer reads text: into pieces, then bytes as
    characters (GPT-2's table, no further splitting)."""
    return pre_tokenizers.Sequence([piece_split(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def word_groups(text: str, max_words: int, rng: random.Random) -> list[str]:
    """``text`` cut at word boundaries into groups of 1 to ``max_words`` words (uniformly
    drawn sizes), each keeping the whitespace before its first word; joined they give the
    text back up to its trailing whitespace."""
    words = _WORD.findall(text)
    groups = []
    start = 0
    while start < len(words):
        size = rng.randint(1, max_words)
        groups.append("".join(words[start:start + size]))
        start += size
    return groups


def is_supertoken(surface: bytes) -> bool:
    """Whether a token's surface (its UTF-8 text, see :mod:`transplant.vocab.surface`) goes on
    past the end of a word: a space after a non-space character. Tokens of a tokenizer that
    splits at every space never do."""
    return _SUPERTOKEN.search(surface) is not None
