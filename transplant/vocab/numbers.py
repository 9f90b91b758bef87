"""How a tokenizer splits numbers, and whether two tokenizers split them alike.

The OMP paper (Goddard & Fernandes Neto 2025, "Training-Free Tokenizer Transplantation via
Orthogonal Matching Pursuit") finds mismatched number tokenization the critical threat to
arithmetic after a transplant: a base that learned to add single digits, handed a tokenizer
that writes ``▁123`` ``45``, meets digit strings it never computed with (or the reverse),
and no choice of embedding rows teaches it. So a transplant compares the two tokenizers'
schemes before the work and warns when they differ.

A scheme is read off how the tokenizer writes a fixed sample of numbers (1 to 8 digits, in
running text after a space and after punctuation): which digits each token covers, found
from the token offsets. The sample is seeded, so a tokenizer always gets the same verdict.

:func:`number_spans` and :func:`marked_tokens` serve evaluation: the tokens that write the
numbers of a text, whose loss is the ``digits`` group of ``transplant evaluate``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

Kind = Literal["single digits", "groups from the left", "groups from the right", "learned merges"]
Space = Literal["separate", "joined", "mixed"]

# A number in running text, with the whitespace before it: that space is a token of its own
# in some tokenizers (``Ġ`` ``1`` ``2``) and part of the first digits in others (``▁12``),
# so counting it on both sides makes their losses on numbers comparable.
NUMBER = re.compile(r"\s?[0-9]+")
EXAMPLE = 12345
# {} is the number; the first context puts a space before it, the others punctuation.
CONTEXTS = ("in {} years", "x={};", "({})")
LENGTHS = range(1, 9)
PER_LENGTH = 4


def sample_numbers(seed: int = 0) -> list[str]:
    """``PER_LENGTH`` numbers of each length in ``LENGTHS`` (no leading zero), plus ``EXAMPLE``."""
    rng = random.Random(seed)
    numbers = [str(rng.randrange(10 ** (n - 1) if n > 1 else 0, 10**n)) for n in LENGTHS for _ in range(PER_LENGTH)]
    return [*numbers, str(EXAMPLE)]


def _covering_tokens(offsets: Sequence[tuple[int, int]], start: int, stop: int) -> list[int]:
    """For each character in [start, stop), the index of the first token whose offsets cover
    it (-1 - position where none does, so an uncovered character stands alone)."""
    owners = []
    for position in range(start, stop):
        owner = next((i for i, (s, e) in enumerate(offsets) if s <= position < e), -1 - position)
        owners.append(owner)
    return owners


def _runs(owners: Sequence[int]) -> list[int]:
    """Lengths of the runs of equal values: how many digits each token writes."""
    lengths: list[int] = []
    for i, owner in enumerate(owners):
        if i and owner == owners[i - 1]:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


@dataclass(frozen=True)
class Split:
    """How one number in one context was written: digits per token, and whether the space
    before it (when there is one) is a token of its own."""

    digits: tuple[int, ...]
    space_separate: bool | None  # None: no space before the number in this context


def split_number(tokenizer: PreTrainedTokenizerBase, number: str, context: str) -> tuple[Split, list[str]]:
    """The split of ``number`` written inside ``context``, and the tokens that write it
    (with the space before it, if any)."""
    text = context.format(number)
    start = text.index(number)
    stop = start + len(number)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    owners = _covering_tokens(offsets, start, stop)
    space = None
    begin = start
    if start and text[start - 1].isspace():
        begin = start - 1
        space = any(begin <= s and e <= start and i != owners[0] for i, (s, e) in enumerate(offsets))
    tokens = tokenizer.convert_ids_to_tokens(
        [t for t, (s, e) in zip(encoded["input_ids"], offsets, strict=True) if s < stop and e > begin]
    )
    return Split(tuple(_runs(owners)), space), tokens


def _grouped(length: int, size: int, from_left: bool) -> tuple[int, ...]:
    """``length`` digits cut into groups of ``size``, the short group last (from the left) or first."""
    groups = [size] * (length // size) + ([length % size] if length % size else [])
    return tuple(groups if from_left else groups[::-1])


@dataclass(frozen=True)
class NumberScheme:
    """A tokenizer's way with numbers: the kind, the most digits one token writes, whether a
    space before a number stays a token of its own, and ``EXAMPLE`` as it writes it."""

    kind: Kind
    longest: int
    space: Space
    example: tuple[str, ...]

    def splits_like(self, other: NumberScheme) -> bool:
        """Same kind and the same longest group: a model reads the other's numbers as its own."""
        return self.kind == other.kind and self.longest == other.longest

    def __str__(self) -> str:
        name = {
            "single digits": "single digits",
            "groups from the left": f"groups of up to {self.longest} digits from the left",
            "groups from the right": f"groups of up to {self.longest} digits from the right",
            "learned merges": f"learned merges of up to {self.longest} digits",
        }[self.kind]
        return f"{name} (' {EXAMPLE}' → {' '.join(self.example)})"


