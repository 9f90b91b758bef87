"""How well a small model drafts for a large one in greedy speculative decoding.

A draft proposes ``k`` tokens, the target checks them in one forward pass and keeps the
longest prefix that equals its own greedy choices, then adds one token of its own (the
correction, or a bonus after a full window). Everything the draft contributes is therefore
decided by one question per position: *is the draft's greedy token the target's greedy
token, given the same text before it?* Two figures follow from it:

- **agreement**: the share of positions of real text (teacher-forced, per group) where the
  two argmaxes agree: the per-token acceptance rate.
- **mean accepted** per round for a window of ``k``: measured exactly on the target's own
  greedy continuation of a prompt. Along that text every accepted draft token *is* the text,
  so the draft's predictions teacher-forced on it are the ones it would make while drafting,
  and replaying the rounds over the per-position matches gives the accepted runs.

Wall-clock speed is measured separately (:func:`time_generation`): the target alone against
the target with the draft as transformers' ``assistant_model``, on the same prompts, with a
constant window of ``k``. Both must share one tokenizer: the draft is meant to be a
transplant onto the target's tokenizer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from transplant.errors import UserError
from transplant.evaluation.evaluate import LOGITS_BUDGET_BYTES, Window, make_windows, prefix_token_id
from transplant.inputs.corpus import Document


@dataclass(frozen=True)
class DraftConfig:
    """What is measured and on how much text."""

    window: int = 4  # k: draft tokens proposed per round
    max_length: int = 256  # teacher-forced windows for the agreement, in tokens
    batch_size: int = 8
    prompt_tokens: int = 48  # a document's first tokens prompt the target's greedy continuation
    new_tokens: int = 32  # tokens the target continues each prompt with
    timed_prompts: int = 4  # prompts generated twice (alone, assisted) for the wall-clock figures


@dataclass
class GroupDraft:
    """Counts for one group; figures are derived so that groups add up exactly."""

    positions: int = 0  # teacher-forced text positions compared
    agreed: int = 0
    rounds: int = 0  # speculative rounds replayed on the target's greedy continuations
    accepted: int = 0  # draft tokens kept over those rounds

    def add(self, other: GroupDraft) -> None:
        self.positions += other.positions
        self.agreed += other.agreed
        self.rounds += other.rounds
        self.accepted += other.accepted

    @property
    def agreement(self) -> float:
        return self.agreed / self.positions if self.positions else float("nan")

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.rounds if self.rounds else float("nan")

    @property
    def tokens_per_round(self) -> float:
        """Tokens the target emits per forward pass of its own: the accepted ones plus its own."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else float("nan")

    def to_dict(self) -> dict[str, float | int | None]:
        figures = {"agreement": self.agreement, "mean_accepted": self.mean_accepted,
                   "tokens_per_round": self.tokens_per_round}
        return {**{k: None if math.isnan(v) else v for k, v in figures.items()}, "positions": self.positions,
                "agreed": self.agreed, "rounds": self.rounds, "accepted": self.accepted}


@dataclass
class Speed:
    """Greedy generation of the same prompts by the target alone and with the draft."""

    tokens: int  # new tokens generated in each of the two runs
    alone_s: float
    assisted_s: float
    same_output: bool  # assisted greedy decoding must give the target's own greedy text

    @property
    def speedup(self) -> float:
        return self.alone_s / self.assisted_s

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"tokens": self.tokens, "alone_tokens_per_s": self.tokens / self.alone_s,
                "assisted_tokens_per_s": self.tokens / self.assisted_s, "speedup": self.speedup,
                "same_output": self.same_output}


@dataclass
class DraftEvaluation:
    draft: str
    target: str
    window: int
    groups: dict[str, GroupDraft]
    speed: Speed | None = field(default=None)

    @property
    def overall(self) -> GroupDraft:
        total = GroupDraft()
        for group in self.groups.values():
            total.add(group)
        return total

    def to_dict(self) -> dict:
        return {"draft": self.draft, "target": self.target, "window": self.window,
                "overall": self.overall.to_dict(),
                "groups": {name: group.to_dict() for name, group in self.groups.items()},
                "speed": None if self.speed is None else self.speed.to_dict()}


