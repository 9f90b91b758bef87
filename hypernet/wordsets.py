"""Token -> word sets: what HyperOFA knows about a token from external word vectors.

OFA's idea: a token is described by the words it helps to spell. Every word of the vector
vocabulary is tokenized by the tokenizer (as it appears after a space and at the start of
a line: a byte-level BPE spells the two differently), and each token collects the words
whose tokenization contains it — the most frequent ``max_words`` of them (vector
vocabularies are ordered by frequency, so the lowest word indices). A token whose own
surface is a word of the vocabulary also gets that word's vector, in a slot of its own.

After the tokenizer's batched encode the sets are tensor work: (token, word) pairs are made
unique and sorted once, and each pair's rank inside its token's group says whether it is
kept and in which column it lands. (The own-surface lookup is one dict lookup per token.)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from transplant.vocab.surface import Vocabulary

WORD = re.compile(r"\w+")
SPLIT_KEY = "hyperofa-words-1"  # names split_words in the fastText cache key; bump when it changes


def split_words(lines: list[str]) -> list[list[str]]:
    """Words of each line for training word vectors: runs of letters, digits and ``_``
    (punctuation is left to the tokenizers; a vector per "word," would be wasted)."""
    return [WORD.findall(line) for line in lines]


@dataclass(frozen=True)
class WordSets:
    """For each token id: its own surface's word index and the indices of the words that
    contain it, padded with -1 (``words`` has at most ``max_words`` columns)."""

    surface: torch.Tensor  # (tokens,)
    words: torch.Tensor  # (tokens, width)

    @property
    def covered(self) -> torch.Tensor:
        """Tokens with at least one vector: the ones HyperOFA can predict."""
        return (self.surface >= 0) | (self.words >= 0).any(1)

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """(len(ids), 1 + width) word indices for the hypernetwork: the surface slot first."""
        return torch.cat([self.surface[ids].unsqueeze(1), self.words[ids]], dim=1)


def token_word_pairs(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, word indices) of every token in the tokenization of every word, both as
    a word start (`` word``) and bare (``word``), from one batched encode."""
    spelled = [" " + w for w in words] + list(words)
    encodings = tokenizer.backend_tokenizer.encode_batch(spelled, add_special_tokens=False)
    lengths = torch.tensor([len(e.ids) for e in encodings], dtype=torch.long)
    tokens = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings),
                                          dtype=np.int64, count=int(lengths.sum())))
    word_index = torch.arange(len(words)).repeat(2).repeat_interleave(lengths)
    return tokens, word_index


def build_word_sets(tokenizer: PreTrainedTokenizerBase, vocab: Vocabulary, words: Sequence[str],
                    index: Mapping[str, int], max_words: int = 256) -> WordSets:
    """Word sets for every id of ``vocab``; ``words[i]`` is the word of vector ``i`` (most
    frequent first) and ``index`` maps a word to its vector (its own surface's lookup)."""
    tokens, word_index = token_word_pairs(tokenizer, words)
    special = torch.tensor(vocab.special + [True], dtype=torch.bool)  # an id past the vocabulary counts as special
    ordinary = ~special[tokens.clamp(max=len(vocab))]
    pairs = torch.unique(tokens[ordinary] * len(words) + word_index[ordinary])  # sorted by token, then word
    tokens, word_index = pairs // len(words), pairs % len(words)
    counts = torch.bincount(tokens, minlength=len(vocab))
    rank = torch.arange(len(pairs)) - (counts.cumsum(0) - counts)[tokens]
    keep = rank < max_words
    width = max(1, min(max_words, int(counts.max()) if len(pairs) else 0))
    table = torch.full((len(vocab), width), -1, dtype=torch.long)
    table[tokens[keep], rank[keep]] = word_index[keep]
    surface = torch.tensor([-1 if special else index.get(text.decode("utf-8", "replace").strip(), -1)
                            for text, special in zip(vocab.surfaces, vocab.special)], dtype=torch.long)
    return WordSets(surface=surface, words=table)
