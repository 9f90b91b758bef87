"""ALM: self-distillation across tokenizers by approximate likelihood matching.

Minixhofer, Vulić & Ponti 2025, "Universal Cross-Tokenizer Distillation via Approximate
Likelihood Matching" (arXiv 2503.20083); reference implementation tokenkit (JAX,
its training losses and alignment code), read, not copied.

Pure tensor code: no I/O, no models, no tokenizers. The trainer tokenizes one text twice
(teacher = base tokenizer, student = new tokenizer), runs both models, and calls
`alm_distill_loss` — or `alm_distill_loss_from_logprobs` when the student has no full
logits, only token log-probs estimated by a sampled softmax (the hypernetwork trainer).

The idea
--------
Teacher and student cut the same bytes into different tokens, so their next-token
distributions live in different spaces and cannot be compared token by token. But where
both tokenizations have a boundary at the same byte, the two models assign a probability
to the *same text span*. A **chunk** is a shortest span whose start and end are token
boundaries in both tokenizations:

    text      a b c d e f
    teacher   ab|cd|ef        boundaries after bytes {2, 4, 6}
    student   a|bcd|ef        boundaries after bytes {1, 4, 6}
    chunks    abcd|ef         common boundaries      {4, 6}

A chunk's log-likelihood under a model is the sum of the log-probabilities of its tokens,
each given everything before it (chain rule):

    log p(chunk k) = sum_{t in chunk k} log p(x_t | x_<t)

Chunk probabilities are tiny for long chunks, so the loss compares them after a
temperature τ (binarisation): q = p^(1/τ) = exp(log p / τ) lies in (0, 1] and is read as
the parameter of a Bernoulli — "the chunk happens" vs "it does not". The per-chunk loss is
the binary KL divergence from the teacher's Bernoulli to the student's:

    a = log p_T(chunk)/τ - ε,   b = log p_S(chunk)/τ - ε          (log q, ε = 1e-6)
    ℓ = e^a (a - b) + (1 - e^a) (log(1 - e^a) - log(1 - e^b))
    L = mean of ℓ over valid chunks of the batch

with log(1 - e^x) evaluated stably (`log1mexp`). ℓ ≥ 0, and ℓ = 0 iff p_S = p_T, so for a
chunk that is one token on both sides the loss only asks the student to give that token
the teacher's probability.

Defaults and what was checked against tokenkit
----------------------------------------------
- τ = 100 (`binarization_temp: float = 100.0`), ε = 1e-6 subtracted from log q after
  dividing by τ (keeps q < 1 so log(1 - q) is finite), chunk log-probs clipped at 0.
- tokenkit's default distance is `binary_ce(log_y_true=teacher, log_y_pred=student)`,
  the binary *cross-entropy* -[q_T log q_S + (1-q_T) log(1-q_S)]. ADOPTED AS binary KL:
  KL = CE - H(q_T), and H(q_T) does not depend on the student, so the gradients are
  identical; KL is exactly 0 at the optimum, which makes "loss at its minimum" testable
  and the logged number readable. Add the teacher's binary entropy to recover tokenkit's
  value.
- Normalisation: tokenkit's defaults (`distill_main_path_numerator/denominator =
  "chunk_count"`) give sum(ℓ · valid) / count(valid) over the batch, i.e. the mean over
  valid chunks of the whole batch (not per sequence). Adopted. (Under gradient
  accumulation tokenkit divides by the global batch's chunk count; here by the micro
  batch's.)
- Teacher side detached (no gradient), computed under `torch.no_grad`.
- Debiasing, tokenkit's default `alm_mode = "merge_by_space_prob+append_space"`,
  `tokenizer_pair_bias_threshold = 0.1`, `space_mask_mode = "space+tab+newline+special"`:
  ADOPTED, opt-in (pass the two boundary-token masks). Why it exists: the probability of
  a token sequence is not quite the probability of its text, because it also says where
  the *next* token starts — the teacher's p("ab","cd") includes "a token boundary follows
  d", which the student's p("a","bcd") may not mean the same way (tokenization bias).
  Common pre-tokenizers split before whitespace, so no token runs from a word into the
  whitespace after it: "the next token starts with whitespace (or is special)" marks a
  boundary that every such tokenizer has. Hence:
    * append_space: each chunk's log-prob gets + log P(next token starts with whitespace
      or is special | text through the chunk), from each model's own distribution at the
      chunk's last token — both models then score "chunk, then a word boundary".
    * merge_by_space_prob: consecutive chunks are merged until the teacher's probability
      of such a boundary after the chunk exceeds the threshold (0.1), so that the
      appended term is a likely event rather than a tiny number that dominates the
      comparison. Grouping is decided by the teacher only (as in tokenkit) and is not
      differentiated.
  With no masks passed, this is the "naive" ALM of tokenkit's own PyTorch walkthrough
  (shortest chunks, no debiasing). (tokenkit's hypernetwork trainer defaults to
  append_space alone: pass `merge_threshold=None`.)
- Chunks are ALIGNED FROM BYTE OFFSETS, not from token strings as tokenkit does (it
  normalises Ġ/▁ markers per model family and cumulates string lengths). Offsets come
  from any fast tokenizer and make the result independent of how a vocabulary spells
  its word-start marker.

Skipped, with reasons
---------------------
- tokenkit's special-token replacement table (pairing e.g. <|im_start|> with
  <start_of_turn>): model-family specific; here any chunk that holds a masked or special
  token on either side is dropped instead (a chat marker is then never distilled, the
  ordinary LM loss still trains it).
- `alm_unbiased` chunks (needs precomputed tokenizer-pair bias matrices), `alm_latents`
  (hidden-state loss), `distill_chunk_sizes` (deprecated upstream, always [1]),
  `eos_as_space` (a byte-level-student variant), GradMag loss balancing (the trainer
  mixes ALM with the LM loss 1:1, per METHODS.md): out of scope for this module.
- Masked tokens: tokenkit zeroes a loss-masked token's log-prob but keeps its chunk; here
  the whole chunk is dropped — a chunk whose log-prob is missing a term on one side is
  not comparable.

Alignment rules (one sequence, each side)
-----------------------------------------
Input: each token's UTF-8 byte (start, end) offsets in the text. A token is taken to
cover the bytes from the previous token's end to its own end, so only ends place
tokens; starts only veto boundaries. Why: HF's `trim_offsets` moves a start past the
leading space (the space then belongs to no token's span), and character offsets cannot
split a character, so the byte pieces of one multibyte character all report that
character's whole span — byte-level BPE even merges "Ġna" with the first byte of "ï",
reporting the span " naï" for a token that really ends inside "ï".
- A token "is in the text" if its end moves past every earlier end, or repeats the
  previous end (> 0) as pieces of one character do. Tokens whose end goes backwards or
  is 0 (BOS, post-processor specials, padding: HF gives them (0, 0)) are out of the
  text: context, never part of a chunk.
- The end of an in-text token is a boundary of its side unless the next in-text token
  starts before it (it begins inside the same character: the boundary would fall
  mid-character). Chunks end at the boundaries common to both sides; tokens past the
  last common boundary (one side truncated earlier) belong to no chunk.
- A chunk is dropped if on either side it holds a masked token (`mask` False: special,
  loss-masked), if an out-of-text token sits strictly inside it, or if it holds the
  token at position 0 (a causal LM never predicts its first position, so that chunk's
  log-prob would miss a term). Kept chunks are renumbered 0..n-1 per sequence.
- Batches are assumed right-padded: token t's log-prob is read from position t-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_TEMPERATURE = 100.0  # tokenkit `binarization_temp`
DEFAULT_MERGE_THRESHOLD = 0.1  # tokenkit `tokenizer_pair_bias_threshold` (merge_by_space_prob)
EPSILON = 1e-6  # tokenkit: subtracted from log q so that q < 1


# ----------------------------------------------------------------------------------------
# 1. Chunk alignment (CPU, from byte offsets)


def char_to_byte_offsets(text: str, char_offsets: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """UTF-8 byte (start, end) of each token, from (start, end) offsets in characters.

    HF fast tokenizers (and `tokenizers.Encoding.offsets` from Python) count characters;
    two tokenizations of "Grüße" only line up in bytes, where byte-level tokens live.
    Returns int64 (T, 2). Offsets (0, 0) of special/padding tokens stay (0, 0).
    """
    offsets = np.asarray(char_offsets, dtype=np.int64).reshape(-1, 2)
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    utf8_len = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    byte_at_char = np.concatenate([[0], np.cumsum(utf8_len, dtype=np.int64)])
    return byte_at_char[offsets]


@dataclass
class ChunkAlignment:
    """Token -> chunk maps for a padded batch, the same chunk numbering on both sides.

    teacher_chunk_ids: (B, T_teacher) long, chunk of each teacher input token, -1 if none.
    student_chunk_ids: (B, T_student) long, likewise for the student.
    num_chunks:        (B,) long, chunks kept per sequence (ids are 0..num_chunks-1).
    """

    teacher_chunk_ids: torch.Tensor
    student_chunk_ids: torch.Tensor
    num_chunks: torch.Tensor

    @property
    def max_chunks(self) -> int:
        return int(self.num_chunks.max()) if self.num_chunks.numel() else 0

    def chunk_mask(self) -> torch.Tensor:
        """(B, max_chunks) bool: which chunk slots hold a real chunk."""
        slots = torch.arange(self.max_chunks, device=self.num_chunks.device)
        return slots[None, :] < self.num_chunks[:, None]

    def to(self, device: torch.device | str) -> "ChunkAlignment":
        return ChunkAlignment(self.teacher_chunk_ids.to(device), self.student_chunk_ids.to(device),
                              self.num_chunks.to(device))


def _boundaries(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One side: which tokens are in the text, and the byte positions where it has a
    token boundary (rules in the module docstring)."""
    max_before = np.maximum.accumulate(np.concatenate([[0], ends[:-1]]))
    in_text = (ends > max_before) | ((ends == max_before) & (ends > 0))
    n = len(ends)
    positions = np.where(in_text, np.arange(n), n)
    next_in_text = np.concatenate([np.minimum.accumulate(positions[::-1])[::-1][1:], [n]])
    next_start = np.where(next_in_text < n, starts[np.minimum(next_in_text, n - 1)], np.iinfo(np.int64).max)
    return in_text, ends[in_text & (next_start >= ends)]


