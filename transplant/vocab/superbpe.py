"""Byte-level BPE with supertokens, learned in two stages (SuperBPE's curriculum).

BPE learns merges greedily, most frequent pair first. Shown multi-word text from the start,
its first merges join a word's last letter to the next word's space (``e`` + ``Ġ``), because
that pair is more frequent than any inside a word, and it then writes "Die" as ``D`` ``ieĠ``.
SuperBPE (Liu et al. 2025, "SuperBPE: Space Travel for Language Models") orders the learning
instead: ordinary subword merges first, up to a transition point; only then merges across
words, on top of them. The ``tokenizers`` library cannot resume training from merges, so the
second stage trains a fresh BPE whose alphabet is the first stage's tokens, each spelt as
one character (:data:`SYMBOLS` + its id); its merges, spelt back, extend the first stage's.
Merges rank in the order they were learned, so the finished tokenizer applies every ordinary
merge before any supertoken merge, the same as during training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, models, trainers

from transplant.vocab.supertokens import SupertokenOptions, piece_split, pre_tokenizer

SYMBOLS = 0x10000  # stage-1 token i is the character chr(SYMBOLS + i) in stage 2 (above the surrogates)
BATCH = 4096  # pieces encoded at a time


def ordinary_size(vocab_size: int, options: SupertokenOptions) -> int:
    """How many of ``vocab_size`` tokens the first stage learns."""
    return max(1, round(vocab_size * options.transition))


def add_supertokens(ordinary: Tokenizer, groups: Iterable[list[str]], vocab_size: int,
                    options: SupertokenOptions) -> Tokenizer:
    """The trained ``ordinary`` byte-level BPE grown to ``vocab_size`` tokens by merges learned
    across words on ``groups`` (batches of word groups, see
    :func:`transplant.vocab.supertokens.word_groups`); it reads text with
    :func:`transplant.vocab.supertokens.pre_tokenizer`."""
    ordinary.pre_tokenizer = pre_tokenizer()
    spec = json.loads(ordinary.to_str())
    tokens = {i: token for token, i in spec["model"]["vocab"].items()}
    wanted = vocab_size - len(tokens)
    stage2 = Tokenizer(models.BPE())
    # twice the merges wanted: some are dropped below (too long, or spelling a token that exists)
    stage2.train_from_iterator(_as_symbols(ordinary, groups), trainers.BpeTrainer(
        vocab_size=len(tokens) + 2 * wanted, initial_alphabet=[chr(SYMBOLS + i) for i in tokens],
        min_frequency=2, show_progress=False))
    merges = _spelt_merges(json.loads(stage2.to_str())["model"]["merges"], tokens, wanted, options.max_chars)
    vocab = spec["model"]["vocab"]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    spec["model"]["merges"] += [list(pair) for pair in merges]
    return Tokenizer.from_str(json.dumps(spec))


def _as_symbols(stage1: Tokenizer, groups: Iterable[list[str]]) -> Iterator[list[str]]:
    """Each word group as the stage-1 tokens the finished tokenizer would give it, one
    character per token, and cut into its pieces (no merge may cross from one to the next)."""
    split = piece_split()
    for batch in groups:
        pieces = [piece for group in batch for piece, _ in split.pre_tokenize_str(group)]
        for start in range(0, len(pieces), BATCH):
            encoded = stage1.encode_batch(pieces[start:start + BATCH], add_special_tokens=False)
            yield ["".join(chr(SYMBOLS + i) for i in e.ids) for e in encoded]


def _spelt_merges(merges: list[list[str]], tokens: dict[int, str], wanted: int, max_chars: int) -> list[tuple[str, str]]:
    """The first ``wanted`` stage-2 merges spelt in stage-1 tokens' text, keeping only those
    whose parts are kept, whose result is new and at most ``max_chars`` long (byte-level
    characters are bytes). A merge only ever uses earlier ones, so one pass decides."""
    known = set(tokens.values())
    kept: list[tuple[str, str]] = []
    for pair in merges:
        if len(kept) == wanted:
            break
        left, right = (_spell(part, tokens) for part in pair)
        if left in known and right in known and left + right not in known and len(left + right) <= max_chars:
            kept.append((left, right))
            known.add(left + right)
    return kept


def _spell(symbols: str, tokens: dict[int, str]) -> str:
    return "".join(tokens[ord(c) - SYMBOLS] for c in symbols)