def classify(splits: Sequence[Split], example: Sequence[str]) -> NumberScheme:
    """The scheme that explains every split of the sample: single digits, fixed groups cut
    from the left or the right, or else merges learned from data (BPE, unigram)."""
    longest = max(max(s.digits) for s in splits)
    if longest == 1:
        kind: Kind = "single digits"
    elif all(s.digits == _grouped(sum(s.digits), longest, True) for s in splits):
        kind = "groups from the left"
    elif all(s.digits == _grouped(sum(s.digits), longest, False) for s in splits):
        kind = "groups from the right"
    else:
        kind = "learned merges"
    spaced = {s.space_separate for s in splits if s.space_separate is not None}
    space: Space = "mixed" if len(spaced) > 1 else "separate" if spaced == {True} else "joined"
    return NumberScheme(kind, longest, space, tuple(example))


def number_splits(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> tuple[list[Split], list[str]]:
    """The splits of the sample numbers in every context, and the tokens of ``EXAMPLE`` after a space."""
    splits = [split_number(tokenizer, n, c)[0] for n in sample_numbers(seed) for c in CONTEXTS]
    return splits, split_number(tokenizer, str(EXAMPLE), CONTEXTS[0])[1]


def number_scheme(tokenizer: PreTrainedTokenizerBase) -> NumberScheme:
    """How ``tokenizer`` splits numbers (see :func:`classify`)."""
    return classify(*number_splits(tokenizer))


@dataclass(frozen=True)
class NumberCheck:
    """The two schemes of a transplant and how often they split a sample number alike."""

    base: NumberScheme
    new: NumberScheme
    agreement: float  # share of the sample (numbers × contexts) split into the same digit groups

    @property
    def mismatch(self) -> bool:
        return not self.base.splits_like(self.new)

    def warning(self) -> str | None:
        """One line naming both schemes, or None when they match."""
        if not self.mismatch:
            return None
        return (f"the tokenizers split numbers differently: the base into {self.base}, the new one into "
                f"{self.new}; arithmetic may suffer (`transplant evaluate` shows the cost in its digits row)")

    def to_dict(self) -> dict:
        return {"base": {**asdict(self.base), "scheme": str(self.base)},
                "new": {**asdict(self.new), "scheme": str(self.new)},
                "agreement": round(self.agreement, 4), "mismatch": self.mismatch}


def compare_numbers(base: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase) -> NumberCheck:
    """Classify both tokenizers on the same sample and measure how often they agree."""
    base_splits, base_example = number_splits(base)
    new_splits, new_example = number_splits(new)
    same = sum(a.digits == b.digits for a, b in zip(base_splits, new_splits, strict=True))
    return NumberCheck(classify(base_splits, base_example), classify(new_splits, new_example), same / len(base_splits))


def number_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the numbers in ``text``, each with the whitespace before it (see ``NUMBER``)."""
    return [m.span() for m in NUMBER.finditer(text)]


def marked_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(tokens,) bool: which tokens overlap a span. Spans are sorted and disjoint, so each
    token is checked against the first span that ends after the token starts."""
    if not offsets:
        return torch.zeros(0, dtype=torch.bool)
    if not spans:
        return torch.zeros(len(offsets), dtype=torch.bool)
    starts, ends = torch.tensor(offsets, dtype=torch.long).reshape(-1, 2).T.contiguous()
    span_starts, span_ends = torch.tensor(spans, dtype=torch.long).T.contiguous()
    first = torch.searchsorted(span_ends, starts, right=True).clamp(max=len(spans) - 1)
    return (starts < span_ends[first]) & (ends > span_starts[first])
