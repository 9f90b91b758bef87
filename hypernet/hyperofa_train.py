"""Train a HyperOFA hypernetwork for one base model (``transplant hypernet train --kind hyperofa``).

1. Word vectors: a file gensim reads (``--vectors``) or fastText trained on a corpus
   (``--train-vectors``, cached by :mod:`transplant.inputs.fasttext`).
2. Word sets of the *base* tokenizer's tokens (:mod:`transplant.hypernet.wordsets`).
3. Regression on the base vocabulary: every ordinary base token with at least one vector is
   an example whose answer is its own base row(s). 3% are held out; the loss per matrix is

       λ · InfoNCE(cosine / T, in-batch negatives) + (1 − λ) · L1 / mean|target|,   λ = 0.1, T = 0.25

   (InfoNCE puts each prediction nearer its own row than the batch's others; the scaled L1
   fixes the magnitude). Training runs on :func:`transplant.training.loop.fit`; every
   ``eval_every`` steps the held-out loss is measured and the best weights so far are kept,
   and those are what the directory holds at the end. Early stopping: after ``patience``
   evaluations without a better held-out loss the run ends there (0 = run every step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from gensim.models import KeyedVectors
from transformers import AutoTokenizer

from transplant.hypernet.fingerprint import BaseSample, base_hash
from transplant.hypernet.hyperofa import HyperOfaConfig, HyperOfaNetwork, save_hyperofa, trimmed
from transplant.hypernet.zett_train import HypernetRunConfig, write_hypernet_dir
from transplant.hypernet.wordsets import SPLIT_KEY, WordSets, build_word_sets, split_words
from transplant.io.checkpoint import read_embeddings
from transplant.inputs.corpus import check_corpora
from transplant.errors import UserError
from transplant.inputs.fasttext import FastTextOptions, load_vectors, train_vectors
from transplant.io.sources import resolve_model
from transplant.io.trust import Trust
from transplant.vocab.surface import vocabulary
from transplant.training.loop import (
    MicroBatch, StepOutput, config_dict, fit, make_accelerator, refuse_sharding, run_directory,
)


@dataclass
class HyperOfaTrainConfig(HypernetRunConfig):
    """Everything ``transplant hypernet train --kind hyperofa`` reads; a YAML sets any of it.
    ``batch_size`` is base tokens per step (and the InfoNCE negatives)."""

    steps: int = 3000
    warmup_steps: int = 100
    lr: float = 1e-3
    batch_size: int = 256
    eval_every: int = 100
    save_every: int = 500
    # the word vectors: a file, or fastText trained on corpora
    vectors: str | None = None
    train_vectors: list[str] = field(default_factory=list)
    vector_dim: int = 100
    vector_epochs: int = 5
    vector_min_count: int = 5
    vector_workers: int = 1  # > 1 is faster but not reproducible (gensim)
    max_vector_words: int = 0  # keep the most frequent N words; 0 = all
    # the network
    width: int = 256
    heads: int = 4
    max_words: int = 256
    # the loss and the split
    infonce_weight: float = 0.1
    temperature: float = 0.25
    holdout: float = 0.03
    patience: int = 5  # evaluations without a better held-out loss before stopping; 0 = never

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.vectors) == bool(self.train_vectors):
            raise UserError("hyperofa needs word vectors: either --vectors FILE or --train-vectors CORPUS… (not both)")
        if self.train_vectors:
            check_corpora(self.train_vectors)
            _ = self.fasttext  # its own checks, before anything loads
        elif not Path(self.vectors).is_file():
            raise UserError(f"word vectors not found: {self.vectors}")
        if self.width < 1 or self.heads < 1 or self.width % self.heads or self.max_words < 1:
            raise UserError("need width and heads >= 1 with width divisible by heads, and max_words >= 1")
        if not 0 < self.holdout < 1 or not 0 <= self.infonce_weight <= 1 or not self.temperature > 0:
            raise UserError("need 0 < holdout < 1, 0 <= infonce_weight <= 1 and temperature > 0")
        if self.patience < 0:
            raise UserError(f"patience must not be negative, got {self.patience}")

    @property
    def fasttext(self) -> FastTextOptions:
        return FastTextOptions(dim=self.vector_dim, epochs=self.vector_epochs, min_count=self.vector_min_count,
                               workers=self.vector_workers, seed=self.seed)


def split_ids(ids: torch.Tensor, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) ids: a seeded shuffle, the held-out part ``holdout`` of it (at least one)."""
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    held = max(1, math.ceil(holdout * len(ids)))
    return order[held:], order[:held].sort().values


