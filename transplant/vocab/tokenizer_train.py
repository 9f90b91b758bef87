"""Train a new tokenizer on a corpus: the NEW of a transplant, made here.

Two kinds, both with the ``tokenizers`` library, both byte-level (GPT-2's scheme, SmolLM2's:
every byte has a token and a space starts a word, ``Ġ``), so both write any text and give it
back exactly:

- ``bpe``: byte-pair merges, most frequent pair first;
- ``unigram``: a unigram language model over pieces (SentencePiece's algorithm, Gemma's),
  each text split into its most likely pieces.

With ``supertokens`` (:mod:`transplant.vocab.supertokens`) tokens may span words. The output
is an ordinary Hugging Face tokenizer directory that ``AutoTokenizer`` and ``transplant
model --tokenizer`` load, with its record (``transplant-tokenizer.json``: what it was
trained on and how) beside it; it is written atomically and replaced only with ``force``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from transplant import __version__
from transplant.errors import UserError, reason
from transplant.inputs.corpus import check_corpora, read_corpora, texts
from transplant.io.atomic import TOOL, atomic_path, check_output
from transplant.vocab import superbpe
from transplant.vocab.supertokens import SupertokenOptions, is_supertoken, word_groups
from transplant.vocab.supertokens import pre_tokenizer as supertokens_pre_tokenizer
from transplant.vocab.surface import vocabulary

Kind = Literal["bpe", "unigram"]
KINDS = ("bpe", "unigram")
RECORD = "transplant-tokenizer.json"
END_OF_TEXT = "<|endoftext|>"  # bos, eos and pad, as in GPT-2 and SmolLM2
MIN_VOCAB = 300  # the 256 bytes, the specials, and a few learned tokens
DOCS_PER_BATCH = 256  # documents handed to the trainer at a time


@dataclass(frozen=True)
class TokenizerConfig:
    """What to train: ``vocab_size`` tokens in all (the 256 bytes and the special included) of ``kind`` on ``corpora``; ``supertokens`` None for an ordinary tokenizer.
    ``seed`` draws the word groups of supertokens training."""

    corpora: tuple[Path, ...]
    out: Path
    vocab_size: int = 16_000
    kind: Kind = "bpe"
    supertokens: SupertokenOptions | None = None
    seed: int = 0
    force: bool = False


@dataclass(frozen=True)
class TrainedTokenizer:
    """The written directory, its size, how many of its tokens span words, and the seconds
    that training took."""

    out: Path
    vocab_size: int
    supertokens: int
    seconds: float


def train_tokenizer(config: TokenizerConfig) -> TrainedTokenizer:
    """Train, check that every token is reachable as text, and write ``config.out``."""
    corpora = _check(config)
    start = time.perf_counter()
    tokenizer = _train(corpora, config)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   pad_token=END_OF_TEXT)
    seconds = time.perf_counter() - start
    spanning = sum(map(is_supertoken, vocabulary(fast).surfaces))
    record = {
        "tool": TOOL, "version": __version__, "kind": config.kind, "vocab_size": len(fast),
        "supertokens": None if config.supertokens is None else asdict(config.supertokens),
        "tokens_spanning_words": spanning, "corpora": [str(p) for p in corpora], "seed": config.seed,
        "seconds": round(seconds, 1),
    }
    with atomic_path(config.out, existing="replace" if config.force else "refuse") as tmp:
        fast.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return TrainedTokenizer(config.out, len(fast), spanning, seconds)


def _check(config: TokenizerConfig) -> list[Path]:
    """Every input mistake, in one line, before the corpus is read for training."""
    if config.kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, not {config.kind!r}")
    if config.vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab-size must be at least {MIN_VOCAB} (256 byte tokens come first), got {config.vocab_size}")
    corpora = check_corpora(config.corpora)
    check_output(config.out, RECORD, corpora, replace=config.force)
    read_corpora(corpora)
    return corpora


def _train(corpora: Sequence[Path], config: TokenizerConfig) -> Tokenizer:
    """The trained tokenizer; a corpus the trainer cannot take is one line."""
    supertokens, seed = config.supertokens, config.seed
    try:
        if config.kind == "unigram":
            tokenizer, trainer = _unigram(config.vocab_size, supertokens)
            tokenizer.train_from_iterator(_training_text(corpora, supertokens, seed), trainer)
            return tokenizer
        size = config.vocab_size if supertokens is None else superbpe.ordinary_size(config.vocab_size, supertokens)
        tokenizer, trainer = _bpe(size)
        tokenizer.train_from_iterator(_training_text(corpora, None, seed), trainer)
        if supertokens is None:
            return tokenizer
        return superbpe.add_supertokens(tokenizer, _training_text(corpora, supertokens, seed), config.vocab_size,
                                        supertokens)
    except Exception as e:
        if type(e) is not Exception:  # the library's complaints about the text are plain Exceptions
            raise
        raise UserError(f"cannot train a {config.vocab_size:,}-token {config.kind} tokenizer on this corpus: "
                        f"{reason(e)}") from e


def _training_text(corpora: Sequence[Path], supertokens: SupertokenOptions | None, seed: int) -> Iterator[list[str]]:
    """Batches of what the trainer learns from: whole documents, or for supertokens each
    document cut into word groups (one group is never merged with the next)."""
    rng = random.Random(seed)
    batch: list[str] = []
    for path in corpora:
        for text in texts(path):
            if supertokens is None:
                batch.append(text)
            else:
                batch.extend(word_groups(text, supertokens.max_words, rng))
            if len(batch) >= DOCS_PER_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _bpe(vocab_size: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """Ordinary byte-level BPE: the plain tokenizer, and the first stage of a supertokens one."""
    tokenizer = _byte_level(models.BPE(), None)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], min_frequency=2,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tokenizer, trainer


def _unigram(vocab_size: int, supertokens: SupertokenOptions | None) -> tuple[Tokenizer, trainers.UnigramTrainer]:
    """Byte-level unigram; its pieces are capped like SentencePiece's (16), or by ``max_chars``."""
    tokenizer = _byte_level(models.Unigram(), supertokens)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_piece_length=16 if supertokens is None else supertokens.max_chars,
    )
    return tokenizer, trainer


def _byte_level(model: models.Model, supertokens: SupertokenOptions | None) -> Tokenizer:
    """A tokenizer around ``model`` that reads text as bytes. Ordinary: GPT-2's
    pre-tokenization (words, numbers, punctuation runs and whitespace apart). Supertokens:
    split at sentence ends and line breaks only."""
    tokenizer = Tokenizer(model)
    if supertokens is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = supertokens_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer
