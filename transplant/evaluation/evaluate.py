"""Score a causal LM on a text corpus in bits per byte.

Models with different tokenizers cannot be compared per token: a tokenizer with longer
tokens has fewer, harder predictions. Per byte of UTF-8 text the figure is independent of
the tokenizer, so `byte_ppl(transplanted) / byte_ppl(base)` on the same documents says how
much a transplant lost (1.0 is lossless).

Each document is scored as ``[BOS] + tokens(text)`` (EOS stands in for a model without
BOS); every text token is predicted exactly once and BOS never is. A document longer than
the context is cut into windows that overlap: each window re-reads the tail of the previous
one as context but only scores its new tokens (with no overlap, each starts from the prefix
token instead, so no target is ever predicted from nothing). All windows of all documents
are sorted by length and run in padded batches whose logits stay within a memory budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from transplant.inputs.corpus import Document
from transplant.errors import UserError
from transplant.io.trust import Trust

LOGITS_BUDGET_BYTES = 1 << 30  # float32 logits of one forward pass stay under 1 GiB

Progress = Callable[[int, int], None]  # (windows just scored, total windows)


@dataclass(frozen=True)
class EvalConfig:
    """How to batch and window; none of it changes the numbers beyond float noise."""

    batch_size: int = 8
    max_length: int = 1024  # window length in tokens, capped by the model's context
    # context tokens re-read by each next window; None = max_length // 2; 0 = chunks that
    # each start from the prefix token alone (see make_windows)
    overlap: int | None = None


@dataclass
class Score:
    """Sums over documents; the figures are derived so that groups add up exactly."""

    nll: float = 0.0  # nats, summed over text tokens
    tokens: int = 0  # text tokens (BOS excluded)
    bytes: int = 0  # UTF-8 bytes of the text
    docs: int = 0

    def add(self, other: Score) -> None:
        self.nll += other.nll
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.docs += other.docs

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)

    @property
    def byte_ppl(self) -> float:
        return 2.0**self.bits_per_byte

    @property
    def token_ppl(self) -> float:
        """Per-token perplexity under the model's own tokenizer (not comparable across tokenizers)."""
        return math.exp(self.nll / self.tokens)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens

    def to_dict(self) -> dict[str, float | int]:
        return {
            "bits_per_byte": self.bits_per_byte,
            "byte_ppl": self.byte_ppl,
            "token_ppl_own_tokenizer": self.token_ppl,
            "bytes_per_token": self.bytes_per_token,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "docs": self.docs,
            "nll_nats": self.nll,
        }


@dataclass
class Evaluation:
    """Per-group and overall scores of one model on one list of documents."""

    model: str
    groups: dict[str, Score]

    @property
    def overall(self) -> Score:
        total = Score()
        for score in self.groups.values():
            total.add(score)
        return total

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "overall": self.overall.to_dict(),
            "groups": {name: score.to_dict() for name, score in self.groups.items()},
        }