def _bad_chunks(in_text: np.ndarray, raw: np.ndarray, mask: np.ndarray, n_raw: int) -> np.ndarray:
    """Raw chunks that one side disqualifies: masked member, position 0, split by an
    out-of-text token. raw[t] is token t's raw chunk (meaningful where in_text)."""
    bad = np.zeros(n_raw, dtype=bool)
    bad[raw[in_text & ~mask]] = True
    if in_text[0]:
        bad[raw[0]] = True
    # an out-of-text token strictly inside a chunk: in-text neighbours in the same chunk
    positions = np.arange(len(raw))
    prev = np.maximum.accumulate(np.where(in_text, positions, -1))
    nxt = np.minimum.accumulate(np.where(in_text, positions, len(raw))[::-1])[::-1]
    has_both = ~in_text & (prev >= 0) & (nxt < len(raw))
    prev_chunk = raw[np.clip(prev, 0, len(raw) - 1)]
    next_chunk = raw[np.clip(nxt, 0, len(raw) - 1)]
    bad[prev_chunk[has_both & (prev_chunk == next_chunk)]] = True
    return bad


def _align_one(teacher_offsets: np.ndarray, teacher_mask: np.ndarray, student_offsets: np.ndarray,
               student_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    t_ends, s_ends = teacher_offsets[:, 1], student_offsets[:, 1]
    t_in, t_cuts = _boundaries(teacher_offsets[:, 0], t_ends)
    s_in, s_cuts = _boundaries(student_offsets[:, 0], s_ends)
    cuts = np.intersect1d(t_cuts, s_cuts)  # sorted common boundaries
    n_raw = len(cuts) + 1  # the last raw chunk is the open tail past the last common cut
    t_raw = np.searchsorted(cuts, t_ends, side="left")  # first common cut at/after the end
    s_raw = np.searchsorted(cuts, s_ends, side="left")
    bad = _bad_chunks(t_in, t_raw, teacher_mask, n_raw) | _bad_chunks(s_in, s_raw, student_mask, n_raw)
    bad[-1] = True
    keep = ~bad
    new_id = np.cumsum(keep) - 1
    t_ids = np.where(t_in & keep[t_raw], new_id[t_raw], -1)
    s_ids = np.where(s_in & keep[s_raw], new_id[s_raw], -1)
    return t_ids, s_ids, int(keep.sum())


def _as_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def align_chunks(teacher_offsets, student_offsets, teacher_mask=None, student_mask=None) -> ChunkAlignment:
    """Chunks of a padded batch from the byte offsets of both tokenizations.

    teacher_offsets: (B, T_teacher, 2) UTF-8 byte (start, end) of each teacher input
        token (`char_to_byte_offsets`); padding positions may hold (0, 0).
    student_offsets: (B, T_student, 2) likewise for the student.
    teacher_mask / student_mask: (B, T) bool, True where a token may be distilled —
        attention mask & not special & not loss-masked. None: all True.

    The per-sequence loop runs on CPU offsets; each sequence is vectorised (numpy
    accumulate/intersect/searchsorted, no loop over tokens).
    """
    t_off = _as_numpy(teacher_offsets, np.int64)
    s_off = _as_numpy(student_offsets, np.int64)
    if t_off.ndim != 3 or s_off.ndim != 3 or t_off.shape[-1] != 2 or s_off.shape[-1] != 2 \
            or len(t_off) != len(s_off):
        raise ValueError(f"expected (B, T, 2) offsets on both sides, got {t_off.shape} and {s_off.shape}")
    t_mask = np.ones(t_off.shape[:2], bool) if teacher_mask is None else _as_numpy(teacher_mask, bool)
    s_mask = np.ones(s_off.shape[:2], bool) if student_mask is None else _as_numpy(student_mask, bool)

    t_ids = np.full(t_off.shape[:2], -1, dtype=np.int64)
    s_ids = np.full(s_off.shape[:2], -1, dtype=np.int64)
    counts = np.zeros(len(t_off), dtype=np.int64)
    for b in range(len(t_off)):
        t_ids[b], s_ids[b], counts[b] = _align_one(t_off[b], t_mask[b], s_off[b], s_mask[b])
    return ChunkAlignment(torch.from_numpy(t_ids), torch.from_numpy(s_ids), torch.from_numpy(counts))


# ----------------------------------------------------------------------------------------
# 2. Chunk log-likelihoods (differentiable, on the models' device)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass
class NextTokenLogprobs:
    """What ALM reads from a model's logits at each position, in float32 (float64 logits: float64)."""

    token: torch.Tensor  # (...,) log p(target | position)
    boundary: torch.Tensor | None  # (...,) log P(next token is a boundary token | position); None: not asked


class _NextTokenLogprobs(torch.autograd.Function):
    """Both log-probs from one logsumexp, and a backward that writes the logits' gradient in
    a few passes over (..., V).

    Autograd's own backward of ``gather - logsumexp`` plus a second, masked logsumexp
    builds a (..., V) tensor per term and adds them up: on a 262k vocabulary that was over
    half of a training step on the CPU. Every term's gradient is the softmax p times a scalar
    per position, plus the one-hot of the target:

        d token    / d logits = onehot(target) - p
        d boundary / d logits = p * m / P(boundary) - p          (m: the boundary-token mask)

    so the backward is one softmax, scaled per position (and per column through m), and a
    scatter of the token term's gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, boundary: torch.Tensor | None):
        full = at_least_float32(logits)
        lse = torch.logsumexp(full, dim=-1)
        token = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        in_boundary = None
        if boundary is not None:
            in_boundary = torch.logsumexp(full.index_select(-1, boundary.nonzero().squeeze(1)), dim=-1) - lse
        ctx.save_for_backward(logits, targets, lse, boundary, in_boundary)
        return token, in_boundary

    @staticmethod
    def backward(ctx, grad_token: torch.Tensor, grad_boundary: torch.Tensor | None):
        # an output the loss does not use gets a gradient of zeros (autograd's default), so
        # only the absent boundary output (no mask) comes as None
        logits, targets, lse, boundary, in_boundary = ctx.saved_tensors
        grad = torch.sub(at_least_float32(logits), lse.unsqueeze(-1)).exp_()  # the softmax p
        if boundary is None:
            grad.mul_(-grad_token.unsqueeze(-1))
        else:
            # p / P(boundary) on the boundary columns; the exponent is capped where P(boundary)
            # is below e^-80, whose p has underflowed to ~0 anyway
            rescale = grad_boundary * torch.exp((-in_boundary).clamp(max=80.0))
            per_column = torch.addcmul((-grad_token - grad_boundary).unsqueeze(-1), rescale.unsqueeze(-1),
                                       boundary.to(grad.dtype))
            grad.mul_(per_column)
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_token.unsqueeze(-1))
        return grad.to(logits.dtype), None, None


def next_token_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                        boundary_tokens: torch.Tensor | None = None) -> NextTokenLogprobs:
    """log p(targets | position) and, given a boundary-token mask, log P(the next token is a
    boundary token | position), from logits (..., V), in float32.

    targets[..., t] is the token that logits[..., t, :] predicts (input_ids[:, t+1]); values
    outside the vocabulary (-100, padding) are clamped — their positions belong to no chunk.
    A mask shorter than the logits (vocabulary padded to a multiple) is padded with False.
    """
    vocab = logits.shape[-1]
    mask = None
    if boundary_tokens is not None:
        mask = F.pad(boundary_tokens.bool(), (0, vocab - boundary_tokens.shape[0])).to(logits.device)
    token, boundary = _NextTokenLogprobs.apply(logits, targets.clamp(0, vocab - 1), mask)
    return NextTokenLogprobs(token, boundary)


def to_target_positions(chunk_ids: torch.Tensor) -> torch.Tensor:
    """Input-token chunk ids -> ids aligned with `next_token_logprobs` positions.

    The log-prob of input token t sits at position t-1, so shift left by one; the last
    position predicts past the sequence and gets -1.
    """
    return F.pad(chunk_ids[:, 1:], (0, 1), value=-1)


def chunk_logprobs(token_logp: torch.Tensor, chunk_ids: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """(B, num_chunks) sum of token log-probs per chunk (scatter_add over chunk ids).

    Positions with id -1 go to a spare column that is cut off; they are zeroed first so
    a garbage value there cannot reach the result or its gradient.
    """
    dump = torch.where(chunk_ids >= 0, chunk_ids, num_chunks)
    values = torch.where(chunk_ids >= 0, token_logp, torch.zeros_like(token_logp))
    sums = token_logp.new_zeros(token_logp.shape[0], num_chunks + 1).scatter_add(1, dump, values)
    return sums[:, :num_chunks]


def last_position(chunk_ids: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """(B, num_chunks) index of the last token of each chunk (0 for empty slots)."""
    dump = torch.where(chunk_ids >= 0, chunk_ids, num_chunks)
    positions = torch.arange(chunk_ids.shape[1], device=chunk_ids.device).expand_as(chunk_ids)
    last = torch.zeros(chunk_ids.shape[0], num_chunks + 1, dtype=torch.long, device=chunk_ids.device)
    return last.scatter_reduce(1, dump, positions, reduce="amax", include_self=True)[:, :num_chunks]


# ----------------------------------------------------------------------------------------
# 2b. Debiasing: "then a word boundary" (tokenkit append_space + merge_by_space_prob)


def boundary_token_mask(token_texts: Sequence[str], special_ids: Sequence[int] = ()) -> torch.Tensor:
    """(V,) bool: tokens that start a new word — text starts with whitespace, or special.

    token_texts[i] is the decoded text of token id i (e.g. `tokenizer.decode([i])`), so
    Ġ/▁ spellings do not matter. tokenkit counts space, tab, newline and specials; this
    uses `str.isspace` on the first character, which also admits e.g. \\r and U+3000.
    """
    mask = torch.tensor([len(t) > 0 and t[0].isspace() for t in token_texts], dtype=torch.bool)
    if len(special_ids):
        mask[torch.as_tensor(list(special_ids), dtype=torch.long)] = True
    return mask


def merge_chunks(teacher_boundary_logp: torch.Tensor, chunk_mask: torch.Tensor,
                 threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Group consecutive chunks until the teacher expects a word boundary after them.

    A group ends after chunk c if P_teacher(boundary after c) > threshold. Groups never
    span a dropped chunk (it would leave a hole in the group's log-prob): a new group
    starts after one. The trailing group of a sequence is kept even if no
    boundary follows it (as in tokenkit).
    Returns (group id per chunk (B, C) long, -1 for dropped chunks; groups per row (B,)).
    """
    valid = chunk_mask
    likely_boundary = teacher_boundary_logp > math.log(threshold)
    after_boundary = F.pad(likely_boundary[:, :-1], (1, 0), value=True)
    after_dropped = ~F.pad(valid[:, :-1], (1, 0), value=False)
    new_group = valid & (after_boundary | after_dropped)
    group_ids = torch.where(valid, torch.cumsum(new_group.long(), dim=1) - 1, -1)
    return group_ids, new_group.sum(dim=1)


def _compose(chunk_ids: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Token -> chunk and chunk -> group  ==>  token -> group."""
    mapped = group_ids.gather(1, chunk_ids.clamp_min(0))
    return torch.where(chunk_ids >= 0, mapped, -1)


# ----------------------------------------------------------------------------------------
# 3. The loss


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 (expm1) and for very negative x (log1p)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def binary_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor,
              temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Elementwise KL(Bernoulli(p_T^(1/τ)) || Bernoulli(p_S^(1/τ))) from log-probs."""
    a = teacher_logp.float().clamp(max=0.0) / temperature - EPSILON
    b = student_logp.float().clamp(max=0.0) / temperature - EPSILON
    return torch.exp(a) * (a - b) + (-torch.expm1(a)) * (log1mexp(a) - log1mexp(b))


def alm_loss(student_chunk_logp: torch.Tensor, teacher_chunk_logp: torch.Tensor, mask: torch.Tensor,
             temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Mean binary KL over the valid chunks of the batch; teacher detached.

    Masked slots are filled with a harmless value before the maths, so that neither a
    garbage value nor its gradient (log1mexp'(0) is infinite) leaks through the mask.
    No valid chunk at all gives a zero that still carries the student's graph.
    """
    mask = mask.bool()
    safe = torch.full_like(student_chunk_logp, -1.0)
    student = torch.where(mask, student_chunk_logp, safe)
    teacher = torch.where(mask, teacher_chunk_logp.detach(), safe.detach())
    per_chunk = binary_kl(teacher, student, temperature)
    return torch.where(mask, per_chunk, 0.0).sum() / mask.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------
# 4. What the trainer calls


@dataclass
class ALMOutput:
    loss: torch.Tensor  # scalar, differentiable w.r.t. the student logits
    num_chunks: torch.Tensor  # scalar long: chunks compared (after merging)
    mean_abs_logp_diff: torch.Tensor  # scalar: mean |log p_S - log p_T| per compared chunk (nats)


def alm_distill_loss(student_logits: torch.Tensor, student_targets: torch.Tensor,
                     teacher_logits: torch.Tensor, teacher_targets: torch.Tensor,
                     alignment: ChunkAlignment, *, temperature: float = DEFAULT_TEMPERATURE,
                     student_boundary_tokens: torch.Tensor | None = None,
                     teacher_boundary_tokens: torch.Tensor | None = None,
                     merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD) -> ALMOutput:
    """ALM loss for one batch of texts tokenized both ways.

    logits: (B, T, V) of each model on its own input ids; targets: (B, T), targets[:, t]
    = input_ids[:, t+1] (whatever at the last position). `alignment` (from
    `align_chunks`) holds both sides' token -> chunk maps, indexed by input position.
    Boundary-token masks (V_student,), (V_teacher,) turn on debiasing (both or neither);
    `merge_threshold` then merges chunks (None: append only).
    """
    if (student_boundary_tokens is None) != (teacher_boundary_tokens is None):
        raise ValueError("pass boundary-token masks for both models or for neither")
    student = next_token_logprobs(student_logits, student_targets, student_boundary_tokens)
    return alm_distill_loss_from_logprobs(
        student.token, teacher_logits, teacher_targets, alignment,
        temperature=temperature, student_boundary_logp=student.boundary,
        teacher_boundary_tokens=teacher_boundary_tokens, merge_threshold=merge_threshold)


def alm_distill_loss_from_logprobs(student_logp: torch.Tensor, teacher_logits: torch.Tensor,
                                   teacher_targets: torch.Tensor, alignment: ChunkAlignment, *,
                                   temperature: float = DEFAULT_TEMPERATURE,
                                   student_boundary_logp: torch.Tensor | None = None,
                                   teacher_boundary_tokens: torch.Tensor | None = None,
                                   merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD) -> ALMOutput:
    """`alm_distill_loss` for a student whose full logits do not exist.

    A student scored by a sampled softmax (the hypernetwork trainer: logits over the batch's
    tokens plus sampled negatives) has only estimates: its token log-prob is the target's
    logit minus the logsumexp over the candidates, its boundary log-prob the logsumexp over
    the boundary candidates minus that (`next_token_logprobs` on the candidates' logits
    computes both). student_logp: (B, T) in the layout `next_token_logprobs`
    gives (position t holds the log-prob of input token t+1); student_boundary_logp:
    (B, T) likewise, or None without debiasing (then also no teacher mask). The teacher
    still has full logits.
    """
    if (student_boundary_logp is None) != (teacher_boundary_tokens is None):
        raise ValueError("pass boundary log-probs for the student and a boundary-token mask for the teacher, or neither")
    teacher = teacher_chunks(teacher_logits, teacher_targets, alignment,
                             teacher_boundary_tokens=teacher_boundary_tokens, merge_threshold=merge_threshold)
    return alm_against(student_logp, teacher, temperature=temperature, student_boundary_logp=student_boundary_logp)


@dataclass
class TeacherChunks:
    """The teacher's side of one batch: everything ALM needs from it, and no gradient.

    Computed apart from the student's side so that a trainer can run every teacher pass of an
    optimizer step first: the number of chunks (which merging makes depend on the teacher's
    boundary probabilities) is then known before the first backward, and each micro-step's
    mean can be weighted by its share of the step's chunks."""

    logp: torch.Tensor  # (B, C) chunk log-likelihoods (with the boundary term when debiased)
    student_chunk_ids: torch.Tensor  # (B, T_s) the student's token -> chunk map after merging
    mask: torch.Tensor  # (B, C) real chunks
    debiased: bool

    @property
    def count(self) -> torch.Tensor:
        """Scalar long: the chunks compared."""
        return self.mask.sum()


@torch.no_grad()
def teacher_chunks(teacher_logits: torch.Tensor, teacher_targets: torch.Tensor, alignment: ChunkAlignment, *,
                   teacher_boundary_tokens: torch.Tensor | None = None,
                   merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD) -> TeacherChunks:
    """The teacher's chunk log-likelihoods; with a boundary-token mask, debiased and (unless
    ``merge_threshold`` is None) with chunks merged where the teacher doubts a boundary."""
    num = alignment.max_chunks  # read on CPU, before the move: no device sync
    alignment = alignment.to(teacher_logits.device)
    t_ids, s_ids = alignment.teacher_chunk_ids, alignment.student_chunk_ids
    mask = torch.arange(num, device=teacher_logits.device)[None, :] < alignment.num_chunks[:, None]
    teacher = next_token_logprobs(teacher_logits, teacher_targets, teacher_boundary_tokens)
    t_bound = teacher.boundary
    debias = t_bound is not None
    if debias:
        if merge_threshold is not None and num > 0:
            chunk_bound = t_bound.gather(1, last_position(t_ids, num))
            group_ids, num_groups = merge_chunks(chunk_bound, mask, merge_threshold)
            t_ids, s_ids = _compose(t_ids, group_ids), _compose(s_ids, group_ids)
            num = int(num_groups.max()) if num_groups.numel() else 0  # data-dependent shape: syncs
            mask = torch.arange(num, device=mask.device)[None, :] < num_groups[:, None]
    logp = chunk_logprobs(teacher.token, to_target_positions(t_ids), num)
    if debias:
        logp = logp + t_bound.gather(1, last_position(t_ids, num))
    return TeacherChunks(logp, s_ids, mask, debias)


def alm_against(student_logp: torch.Tensor, teacher: TeacherChunks, *, temperature: float = DEFAULT_TEMPERATURE,
                student_boundary_logp: torch.Tensor | None = None) -> ALMOutput:
    """ALM of a student's token log-probs (B, T) against the teacher's chunks (and its boundary
    log-probs (B, T) when the teacher's side is debiased)."""
    if (student_boundary_logp is None) == teacher.debiased:
        raise ValueError("debias both sides (student boundary log-probs and a teacher boundary mask) or neither")
    s_ids, mask, num = teacher.student_chunk_ids.to(student_logp.device), teacher.mask, teacher.mask.shape[1]
    s_chunk = chunk_logprobs(student_logp.float(), to_target_positions(s_ids), num)
    if teacher.debiased:
        s_chunk = s_chunk + student_boundary_logp.float().gather(1, last_position(s_ids, num))

    loss = alm_loss(s_chunk, teacher.logp, mask, temperature)
    with torch.no_grad():
        count = mask.sum()
        diff = torch.where(mask, (s_chunk - teacher.logp).abs(), 0.0).sum() / count.clamp_min(1)
    return ALMOutput(loss=loss, num_chunks=count, mean_abs_logp_diff=diff)
