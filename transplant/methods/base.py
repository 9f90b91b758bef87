"""The one interface every initialization method implements.

A method fills the embedding rows of tokens of the new vocabulary that have no exact match
in the base vocabulary. It sees everything through a :class:`Context` and returns float32
rows; the pipeline casts them to the base dtype and writes them. Methods do no I/O of
checkpoints: keeping the math pure makes each one testable on random matrices.

The matrices in the context keep the checkpoint's dtype (an 8B model's bfloat16 embeddings
are 2 GB; float32 copies beside them would double that): a method gathers the rows it needs
and casts those (:meth:`Context.rows`), never the whole matrix. A method whose rows can be
built for a part of the missing ids at a time (``chunkable``) is called on consecutive parts,
so its float32 working set stays small whatever the vocabulary (:mod:`transplant.matrices`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import torch

from transplant.io.trust import Trust
from transplant.progress import ProgressFactory, no_progress
from transplant.vocab.matching import VocabMatch

Which = Literal["input", "output"]
T = TypeVar("T")


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that takes none."""


@dataclass
class Context:
    """What a method may look at.

    ``base_input``/``base_output`` are the base model's matrices in their checkpoint dtype
    (``base_output`` is ``None`` when tied); :meth:`rows` gives rows of them in float32.
    Donor matrices, in their dtype too, are indexed by *new* token ids, because a donor is
    a model whose tokenizer is the new one; they are ``None`` without a donor. ``progress``
    gives long work an ``advance(n)`` callback (see :mod:`transplant.progress`).
    ``base_dir``/``donor_dir`` are the checkpoint directories the matrices came from, for a
    method that runs an external tool on the checkpoints themselves (``mergekit``), which
    may load from them only what ``trust`` allows.
    ``report`` is where a method says what it did (tokens placed, fallbacks, alignment
    counts); the pipeline writes it to ``transplant.json`` as ``method_report``.
    """

    match: VocabMatch
    base_input: torch.Tensor
    base_output: torch.Tensor | None
    options: Any = field(default_factory=NoOptions)
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    donor_input: torch.Tensor | None = None
    donor_output: torch.Tensor | None = None
    base_dir: Path | None = None
    donor_dir: Path | None = None
    trust: Trust = field(default_factory=Trust)
    cache: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFactory = no_progress
    report: dict[str, Any] = field(default_factory=dict)  # what the method did, for transplant.json
    planned: torch.Tensor | None = None  # every id a chunkable method will be asked for, part by part

    def base(self, which: Which) -> torch.Tensor:
        """The base matrix for ``which``; the input matrix stands in for a tied output."""
        if which == "output" and self.base_output is not None:
            return self.base_output
        return self.base_input

    def rows(self, which: Which, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the base matrix for ``which``, in float32 on ``device``: gather, then
        cast, so a bfloat16 matrix is never copied whole."""
        return self.base(which)[ids.to(self.base_input.device)].to(self.device, torch.float32)

    def donor(self, which: Which) -> torch.Tensor:
        """The donor matrix for ``which`` (tied donors share one matrix)."""
        if self.donor_input is None:
            raise ValueError("this method needs a donor model (--donor)")
        if which == "output" and self.donor_output is not None:
            return self.donor_output
        return self.donor_input

    def plan(self, key: str, missing: torch.Tensor, build: Callable[[], T]) -> T:
        """What a method works out once and applies to both matrices (neighbours, weights,
        alignments): built on the first call, reused while ``missing`` is the same."""
        cached = self.cache.get(key)
        if cached is None or not torch.equal(cached[0], missing):
            cached = self.cache[key] = (missing.clone(), build())
        return cached[1]

    def plan_rows(self, key: str, missing: torch.Tensor, build: Callable[[torch.Tensor], T]) -> tuple[T, torch.Tensor]:
        """For a plan worked out for many tokens together (an encoder run over their strings, a
        batched search, OMP's candidate pools) but applied row by row: the plan for all the ids
        the pipeline asks for part by part (``planned``, when ``missing`` is among them; else
        for ``missing``), built once by ``build(ids)``, and where ``missing``'s tokens are in it.
        A part then gets the rows it would have had in one call, bit for bit."""
        planned = self.planned
        whole = planned if planned is not None and bool(torch.isin(missing, planned).all()) else missing

        def build_with_positions() -> tuple[T, torch.Tensor]:
            positions = torch.full((int(whole.max()) + 1 if len(whole) else 0,), -1, dtype=torch.long)
            positions[whole] = torch.arange(len(whole))
            return build(whole), positions

        plan, positions = self.plan(key, whole, build_with_positions)
        return plan, positions[missing.cpu()]

    def generator(self, which: Which) -> torch.Generator:
        """A fresh generator per matrix, so results do not depend on call order."""
        digest = hashlib.sha256(f"{self.seed}:{which}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class Method(Protocol):
    """An initialization method: one class, one file, registered by name."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type]
    needs_donor: ClassVar[bool]
    uses_donor: ClassVar[bool]  # a donor is loaded when one is at hand, and the method runs without one
    # init_rows may be called on consecutive parts of the missing ids (each part for "input",
    # then for "output"), and gives each row the same bits as one call for all of them would.
    # Only a method whose rows are worked out token by token, or from a plan built for all
    # planned ids (Context.plan_rows), may say so; one random stream per matrix, or a plan of
    # the ids of the call (neighbours among the missing tokens themselves), may not.
    chunkable: ClassVar[bool]

    @classmethod
    def wants_donor(cls, options: Any) -> bool:
        """Whether to load a donor for these options (one that only ``uses_donor`` may skip it)."""
        ...

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        """Rows (len(missing), d_base) in float32 for the new ids in ``missing``."""
        ...


class MethodBase:
    """Defaults for the class attributes of :class:`Method`; subclass and override."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs_donor: ClassVar[bool] = False
    uses_donor: ClassVar[bool] = False
    chunkable: ClassVar[bool] = False

    @classmethod
    def wants_donor(cls, options: Any) -> bool:
        return cls.needs_donor or cls.uses_donor