def prefix_token_id(tokenizer) -> int:
    """The token every document is conditioned on: BOS, or EOS for models trained without BOS."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise UserError("tokenizer has neither a BOS nor an EOS token to start documents with")
    return token_id


@dataclass(frozen=True)
class Window:
    doc: int  # index of the document
    ids: list[int]  # tokens fed to the model
    scored: int  # the last `scored` next-token targets of `ids` are counted


def make_windows(doc: int, ids: Sequence[int], max_length: int, overlap: int) -> list[Window]:
    """Cover targets ids[1:] exactly once with windows of at most `max_length` tokens.

    The first window scores all its targets; each later one starts `overlap` tokens before
    the end of the previous window and scores only the targets after that end. With
    `overlap` 0 a later window would have no token to predict its first target from, so it
    starts with the document's prefix token ids[0] instead: the text is then cut into chunks
    of max_length - 1 tokens, each scored as if it were a document of its own.
    """
    if max_length < 2 or not 0 <= overlap < max_length:
        raise UserError(f"need max_length >= 2 and 0 <= overlap < max_length, got {max_length} and {overlap}")
    windows = [Window(doc, list(ids[:max_length]), min(len(ids), max_length) - 1)]
    head = [] if overlap else [ids[0]]  # what a later window starts with before its slice of ids
    end = min(len(ids), max_length)  # ids[:end] have been fed; targets up to end - 1 are scored
    while end < len(ids):
        start = end - overlap
        stop = min(start + max_length - len(head), len(ids))
        windows.append(Window(doc, head + list(ids[start:stop]), stop - end))
        end = stop
    return windows


@torch.inference_mode()
def score_windows(
    model, windows: Sequence[Window], pad_id: int, config: EvalConfig, progress: Progress | None = None
) -> list[float]:
    """Summed NLL (nats) of the scored targets of each window, in the order given."""
    vocab = model.get_output_embeddings().weight.shape[0]
    token_budget = max(LOGITS_BUDGET_BYTES // (4 * vocab), 1)
    order = sorted(range(len(windows)), key=lambda i: (len(windows[i].ids), i))
    nll = [0.0] * len(windows)
    start = 0
    while start < len(order):
        stop = start + 1
        # ascending lengths: the window added last sets the padded width of the batch
        while (
            stop < len(order)
            and stop - start < config.batch_size
            and (stop - start + 1) * len(windows[order[stop]].ids) <= token_budget
        ):
            stop += 1
        batch = [windows[i] for i in order[start:stop]]
        for i, value in zip(order[start:stop], _score_batch(model, batch, pad_id), strict=True):
            nll[i] = value
        if progress is not None:
            progress(stop - start, len(windows))
        start = stop
    return nll


def _score_batch(model, batch: Sequence[Window], pad_id: int) -> list[float]:
    """One right-padded forward pass; causal attention keeps the padding out of real positions."""
    device = model.device
    width = max(len(w.ids) for w in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    target_mask = torch.zeros((len(batch), width - 1), dtype=torch.bool)
    for row, window in enumerate(batch):
        n = len(window.ids)
        input_ids[row, :n] = torch.tensor(window.ids)
        attention_mask[row, :n] = 1
        target_mask[row, n - 1 - window.scored : n - 1] = True
    input_ids, attention_mask, target_mask = input_ids.to(device), attention_mask.to(device), target_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:][target_mask]
    token_nll = F.cross_entropy(logits[target_mask].float(), targets, reduction="none").double()
    rows = torch.arange(len(batch), device=device).unsqueeze(1).expand_as(target_mask)[target_mask]
    per_row = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, token_nll)
    return per_row.tolist()


def score_documents(
    model, tokenizer, docs: Sequence[Document], config: EvalConfig = EvalConfig(), progress: Progress | None = None
) -> list[Score]:
    """One `Score` per document (NLL of its text tokens, token and byte counts)."""
    if config.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {config.batch_size}")
    context = getattr(model.config, "max_position_embeddings", None) or config.max_length
    max_length = min(config.max_length, context)
    overlap = max_length // 2 if config.overlap is None else config.overlap
    prefix = prefix_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    windows = [w for i, ids in enumerate(encoded) for w in make_windows(i, [prefix, *ids], max_length, overlap)]
    window_nll = score_windows(model, windows, pad_id, config, progress)
    scores = [Score(tokens=len(ids), bytes=len(d.text.encode("utf-8")), docs=1) for d, ids in zip(docs, encoded)]
    for window, value in zip(windows, window_nll, strict=True):
        scores[window.doc].nll += value
    return scores


def evaluate_model(
    model,
    tokenizer,
    docs: Sequence[Document],
    name: str = "model",
    config: EvalConfig = EvalConfig(),
    progress: Progress | None = None,
) -> Evaluation:
    """Per-group scores of `model` on `docs`, groups in order of first appearance."""
    groups: dict[str, Score] = {}
    for number, (doc, score) in enumerate(zip(docs, score_documents(model, tokenizer, docs, config, progress),
                                              strict=True), 1):
        if not math.isfinite(score.nll):
            raise UserError(f"{name}: the loss is not finite on document {number} (NaN or infinite weights?)")
        groups.setdefault(doc.group, Score()).add(score)
    return Evaluation(name, groups)


def ppl_ratio(new: Evaluation, base: Evaluation) -> dict[str, float]:
    """Byte-level perplexity ratio new/base per group plus "overall"; 1.0 is lossless."""
    if {g: s.bytes for g, s in new.groups.items()} != {g: s.bytes for g, s in base.groups.items()}:
        raise ValueError("evaluations were not computed on the same documents")
    ratios = {g: new.groups[g].byte_ppl / base.groups[g].byte_ppl for g in base.groups}
    ratios["overall"] = new.overall.byte_ppl / base.overall.byte_ppl
    return ratios


def open_model(ref: str, trust: Trust = Trust()) -> tuple[Path, PreTrainedTokenizerBase]:
    """The directory and tokenizer of a model reference (HF dir, .gguf, hub id, packaged
    name), checked without loading the weights: its files (see
    :func:`transplant.io.sources.resolve_model`) and that every token id has a row. So a
    caller scoring two models can refuse either before scoring the first."""
    from transplant.io.checkpoint import model_config
    from transplant.io.sources import resolve_model
    from transplant.io.tokenizer import check_fits, load_tokenizer

    path = resolve_model(ref, trust)
    tokenizer = load_tokenizer(str(path), trust)
    check_fits(tokenizer, model_config(path, trust).get_text_config().vocab_size, ref)
    return path, tokenizer


def load_weights(path: Path, device: str = "cpu", trust: Trust = Trust()) -> PreTrainedModel:
    """The model in an opened directory (see :func:`open_model`): float32, eval mode, on
    ``device`` (scoring runs where the model is); code and pickle only as ``trust`` allows."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **trust.model_kwargs()).to(device).eval()


def load_model(ref: str, device: str = "cpu", trust: Trust = Trust()) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a model reference: :func:`open_model`, then :func:`load_weights`."""
    path, tokenizer = open_model(ref, trust)
    return load_weights(path, device, trust), tokenizer
