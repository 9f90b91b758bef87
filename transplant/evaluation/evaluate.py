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

A document longer than ``EvalConfig.piece_chars`` characters (a whole book on one line) is
scored on its own so that memory does not grow with its length: it is tokenized piece by
piece (cut before whitespace, see :func:`pieces`) and its windows are made a batch at a
time as the tokens arrive. Its tokens are its pieces' tokens one after another, which can
differ from the whole text's only where a cut falls; the windows run over them as over any
document's, so context carries across the cuts.

The numbers in the text (:func:`transplant.vocab.numbers.number_spans`: digit runs with the
space before them) are also scored on their own: the NLL of the tokens that write them, per
byte of them. That is the ``digits`` group, a subset across all groups, where a transplant
between tokenizers that split numbers differently shows its cost.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from transplant.inputs.corpus import Document, pieces
from transplant.errors import UserError
from transplant.io.trust import Trust
from transplant.vocab.numbers import marked_tokens, number_spans

LOGITS_BUDGET_BYTES = 1 << 30  # float32 logits of one forward pass stay under 1 GiB

# (windows just scored, windows known so far: the total grows while long documents are read)
Progress = Callable[[int, int], None]

# Characters between whitespace cuts: a paragraph or an article is never cut, and a piece's
# tokenizer output (ids, offsets, ... ~100 bytes a token) stays a few MB.
PIECE_CHARS = 100_000


@dataclass(frozen=True)
class EvalConfig:
    """How to batch and window; none of it changes the numbers beyond float noise, except
    ``piece_chars`` for a document longer than that (see the module docstring)."""

    batch_size: int = 8
    max_length: int = 1024  # window length in tokens, capped by the model's context
    # context tokens re-read by each next window; None = max_length // 2; 0 = chunks that
    # each start from the prefix token alone (see make_windows)
    overlap: int | None = None
    piece_chars: int = PIECE_CHARS  # a longer document is tokenized in pieces of at most this many characters