def check_same_tokenizer(draft: PreTrainedTokenizerBase, target: PreTrainedTokenizerBase,
                         draft_rows: int, target_rows: int) -> None:
    """Refuse, in one line, a draft whose token ids do not mean the target's tokens."""
    draft_vocab, target_vocab = draft.get_vocab(), target.get_vocab()
    if draft_vocab != target_vocab:
        extra = sorted(set(draft_vocab) - set(target_vocab))
        missing = sorted(set(target_vocab) - set(draft_vocab))
        differ = sum(1 for t in set(draft_vocab) & set(target_vocab) if draft_vocab[t] != target_vocab[t])
        hint = (f"; the draft has {len(extra)} token(s) the target lacks ({', '.join(extra[:3])}): "
                "a chat template's markers? transplant with --chat-template new") if extra else ""
        raise UserError(f"the draft does not use the target's tokenizer ({len(missing)} target tokens missing, "
                        f"{differ} with other ids{hint}); transplant it first: "
                        "transplant model DRAFT --tokenizer TARGET --chat-template new -o OUT")
    if draft_rows != target_rows:
        raise UserError(f"the draft has {draft_rows} vocabulary rows and the target {target_rows}: transformers' "
                        "assisted generation needs the same size (transplant with --pad-to-multiple-of to match)")


def replay_rounds(matches: Sequence[bool], window: int) -> tuple[int, int]:
    """(rounds, accepted) of greedy speculative decoding over a continuation whose position
    ``i`` the draft predicts right exactly when ``matches[i]``.

    A round starting at ``i`` keeps the run of matches from ``i`` (at most ``window``), then
    the target emits one token itself, so the next round starts one past the run. The loop
    walks one continuation (tens of tokens), not a vocabulary.
    """
    if window < 1:
        raise UserError(f"--draft-window must be at least 1, got {window}")
    rounds = accepted = i = 0
    while i < len(matches):
        run = 0
        while run < window and i + run < len(matches) and matches[i + run]:
            run += 1
        rounds += 1
        accepted += run
        i += run + 1
    return rounds, accepted


@torch.inference_mode()
def _argmax(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, rows: int) -> torch.Tensor:
    """Greedy next-token ids at every position, over the first ``rows`` ids (padding rows never win)."""
    return model(input_ids=ids, attention_mask=mask).logits[..., :rows].argmax(-1)


