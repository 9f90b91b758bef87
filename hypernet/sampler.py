"""A new random tokenizer every training step, so the hypernetwork sees many vocabularies.

The sampled tokenizers imitate real ones: UnigramLM pieces chosen by frequency in recent
text, with noise so each step's vocabulary differs. From a queue of recent batch texts:

1. split the text as byte-level BPE tokenizers do (GPT-2 pre-tokenizer: a word with its
   leading space, digit runs, punctuation runs, whitespace runs) and count the pretokens;
2. count every substring of 1-15 characters inside those pretokens, weighted by the
   pretoken counts (so the work is per *distinct* pretoken, not per occurrence);
3. perturb the log counts with Gaussian noise (log-normal noise on the counts) and keep the
   top N, N drawn per step;
4. add all 256 byte characters, so any string is covered: the tokenizer is byte-level,
   every byte has a piece, and no input ever needs an unknown token.

Scores are log-probabilities of the noisy counts; ``tokenizers`` builds the Unigram model
directly (no EM training: the frequencies are the point, and building takes milliseconds).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from transplant.vocab.surface import byte_decoder, byte_encoder

MAX_PIECE_CHARS = 15


@dataclass(frozen=True)
class SamplerConfig:
    min_vocab: int = 8_000  # pieces beyond the 256 bytes; N ~ uniform[min_vocab, max_vocab]
    max_vocab: int = 32_000
    noise_std: float = 1.0  # std of the Gaussian added to log counts
    queue_texts: int = 256  # recent texts whose substrings are counted


def byte_level(text: str) -> str:
    """``text`` in the byte-level alphabet (each UTF-8 byte one printable character)."""
    table = byte_encoder()
    return "".join(table[b] for b in text.encode("utf-8"))


def piece_bytes(piece: str) -> bytes:
    """The bytes a byte-level piece writes (inverse of :func:`byte_level`)."""
    table = byte_decoder()
    return bytes(table[c] for c in piece)


def new_tokenizer(pieces: list[tuple[str, float]]) -> Tokenizer:
    """A byte-level Unigram tokenizer over ``pieces`` (byte-level strings, log-prob scores).
    The 256 single bytes must be among the pieces: they are what makes it total."""
    tokenizer = Tokenizer(models.Unigram(pieces, None, False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


class TokenizerSampler:
    """Keeps recent texts; :meth:`sample` draws a tokenizer from their substring counts."""

    def __init__(self, config: SamplerConfig):
        self.config = config
        self.queue: deque[str] = deque(maxlen=config.queue_texts)
        self._split = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self._bytes = sorted(byte_encoder().values())

    def push(self, texts: Iterable[str]) -> None:
        self.queue.extend(texts)

    def substring_counts(self) -> Counter[str]:
        """Counts of every substring of 1-15 characters of the pretokens in the queue."""
        pretokens: Counter[str] = Counter()
        for text in self.queue:
            pretokens.update(text[start:end] for _, (start, end) in self._split.pre_tokenize_str(text))
        counts: Counter[str] = Counter()
        for word, n in pretokens.items():
            for start in range(len(word)):
                for end in range(start + 1, min(len(word), start + MAX_PIECE_CHARS) + 1):
                    counts[word[start:end]] += n
        return counts

    def sample(self, rng: np.random.Generator) -> Tokenizer:
        """One tokenizer: top-N substrings by noisy count, plus every byte."""
        counts = self.substring_counts()
        strings = [byte_level(s) for s in counts]
        log_counts = np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
        noisy = log_counts + rng.normal(0.0, self.config.noise_std, len(log_counts))
        size = int(rng.integers(self.config.min_vocab, self.config.max_vocab + 1))
        keep = np.argsort(-noisy, kind="stable")[:size]
        total = math.log(np.exp(noisy[keep]).sum() + len(self._bytes))
        scores = {strings[i]: float(noisy[i] - total) for i in keep}
        floor = min(scores.values(), default=0.0) - 1.0
        for byte in self._bytes:  # single bytes never outrank a real piece for the same text
            scores.setdefault(byte, floor)
        return new_tokenizer(sorted(scores.items(), key=lambda kv: -kv[1]))

    def state_dict(self) -> dict[str, list[str]]:
        return {"queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, list[str]]) -> None:
        self.queue.clear()
        self.queue.extend(state["queue"])
