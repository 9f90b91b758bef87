"""Self-distillation from the base model across tokenizers: what the trainers call.

The maths (chunks, chunk likelihoods, the binarised divergence) is
:mod:`transplant.training.alm`; this module is the glue around it. One batch of *text* is
tokenized twice with byte offsets: by the student's tokenizer (the new one), truncated to
the sequence length, and by the teacher's (the base's) over exactly the text the student
kept. The frozen base reads its own tokens; the student (a transplanted model, or the base
reading hypernetwork rows) reads the new ones; :func:`alm_against` makes the student
give every shared stretch of text the likelihood the teacher gives it.

The teacher is the model we started from, so it is free: one extra forward pass, no
gradient, in bf16 where CUDA has it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ContextManager, Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from transplant.errors import UserError
from transplant.evaluation.evaluate import load_model, prefix_token_id
from transplant.io.trust import Trust
from transplant.training.alm import (
    DEFAULT_MERGE_THRESHOLD, DEFAULT_TEMPERATURE, ALMOutput, ChunkAlignment, TeacherChunks, align_chunks, alm_against,
    boundary_token_mask, char_to_byte_offsets, next_token_logprobs, teacher_chunks,
)
from transplant.training.loop import TrainConfig
from transplant.vocab.surface import Vocabulary, vocabulary

# list of texts -> per text (token ids, (start, end) character offsets), no special tokens
Encoder = Callable[[list[str]], list[tuple[list[int], list[tuple[int, int]]]]]


def hf_encoder(tokenizer) -> Encoder:
    """An :data:`Encoder` over a Hugging Face fast tokenizer (offsets need a fast one)."""

    def encode(texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(batch["input_ids"], batch["offset_mapping"]))

    return encode


def tokenizers_encoder(tokenizer) -> Encoder:
    """An :data:`Encoder` over a raw ``tokenizers.Tokenizer`` (the hypernetwork's sampled ones)."""

    def encode(texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        return [(e.ids, e.offsets) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    return encode


def boundary_tokens(vocab: Vocabulary, rows: int) -> torch.Tensor:
    """(rows,) bool: tokens that start a new word (their text begins with whitespace) or are
    special. ALM's debiasing scores "this text, then a word boundary" on both sides, because a
    boundary before whitespace is one every pre-tokenizer agrees on. Rows past the
    tokenizer's vocabulary (padding) are never boundaries."""
    texts = [surface.decode("utf-8", errors="replace") for surface in vocab.surfaces]
    special = [i for i, is_special in enumerate(vocab.special) if is_special]
    return F.pad(boundary_token_mask(texts, special), (0, rows - len(texts)), value=False)


@dataclass
class Side:
    """One tokenization of a batch: ``[prefix] + tokens``, right-padded.

    ``offsets`` holds each token's UTF-8 byte (start, end) in its text ((0, 0) for the
    prefix and padding, which cover no text)."""

    ids: torch.Tensor  # (B, T) long
    attention: torch.Tensor  # (B, T) long, 1 for prefix and tokens
    offsets: torch.Tensor  # (B, T, 2) long

    @property
    def targets(self) -> torch.Tensor:
        """targets[:, t] = the token position t predicts (ids shifted left; the last is padding)."""
        return F.pad(self.ids[:, 1:], (0, 1), value=0)

    @property
    def predicts(self) -> torch.Tensor:
        """(B, T) bool: positions followed by a token (not padding, not a row's last token)."""
        return F.pad(self.attention[:, 1:], (0, 1), value=0).bool()

    @property
    def labels(self) -> torch.Tensor:
        """``targets`` with -100 where nothing is predicted (padding and the last position)."""
        return self.targets.masked_fill(~self.predicts, -100)

    def to(self, device: torch.device | str) -> Side:
        return Side(self.ids.to(device), self.attention.to(device), self.offsets.to(device))


def encode_side(texts: Sequence[str], encoder: Encoder, prefix: int, pad: int, max_tokens: int) -> tuple[Side, list[str]]:
    """The batch under one tokenizer (at most ``max_tokens`` text tokens each) and each text
    cut to what its kept tokens cover, so that a second tokenizer reads exactly that text."""
    rows, kept = [], []
    for text, (ids, offsets) in zip(texts, encoder(list(texts))):
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
        covered = max((end for _, end in offsets), default=0)
        rows.append(([prefix, *ids], [(0, 0), *char_to_byte_offsets(text, offsets).tolist()]))
        kept.append(text[:covered])
    width = max(len(ids) for ids, _ in rows)
    side = Side(torch.full((len(rows), width), pad, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long),
                torch.zeros(len(rows), width, 2, dtype=torch.long))
    for row, (ids, offsets) in enumerate(rows):
        side.ids[row, : len(ids)] = torch.tensor(ids)
        side.attention[row, : len(ids)] = 1
        side.offsets[row, : len(offsets)] = torch.tensor(offsets).reshape(-1, 2)
    return side, kept


@dataclass
class Pair:
    """One batch of text as the student and the teacher read it, and their shared chunks."""

    student: Side
    teacher: Side
    alignment: ChunkAlignment


@dataclass
class Reader:
    """How one model reads text: its tokenizer (as an :data:`Encoder`), the token every
    document starts from, its padding id and its word-boundary tokens."""

    encode: Encoder
    prefix: int
    pad: int
    boundary: torch.Tensor | None  # (rows,) bool; None: no debiasing


def hf_reader(tokenizer, rows: int) -> Reader:
    """How a model with a Hugging Face tokenizer and ``rows`` embedding rows reads text:
    documents start from its BOS (or EOS), padding is its pad token (or that prefix)."""
    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    return Reader(hf_encoder(tokenizer), prefix, pad, boundary_tokens(vocabulary(tokenizer), rows))


def read_pair(texts: Sequence[str], student: Reader, teacher: Reader, seq_len: int, teacher_len: int,
              student_reads_last: bool = True) -> Pair:
    """Tokenize ``texts`` for both models and align their chunks. The student keeps
    ``seq_len - 1`` tokens after its prefix; the teacher reads the text those cover
    (up to ``teacher_len - 1`` tokens: chunks past a shorter side are simply not compared).

    A student that only predicts its last token, never reads it (the hypernetwork's LM),
    has no distribution after it, which debiasing needs: ``student_reads_last=False`` leaves
    the chunk holding each row's last token out."""
    student_side, covered = encode_side(texts, student.encode, student.prefix, student.pad, seq_len - 1)
    teacher_side, _ = encode_side(covered, teacher.encode, teacher.prefix, teacher.pad, teacher_len - 1)
    compared = student_side.attention.bool()
    if not student_reads_last:
        compared &= student_side.predicts
    alignment = align_chunks(teacher_side.offsets, student_side.offsets, teacher_side.attention.bool(), compared)
    return Pair(student_side, teacher_side, alignment)


@dataclass
class AlmConfig:
    """ALM's knobs (METHODS.md): the binarisation temperature and the debiasing of chunk
    ends (tokenkit's ``merge_by_space_prob`` with its threshold, and ``append_space``)."""

    temperature: float = DEFAULT_TEMPERATURE
    debias: bool = True
    merge_threshold: float = DEFAULT_MERGE_THRESHOLD


@dataclass
class ObjectiveConfig(TrainConfig):
    """A trainer's objective, shared by ``transplant train`` and ``transplant hypernet train``:
    the LM loss (``lm``), or ALM self-distillation from the frozen base (``alm``) with its knobs."""

    objective: Literal["lm", "alm"] = "lm"
    # alm: loss = alm_weight x ALM + lm_weight x LM. ALM's binarised divergence at temperature
    # 100 has ~200x smaller gradients than the LM loss (SmolLM2 -> German 16k: embedding RMS
    # 8e-6 vs 1.5e-3): at 1:1 the LM loss alone would steer, and Adam's eps 1e-3 would
    # swallow a pure ALM gradient. A weight of the temperature puts the two on one scale.
    alm_weight: float = 100.0
    lm_weight: float = 1.0
    alm_temperature: float = DEFAULT_TEMPERATURE  # ALM's binarisation temperature
    alm_debias: bool = True  # ALM: score chunks "then a word boundary", merged by the base's boundary probability
    teacher_len: int = 0  # alm: teacher tokens per example (0 = 2 x seq_len); chunks past it are not compared

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.alm_weight >= 0 and self.lm_weight >= 0 and self.alm_temperature > 0 and self.teacher_len >= 0):
            raise UserError(f"need alm_weight >= 0, lm_weight >= 0, alm_temperature > 0 and teacher_len >= 0, got "
                            f"{self.alm_weight}, {self.lm_weight}, {self.alm_temperature} and {self.teacher_len}")

    @property
    def alm(self) -> AlmConfig:
        return AlmConfig(self.alm_temperature, self.alm_debias)

    @property
    def teacher_tokens(self) -> int:
        """Tokens the teacher reads per example, its prefix included."""
        return self.teacher_len or 2 * self.seq_len


@dataclass
class DistillOutput:
    """ALM against the teacher, and the LM loss on the same tokens."""

    alm: ALMOutput
    lm: torch.Tensor  # scalar: the mean NLL of every predicted token


def distill_loss(student_logits: torch.Tensor, teacher: TeacherChunks, pair: Pair, student: Reader,
                 cfg: AlmConfig) -> DistillOutput:
    """ALM between the student's logits on ``pair.student`` and the teacher's chunks, and the LM
    loss from the same log-probs: one softmax over the vocabulary serves both."""
    device = student_logits.device
    boundary = student.boundary if teacher.debiased else None
    logp = next_token_logprobs(student_logits, pair.student.targets.to(device), boundary)
    alm = alm_against(logp.token, teacher, temperature=cfg.temperature, student_boundary_logp=logp.boundary)
    return DistillOutput(alm, -logp.token[pair.student.predicts.to(device)].mean())


@dataclass
class Teacher:
    """The frozen base as the teacher: its model (inference only), how it reads text, and
    the ALM settings every step uses; its tokenizer, when it has one of its own, so that the
    trainer can score the base with it instead of loading the base a second time."""

    model: torch.nn.Module
    reader: Reader
    config: AlmConfig
    tokenizer: PreTrainedTokenizerBase | None = None

    @torch.no_grad()
    def chunks(self, pair: Pair, student_debiases: bool, device: torch.device,
               autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> TeacherChunks:
        """The teacher's pass over ``pair.teacher`` and its chunk likelihoods, debiased when
        the settings ask for it and both sides know their word-boundary tokens."""
        with autocast():
            logits = self.model(input_ids=pair.teacher.ids.to(device), attention_mask=pair.teacher.attention.to(device)).logits
        debias = self.config.debias and student_debiases and self.reader.boundary is not None
        return teacher_chunks(logits, pair.teacher.targets.to(device), pair.alignment,
                              teacher_boundary_tokens=self.reader.boundary if debias else None,
                              merge_threshold=self.config.merge_threshold)


def load_teacher(base: str, config: AlmConfig, trust: Trust = Trust()) -> Teacher:
    """The base model recorded in ``transplant.json``, frozen, with its own tokenizer."""
    model, tokenizer = load_model(base, trust=trust)
    model.requires_grad_(False)
    return Teacher(model, hf_reader(tokenizer, model.get_output_embeddings().weight.shape[0]), config, tokenizer)