def agreement_counts(draft: PreTrainedModel, target: PreTrainedModel, windows: Sequence[Window], pad_id: int,
                     rows: int, batch_size: int) -> tuple[int, int]:
    """(positions, agreed) over the scored positions of ``windows``, in right-padded batches
    whose logits stay within the evaluation's memory budget (a 262k vocabulary allows few)."""
    width = max((len(w.ids) for w in windows), default=1)
    batch_size = max(1, min(batch_size, LOGITS_BUDGET_BYTES // (4 * rows * width)))
    positions = agreed = 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        width = max(len(w.ids) for w in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for row, window in enumerate(batch):
            n = len(window.ids)
            ids[row, :n] = torch.tensor(window.ids)
            mask[row, :n] = 1
            scored[row, n - 1 - window.scored:n - 1] = True  # positions whose next token is a scored target
        same = _argmax(draft, ids.to(draft.device), mask.to(draft.device), rows).cpu() == \
            _argmax(target, ids.to(target.device), mask.to(target.device), rows).cpu()
        positions += int(scored.sum())
        agreed += int(same[scored].sum())
    return positions, agreed


def _greedy(model: PreTrainedModel, prompt: list[int], new_tokens: int, pad_id: int,
            assistant: PreTrainedModel | None = None, window: int = 4) -> list[int]:
    """The model's greedy continuation of ``prompt`` (with ``assistant`` drafting ``window`` at a time)."""
    ids = torch.tensor([prompt], device=model.device)
    extra = {}
    if assistant is not None:
        assistant.generation_config.num_assistant_tokens = window
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0  # always propose the whole window
        extra["assistant_model"] = assistant
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         top_k=None, top_p=None, temperature=None, pad_token_id=pad_id, **extra)
    return out[0, len(prompt):].tolist()


@torch.inference_mode()
def continuation_matches(draft: PreTrainedModel, target: PreTrainedModel, prompt: list[int], new_tokens: int,
                         pad_id: int, rows: int) -> list[bool]:
    """Per token of the target's greedy continuation of ``prompt``: does the draft's greedy
    choice, reading the same text before it, equal it?"""
    continuation = _greedy(target, prompt, new_tokens, pad_id)
    if not continuation:
        return []
    ids = torch.tensor([prompt + continuation], device=draft.device)
    predicted = _argmax(draft, ids, torch.ones_like(ids), rows)[0, len(prompt) - 1:-1].cpu()
    return (predicted == torch.tensor(continuation)).tolist()


def time_generation(draft: PreTrainedModel, target: PreTrainedModel, prompts: Sequence[list[int]],
                    config: DraftConfig, pad_id: int) -> Speed:
    """Greedy generation of ``prompts`` by the target alone, then with the draft; one
    untimed warm-up of each first so neither pays for first-call set-up."""
    _greedy(target, prompts[0], 2, pad_id)
    _greedy(target, prompts[0], 2, pad_id, draft, config.window)
    outputs, seconds = {}, {}
    for label, assistant in (("alone", None), ("assisted", draft)):
        start = time.perf_counter()
        outputs[label] = [_greedy(target, p, config.new_tokens, pad_id, assistant, config.window) for p in prompts]
        seconds[label] = time.perf_counter() - start
    tokens = sum(len(o) for o in outputs["alone"])
    return Speed(tokens, seconds["alone"], seconds["assisted"], outputs["alone"] == outputs["assisted"])


def evaluate_draft(draft: PreTrainedModel, target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   docs: Sequence[Document], names: tuple[str, str] = ("draft", "target"),
                   config: DraftConfig = DraftConfig(), timed: bool = True) -> DraftEvaluation:
    """Agreement and accepted runs per group of ``docs``, and (``timed``) the wall-clock speed-up."""
    prefix = prefix_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    rows = len(tokenizer)
    contexts = [getattr(m.config, "max_position_embeddings", None) or config.max_length for m in (draft, target)]
    max_length = min(config.max_length, *contexts)
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    groups: dict[str, GroupDraft] = {}
    prompts: list[list[int]] = []
    for number, (doc, ids) in enumerate(zip(docs, encoded, strict=True)):
        counts = groups.setdefault(doc.group, GroupDraft())
        windows = make_windows(number, [prefix, *ids], max_length, max_length // 2)
        positions, agreed = agreement_counts(draft, target, windows, pad_id, rows, config.batch_size)
        counts.add(GroupDraft(positions=positions, agreed=agreed))
        prompt = [prefix, *ids[:config.prompt_tokens]]
        rounds, accepted = replay_rounds(continuation_matches(draft, target, prompt, config.new_tokens, pad_id, rows),
                                         config.window)
        counts.add(GroupDraft(rounds=rounds, accepted=accepted))
        prompts.append(prompt)
    speed = time_generation(draft, target, _spread(prompts, docs, config.timed_prompts), config, pad_id) \
        if timed and prompts else None
    return DraftEvaluation(names[0], names[1], config.window, groups, speed)


def _spread(prompts: Sequence[list[int]], docs: Sequence[Document], count: int) -> list[list[int]]:
    """``count`` prompts taken from the groups in turn, so the timing sees every language."""
    by_group: dict[str, list[list[int]]] = {}
    for prompt, doc in zip(prompts, docs, strict=True):
        by_group.setdefault(doc.group, []).append(prompt)
    chosen: list[list[int]] = []
    for depth in range(max(len(p) for p in by_group.values())):
        chosen += [p[depth] for p in by_group.values() if depth < len(p)]
    return chosen[:count]