@dataclass
class Best:
    """The best held-out loss so far, its step and its weights (the word vectors left out:
    they never change). Checkpointed with the run, so a resumed run keeps it."""

    loss: float = math.inf
    step: int = 0
    figures: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, loss: float, step: int, figures: dict[str, float], model: torch.nn.Module) -> None:
        if loss < self.loss:
            self.loss, self.step, self.figures = loss, step, figures
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k != "vectors"}

    def state_dict(self) -> dict:
        return {"loss": self.loss, "step": self.step, "figures": self.figures, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.loss, self.step, self.figures, self.weights = state["loss"], state["step"], state["figures"], state["weights"]


class HyperOfaTask:
    """The HyperOFA trainer's side of :func:`transplant.training.loop.fit`: examples are base token ids."""

    def __init__(self, cfg: HyperOfaTrainConfig, model: HyperOfaNetwork, sets: WordSets, words: list[str],
                 targets: dict[str, torch.Tensor], examples: torch.Tensor, device: torch.device, extra: dict,
                 base: BaseSample):
        self.cfg, self.model, self.sets, self.words, self.extra, self.base = cfg, model, sets, words, extra, base
        self.targets = {name: rows.float().to(device) for name, rows in targets.items()}
        self.scale = {name: rows.abs().mean() for name, rows in self.targets.items()}
        self.train_ids, self.heldout = split_ids(examples, cfg.holdout, cfg.seed)
        model.standardize({name: rows[self.train_ids] for name, rows in targets.items()})
        self.best = Best()
        self.step = 0

    def examples(self, epoch: int) -> Iterator[int]:
        order = torch.randperm(len(self.train_ids), generator=torch.Generator().manual_seed(self.cfg.seed * 10_007 + epoch))
        return iter(self.train_ids[order].tolist())

    def predict(self, model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(iter(self.targets.values())).device
        rows_in, rows_out = model(trimmed(self.sets.inputs(ids)).to(device))
        return {"input": rows_in} if rows_out is None else {"input": rows_in, "output": rows_out}

    def objective(self, predicted: dict[str, torch.Tensor], ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss (mean over matrices) and each matrix's mean cosine to its target."""
        total, figures = 0.0, {}
        labels = torch.arange(len(ids), device=self.scale["input"].device)
        for name, rows in predicted.items():
            rows = rows.float()
            target = self.targets[name][ids.to(labels.device)]
            cosine = F.normalize(rows, dim=1) @ F.normalize(target, dim=1).T
            infonce = F.cross_entropy(cosine / self.cfg.temperature, labels)
            l1 = (rows - target).abs().mean() / self.scale[name]
            total = total + self.cfg.infonce_weight * infonce + (1 - self.cfg.infonce_weight) * l1
            figures[f"cos/{name}"] = cosine.diagonal().mean().item()
        return total / len(predicted), figures

    def prepare(self, examples: list[int], step: int, seed: int) -> MicroBatch:
        """The words' ids (every micro-step holds ``batch_size`` of them: equal counts need no weights)."""
        self.step = step + 1
        return MicroBatch(torch.tensor(examples, dtype=torch.long))

    def loss(self, model: torch.nn.Module, batch: MicroBatch, share: dict[str, torch.Tensor]) -> StepOutput:
        loss, figures = self.objective(self.predict(model, batch.inputs), batch.inputs)
        return StepOutput(loss, len(batch.inputs), figures)

    @torch.no_grad()
    def evaluate(self, model: HyperOfaNetwork) -> dict[str, float]:
        """Held-out loss (in training-sized batches, so its InfoNCE is comparable) and cosines;
        remembers the best weights."""
        parts = [self.objective(self.predict(model, ids), ids) for ids in self.heldout.split(self.cfg.batch_size)]
        weights = torch.tensor([len(ids) for ids in self.heldout.split(self.cfg.batch_size)], dtype=torch.float)
        weights /= weights.sum()
        figures = {"loss": sum(float(w) * loss.item() for w, (loss, _) in zip(weights, parts))}
        for name in parts[0][1]:
            figures[name] = sum(float(w) * f[name] for w, (_, f) in zip(weights, parts))
        self.best.update(figures["loss"], self.step, figures, model)
        return figures | {"best_loss": self.best.loss}

    def should_stop(self) -> bool:
        """Early stopping: ``patience`` evaluations in a row without a better held-out loss."""
        return self.cfg.patience > 0 and self.step - self.best.step >= self.cfg.patience * max(1, self.cfg.eval_every)

    def export(self, model: HyperOfaNetwork, run: Path) -> None:
        """The best held-out weights, with the vectors, words and what the run measured."""
        model.load_state_dict(self.best.weights | {"vectors": model.vectors})
        record = {"best_step": self.best.step, "heldout": self.best.figures, "heldout_ids": self.heldout.tolist(),
                  "training": config_dict(self.cfg), **self.extra}
        write_hypernet_dir(self.cfg, run, lambda out: save_hyperofa(model, self.words, out, self.base, record),
                           "hyperofa")

    def adam_eps(self) -> dict[torch.nn.Parameter, float]:
        return {}

    def state_objects(self) -> list:
        return [self.best]


def word_vectors(cfg: HyperOfaTrainConfig) -> KeyedVectors:
    if cfg.vectors:
        return load_vectors(cfg.vectors)
    return train_vectors(cfg.train_vectors, split_words, SPLIT_KEY, cfg.fasttext)


def train(cfg: HyperOfaTrainConfig) -> Path:
    """Train as ``cfg`` says; returns the directory ``--method hyperofa --hypernet`` reads."""
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg)
    refuse_sharding(accelerator, "hypernetwork training does not shard (its network is small)")
    base_dir = resolve_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, **Trust().code_kwargs())
    vocab = vocabulary(tokenizer)
    embeddings = read_embeddings(base_dir)
    base_input = embeddings.input.float()
    base_output = None if embeddings.output is None else embeddings.output.float()

    started = time.perf_counter()
    vectors = word_vectors(cfg)
    words = list(vectors.index_to_key[: cfg.max_vector_words or None])
    timings = {"vectors_s": time.perf_counter() - started}
    started = time.perf_counter()
    sets = build_word_sets(tokenizer, vocab, words, {w: i for i, w in enumerate(words)}, cfg.max_words)
    timings["word_sets_s"] = time.perf_counter() - started
    examples = (sets.covered & ~torch.tensor(vocab.special)).nonzero().squeeze(1)
    if len(examples) < 2:
        raise UserError(f"only {len(examples)} base tokens have a word vector: too few to train on")
    accelerator.print(f"{len(words):,} words of {vectors.vector_size} dims ({timings['vectors_s']:.0f} s); "
                      f"{len(examples):,} of {len(vocab):,} base tokens have vectors ({timings['word_sets_s']:.1f} s)")

    config = HyperOfaConfig(
        hidden_size=base_input.shape[1], tied=base_output is None,
        base_hash=base_hash(vocab.tokens, base_input, base_output), vector_dim=vectors.vector_size,
        words=len(words), width=cfg.width, heads=cfg.heads, max_words=cfg.max_words,
    )
    torch.manual_seed(cfg.seed)
    model = HyperOfaNetwork(config, torch.from_numpy(vectors.vectors[: len(words)]))
    targets = {"input": base_input} if base_output is None else {"input": base_input, "output": base_output}
    extra = {"base": cfg.base, "timings": timings, "base_tokens_with_vectors": len(examples)}
    task = HyperOfaTask(cfg, model, sets, words, targets, examples, accelerator.device, extra,
                        BaseSample.of(vocab.tokens, base_input, base_output))
    started = time.perf_counter()
    with run_directory(cfg.run_path, config_dict(cfg), cfg.resume, accelerator):
        fit(task, cfg, cfg.run_path, accelerator, resume=cfg.resume)
    accelerator.print(f"trained in {time.perf_counter() - started:.0f} s; best held-out step {task.best.step}: "
                      + " ".join(f"{k} {v:.4f}" for k, v in task.best.figures.items()))
    return out