@dataclass
class Score:
    """Sums over documents; the figures are derived so that groups add up exactly."""

    nll: float = 0.0  # nats, summed over text tokens
    tokens: int = 0  # text tokens (BOS excluded)
    bytes: int = 0  # UTF-8 bytes of the text
    docs: int = 0
    # the same sums over the numbers in the text: the tokens that write them, their bytes, the
    # documents that have any (None where not measured, and inside itself)
    numbers: Score | None = None

    def add(self, other: Score) -> None:
        self.nll += other.nll
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.docs += other.docs
        if other.numbers is not None:
            self.numbers = self.numbers or Score()
            self.numbers.add(other.numbers)

    @classmethod
    def from_fields(cls, fields: dict) -> Score:
        """The inverse of ``dataclasses.asdict``, numbers included (a saved evaluation)."""
        numbers = fields.get("numbers")
        return cls(**{**fields, "numbers": None if numbers is None else cls(**numbers)})

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

    @property
    def digits(self) -> Score | None:
        """The numbers of every group together, or None when the text has none."""
        numbers = self.overall.numbers
        return numbers if numbers is not None and numbers.bytes and numbers.tokens else None

    def to_dict(self) -> dict:
        digits = self.digits
        return {
            "model": self.model,
            "overall": self.overall.to_dict(),
            "groups": {name: score.to_dict() for name, score in self.groups.items()},
            **({"digits": digits.to_dict()} if digits else {}),
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
    return list(iter_windows(doc, ids, max_length, overlap))


def iter_windows(doc: int, ids: Iterable[int], max_length: int, overlap: int) -> Iterator[Window]:
    """The windows of :func:`make_windows`, each made as soon as its tokens have arrived from
    ``ids`` (any iterable); only the tokens of the next window are held."""
    if max_length < 2 or not 0 <= overlap < max_length:
        raise UserError(f"need max_length >= 2 and 0 <= overlap < max_length, got {max_length} and {overlap}")
    stream = iter(ids)
    held = list(itertools.islice(stream, max_length))  # ids[offset:offset + len(held)]
    yield Window(doc, list(held), len(held) - 1)
    head = [] if overlap else held[:1]  # what a later window starts with before its slice of ids
    end = len(held)  # ids[:end] have been fed; targets up to end - 1 are scored
    offset = 0
    for token in stream:  # ids[end]: a target is left, so the window before was full
        start = end - overlap
        del held[: start - offset]
        offset = start
        held.append(token)
        held.extend(itertools.islice(stream, max_length - len(head) - len(held)))
        stop = offset + len(held)
        yield Window(doc, head + held, stop - end)
        end = stop


def score_windows(
    model, windows: Sequence[Window], pad_id: int, config: EvalConfig, progress: Progress | None = None
) -> list[float]:
    """Summed NLL (nats) of the scored targets of each window, in the order given."""
    return [float(nll.sum()) for nll in score_window_tokens(model, windows, pad_id, config, progress)]


@torch.no_grad()
def score_window_tokens(
    model, windows: Sequence[Window], pad_id: int, config: EvalConfig, progress: Progress | None = None
) -> list[torch.Tensor]:
    """NLL (nats, float64, on the CPU) of each scored target of each window, in the order given.

    Under no_grad, not inference_mode: a model sharded by FSDP gathers its weights into buffers
    it reuses when training resumes, and buffers made in inference mode refuse that."""
    vocab = model.get_output_embeddings().weight.shape[0]
    token_budget = max(LOGITS_BUDGET_BYTES // (4 * vocab), 1)
    order = sorted(range(len(windows)), key=lambda i: (len(windows[i].ids), i))
    nll: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * len(windows)
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


def _score_batch(model, batch: Sequence[Window], pad_id: int) -> list[torch.Tensor]:
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
    token_nll = F.cross_entropy(logits[target_mask].float(), targets, reduction="none").double().cpu()
    return list(token_nll.split([w.scored for w in batch]))  # the mask runs row by row


class _Tally:
    """Windows known so far, for a progress callback whose total grows as long documents are read."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.known = progress, 0

    def add(self, windows: int) -> Progress | None:
        """Count ``windows`` more; the callback to score them with."""
        self.known += windows
        if self.progress is None:
            return None
        return lambda done, _total: self.progress(done, self.known)


@dataclass(frozen=True)
class _Scoring:
    """What every document of one evaluation is scored with."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: EvalConfig
    max_length: int
    overlap: int
    prefix: int
    pad_id: int
    tally: _Tally


def score_documents(
    model, tokenizer, docs: Sequence[Document], config: EvalConfig = EvalConfig(), progress: Progress | None = None
) -> list[Score]:
    """One `Score` per document (NLL of its text tokens, token and byte counts). Documents up
    to ``config.piece_chars`` characters are scored together, longer ones one at a time (see
    the module docstring)."""
    if config.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.piece_chars < 1:
        raise UserError(f"piece_chars must be at least 1, got {config.piece_chars}")
    context = getattr(model.config, "max_position_embeddings", None) or config.max_length
    max_length = min(config.max_length, context)
    prefix = prefix_token_id(tokenizer)
    run = _Scoring(model, tokenizer, config, max_length, max_length // 2 if config.overlap is None else config.overlap,
                   prefix, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix, _Tally(progress))
    short = [i for i, d in enumerate(docs) if len(d.text) <= config.piece_chars]
    scores = _score_together(run, {i: docs[i].text for i in short})
    scores.update({i: _score_alone(run, d.text) for i, d in enumerate(docs) if i not in scores})
    return [scores[i] for i in range(len(docs))]


def _score_together(run: _Scoring, texts: dict[int, str]) -> dict[int, Score]:
    """Documents tokenized in one call, all their windows sorted by length into as few
    padded batches as possible."""
    if not texts:
        return {}
    encoded = run.tokenizer(list(texts.values()), add_special_tokens=False, return_offsets_mapping=True)
    scores, marks = {}, {}
    for (i, text), offsets in zip(texts.items(), encoded["offset_mapping"], strict=True):
        spans = number_spans(text)
        numbers = Score(bytes=_span_bytes(text, spans), docs=int(bool(spans)))
        scores[i] = Score(tokens=len(offsets), bytes=len(text.encode("utf-8")), docs=1, numbers=numbers)
        marks[i] = marked_tokens(offsets, spans)
    windows = [w for i, ids in zip(texts, encoded["input_ids"], strict=True)
               for w in make_windows(i, [run.prefix, *ids], run.max_length, run.overlap)]
    window_nll = score_window_tokens(run.model, windows, run.pad_id, run.config, run.tally.add(len(windows)))
    counted = dict.fromkeys(texts, 0)  # targets of each document counted so far: windows come in order
    for window, nll in zip(windows, window_nll, strict=True):
        done = counted[window.doc]
        _count(scores[window.doc], nll, marks[window.doc][done : done + len(nll)])
        counted[window.doc] = done + len(nll)
    return scores


def _score_alone(run: _Scoring, text: str) -> Score:
    """One long document: tokenized piece by piece, its windows made and scored a batch at a
    time, so only one piece's tokens and one batch of windows are held, whatever its length."""
    score = Score(docs=1, numbers=Score())
    marks: deque[bool] = deque()  # whether each token read but not yet scored writes a number

    def ids() -> Iterator[int]:
        yield run.prefix
        for piece in pieces(text, run.config.piece_chars):
            encoded = run.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            spans = number_spans(piece)
            marks.extend(marked_tokens(encoded["offset_mapping"], spans).tolist())
            score.tokens += len(encoded["input_ids"])
            score.bytes += len(piece.encode("utf-8"))
            score.numbers.bytes += _span_bytes(piece, spans)
            yield from encoded["input_ids"]

    windows = iter_windows(0, ids(), run.max_length, run.overlap)
    while batch := list(itertools.islice(windows, run.config.batch_size)):
        for nll in score_window_tokens(run.model, batch, run.pad_id, run.config, run.tally.add(len(batch))):
            _count(score, nll, torch.tensor([marks.popleft() for _ in range(len(nll))], dtype=torch.bool))
    score.numbers.docs = int(score.numbers.bytes > 0)
    return score


def _span_bytes(text: str, spans: Sequence[tuple[int, int]]) -> int:
    return sum(len(text[start:stop].encode("utf-8")) for start, stop in spans)


def _count(score: Score, nll: torch.Tensor, marked: torch.Tensor) -> None:
    """Add the NLL of scored targets to a document, and that of those that write numbers to its numbers."""
    score.nll += float(nll.sum())
    score.numbers.nll += float(nll[marked].sum())
    score.numbers.tokens += int(marked.sum())


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
    """Byte-level perplexity ratio new/base per group plus "overall", and "digits" when the
    text has numbers (on their bytes, see the module docstring); 1.0 is lossless."""
    if {g: s.bytes for g, s in new.groups.items()} != {g: s.bytes for g, s in base.groups.items()}:
        raise ValueError("evaluations were not computed on the same documents")
    ratios = {g: new.groups[g].byte_ppl / base.groups[g].byte_ppl for g in base.groups}
    ratios["overall"] = new.overall.byte_ppl / base.overall.byte_ppl
    if new.digits is not None and base.digits is not None:
        ratios["digits"] = new.digits.byte_ppl / base.digits.byte_ppl
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
