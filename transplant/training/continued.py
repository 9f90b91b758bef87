"""Continued pretraining of a transplanted model (``transplant train``).

A transplant leaves a model whose new embedding rows are educated guesses; a short run of
causal-LM training on text in the new tokenizer closes most of the gap (ZeTT and FOCUS:
well under a billion tokens). Two stages, each one :func:`transplant.training.loop.fit` with its
own warmup + cosine, checkpoints and log (``RUN/stage1``, ``RUN/stage2``):

1. Only the embedding matrices learn (input, and lm_head when untied). With ``rows: new``
   (the default) only the rows the transplant *initialized* do: a gradient hook zeroes
   every other row, read from the transplant's ``initialized.safetensors``. With zero
   gradient and no weight decay AdamW leaves a row exactly as it was, so copied rows stay
   bit for bit, and the network itself never changes.
2. ``stage2_steps`` (0 = none): everything learns, at the lower ``stage2_lr``.

The objective (``objective``) is the causal-LM loss on the training text (``lm``), or
self-distillation from the base (``alm``, :mod:`transplant.training.distill`): the base
reads the same text with its own tokenizer and the model learns to give every shared
stretch of text the likelihood the base gives it, plus ``lm_weight`` x the LM loss. The LM
loss only teaches the text it sees; the base knows what the model knew, English and code
too, whatever the training text is.

Evaluation is the byte-level perplexity ratio against the *base* model on a held-out corpus
(:mod:`transplant.evaluation.evaluate`); the base is scored once and cached in RUN. The result is an
ordinary HF checkpoint written atomically (:mod:`transplant.io.atomic`) whose
``transplant.json`` keeps the transplant's record and adds the training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from transplant.io.atomic import atomic_path
from transplant.io.checkpoint import INITIALIZED_FILE, RECORD_FILE
from transplant.io.tokenizer import load_tokenizer
from transplant.io.trust import Trust
from transplant.errors import UserError
from transplant.inputs.corpus import Document, check_corpora, load_corpus, read_corpora
from transplant.evaluation.evaluate import EvalConfig, Evaluation, Score, evaluate_model, load_model
from transplant.evaluation.evaluate import ppl_ratio, prefix_token_id
from transplant.recipe import load_recipe
from transplant.training.distill import ObjectiveConfig, Reader, Teacher, distill_loss, hf_reader, load_teacher, read_pair
from transplant.training.loop import (
    CHARS_PER_TOKEN, MicroBatch, StepOutput, TrainConfig, check_run_outputs, config_dict, epoch_examples, fit, load_config,
    make_accelerator, pack, refuse_sharding, run_directory, text_chunks,
)


@dataclass
class ContinuedConfig(ObjectiveConfig):
    """Everything ``transplant train`` reads; a ``--config`` YAML or a recipe's ``train:`` sets any of it.

    The defaults are the schedule that repaired most per CPU-minute in docs/results.md: ALM,
    20 steps of stage 1 (new rows, lr 1e-3), then 300 of stage 2 (every weight, lr 3e-4),
    4 x 128 tokens a step, Adam's eps 1e-3 for the embedding matrices and 1e-8 for the rest.
    Stage 1 alone, however long, leaves the network as it was and flattens out; stage 2 with
    self-distillation teaches back what the base knew. On a GPU, raise ``batch_size`` and
    ``seq_len``."""

    objective: Literal["lm", "alm"] = "alm"
    steps: int = 20
    warmup_steps: int = 5
    lr: float = 1e-3
    batch_size: int = 4
    seq_len: int = 128
    model: str = ""  # the transplanted model directory (`transplant model -o`)
    corpus: list[str] = field(default_factory=list)  # training text; never the evaluation book
    out: str = ""  # the trained checkpoint
    run_dir: str = ""  # checkpoints, logs, cached base scores; "" = OUT.run next to OUT
    resume: bool = False
    force: bool = False
    trust_remote_code: bool = False  # let the model's and the base's auto_map import their Python files
    rows: Literal["new", "all"] = "new"  # stage 1 trains the initialized rows only, or whole matrices
    weight_decay: float = 0.0  # decay shrinks whole matrices, copied rows too: only with rows: all
    # Embedding rows of tokens absent from a batch get only the softmax's push-down, ~200x
    # smaller than a real gradient (SmolLM2 -> German 16k: 2e-5 vs 5e-3 RMS); with Adam's
    # usual 1e-8 each of them still moved a full step per step, and German got worse while
    # the training loss fell. 1e-3 keeps them nearly still (see TrainConfig.adam_eps).
    embedding_eps: float = 1e-3
    # Every other weight's: Adam's usual. Their gradients are ~3e-4 RMS (SmolLM2 -> German 16k),
    # so 1e-3 held stage 2's network to a fraction of its lr (docs/results.md: overall 1.25 -> 1.13).
    adam_eps: float = 1e-8
    stage2_steps: int = 300  # 0 = no stage 2
    stage2_lr: float = 3e-4  # 1e-4 was behind on every group at every evaluation (docs/results.md)
    eval_corpus: str | None = None  # held-out .txt/.jsonl; ratio per group (lang) against the base
    eval_groups: list[str] = field(default_factory=list)  # keep only these groups ([] = all)
    eval_docs: int = 16  # per group
    eval_length: int = 512  # window length in tokens
    eval_batch: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.embedding_eps > 0:
            raise UserError(f"embedding_eps must be positive, got {self.embedding_eps}")
        if not self.model or not self.out:
            raise UserError("need the transplanted MODEL and -o OUT (on the command line, in --config or in the recipe)")
        model = Path(self.model)
        if not (model / "transplant.json").is_file():
            raise UserError(f"{model} is not a transplanted model (no transplant.json)")
        if self.rows == "new" and not (model / INITIALIZED_FILE).is_file():
            raise UserError(f"{model} has no {INITIALIZED_FILE} (made by an older transplant): "
                            "run `transplant model` again, or train with rows: all")
        if self.rows == "new" and self.weight_decay:
            raise UserError("weight decay would shrink the copied rows too: use weight_decay 0 with rows: new")
        check_corpora(self.corpus)
        if self.eval_corpus is not None:
            check_corpora([self.eval_corpus])
        if self.stage2_steps < 0 or not self.stage2_lr > 0:
            raise UserError(f"need stage2_steps >= 0 and stage2_lr > 0, got {self.stage2_steps} and {self.stage2_lr}")
        if self.eval_docs < 1 or self.eval_length < 2 or self.eval_batch < 1:
            raise UserError("need eval_docs >= 1, eval_length >= 2 and eval_batch >= 1")
        check_run_outputs(self, Path(self.out), RECORD_FILE, self.run_path, self.resume, self.force)

    @property
    def trust(self) -> Trust:
        return Trust(remote_code=self.trust_remote_code)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(f"{self.out}.run")


def load_train_config(config: Path | None = None, recipe: Path | None = None, **cli: Any) -> ContinuedConfig:
    """The config from ``--config`` or a recipe's ``train:`` section (its MODEL defaulting to the
    recipe's ``out``), then the command line; checked whole before anything loads."""
    if config is not None and recipe is not None:
        raise UserError("give the training settings with --config or with --recipe, not both")
    if recipe is None:
        return load_config(ContinuedConfig, config, **cli)
    spec = load_recipe(recipe)
    given = {key: value for key, value in cli.items() if value is not None}
    try:
        return load_config(ContinuedConfig, None, **{"model": spec.out, **spec.train, **given})
    except UserError as e:
        raise UserError(f"{recipe}: train: {e}") from None


def stage_configs(cfg: ContinuedConfig) -> list[tuple[int, TrainConfig]]:
    """(stage number, the loop's config) for each stage that runs."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    stages = [(1, TrainConfig(**shared))]
    if cfg.stage2_steps:
        stages.append((2, TrainConfig(**{**shared, "steps": cfg.stage2_steps, "lr": cfg.stage2_lr})))
    return stages


def eval_documents(cfg: ContinuedConfig) -> list[Document]:
    """The evaluation documents (first ``eval_docs`` of each kept group); [] without an eval corpus."""
    if cfg.eval_corpus is None:
        return []
    docs = load_corpus(Path(cfg.eval_corpus), cfg.eval_docs)
    if cfg.eval_groups:
        docs = [d for d in docs if d.group in cfg.eval_groups]
        if not docs:
            raise UserError(f"{cfg.eval_corpus} has none of the groups {', '.join(cfg.eval_groups)}")
    return docs


# --- the model ---------------------------------------------------------------------------


@dataclass
class Transplanted:
    """A transplanted model ready to train: weights in float32 (mixed precision is autocast's
    job), its tokenizer, the transplant's record, its initialized rows and the stored dtype."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    record: dict[str, Any]
    initialized: torch.Tensor | None  # bool per row; None with rows: all
    dtype: torch.dtype
    teacher: Teacher | None  # objective alm: the base, loaded once for every stage
    # the last evaluation's figures: the next stage starts from the weights they scored
    evaluated: dict[str, float] | None = None


def load_transplanted(cfg: ContinuedConfig) -> Transplanted:
    directory = Path(cfg.model)
    cfg.trust.check_code(directory)
    stored = AutoConfig.from_pretrained(directory, **cfg.trust.code_kwargs()).dtype  # loading in float32 overwrites it
    dtype = getattr(torch, stored) if isinstance(stored, str) else stored or torch.float32
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **cfg.trust.model_kwargs())
    initialized = None
    if cfg.rows == "new":
        initialized = load_file(directory / INITIALIZED_FILE)["initialized"]
        rows = model.get_input_embeddings().weight.shape[0]
        if initialized.shape != (rows,):
            raise UserError(f"{directory}: {INITIALIZED_FILE} has {len(initialized)} rows, the model {rows}")
    record = json.loads((directory / "transplant.json").read_text())
    teacher = None
    if cfg.objective == "alm":
        teacher = load_teacher(record["base"], cfg.alm, cfg.trust)
    return Transplanted(model, load_tokenizer(str(directory), cfg.trust), record, initialized, dtype, teacher)


def embedding_weights(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """The input embedding and, when untied, the lm_head weight."""
    weights = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not weights[0]:
        weights.append(head.weight)
    return weights



# --- the task ----------------------------------------------------------------------------


class ContinuedTask:
    """One stage's side of :func:`transplant.training.loop.fit`: what learns, the batches, the
    loss, the evaluation and (after the last stage) the export."""

    def __init__(self, cfg: ContinuedConfig, stage: int, loaded: Transplanted, docs: list[Document],
                 accelerator: Accelerator):
        self.cfg, self.stage, self.loaded, self.docs, self.accelerator = cfg, stage, loaded, docs, accelerator
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.separator = prefix_token_id(self.tokenizer)  # documents start as evaluation scores them
        self.corpora = check_corpora(cfg.corpus)
        self.last_stage = stage_configs(cfg)[-1][0]
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.base: Evaluation | None = None
        self.trained = False  # a step ran in this stage (before one, the weights are the previous stage's last)
        self.teacher = loaded.teacher
        if self.teacher is not None:  # frozen: bf16 where the run is, it only reads
            dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
            self.teacher.model.to(accelerator.device, dtype=dtype)
        if stage == 1:
            self.model.requires_grad_(False)
            for weight in embedding_weights(self.model):
                weight.requires_grad_(True)
                if loaded.initialized is not None:
                    self.hooks.append(self.mask_gradient(weight, loaded.initialized))
        else:
            self.model.requires_grad_(True)
        trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        what = "the initialized embedding rows" if stage == 1 and loaded.initialized is not None else (
            "the embedding matrices" if stage == 1 else "every weight")
        accelerator.print(f"stage {stage}: training {what} ({trained:,} parameters)")

    def mask_gradient(self, weight: torch.nn.Parameter, initialized: torch.Tensor) -> torch.utils.hooks.RemovableHandle:
        """Zero the gradient of every row that was not initialized (copied, special, padding).

        A hook on the leaf sees the summed gradient once (tied weights: both uses), before
        DDP averages it; FSDP replaces the parameters with sharded ones, whose gradients the
        hook would never see: refused."""
        refuse_sharding(self.accelerator, "stage 1 with rows: new masks rows that FSDP would shard (or use rows: all)")
        frozen = (~initialized).to(self.accelerator.device).unsqueeze(1)
        return weight.register_hook(lambda grad: grad.masked_fill(frozen, 0.0))

    def adam_eps(self) -> dict[torch.nn.Parameter, float]:
        return {weight: self.cfg.embedding_eps for weight in embedding_weights(self.model)}

    def close(self) -> None:
        """Remove this stage's gradient hooks (the next stage trains every row)."""
        for hook in self.hooks:
            hook.remove()

    # --- data and loss ----------------------------------------------------------------

    def examples(self, epoch: int):
        """Packed token windows for ``lm``; text pieces for ``alm`` (each model tokenizes them)."""
        return epoch_examples(self.corpora, epoch, self.cfg.seed, self.cfg.shuffle_buffer, self.cut)

    def cut(self, docs: Iterator[str]) -> Iterator:
        """Documents, in order, into this objective's examples (shuffled afterwards)."""
        if self.teacher is not None:
            return text_chunks(docs, CHARS_PER_TOKEN * self.cfg.seq_len)
        ids = (self.tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in docs)
        return pack(ids, self.cfg.seq_len, self.separator)

    def prepare(self, examples: list, step: int, seed: int) -> MicroBatch:
        """Packed windows as they are (all ``seq_len`` long: equal counts need no weights);
        for ``alm`` the texts read both ways and the teacher's chunks."""
        if self.teacher is None:
            return MicroBatch(torch.stack(examples))
        pair = read_pair(examples, self.reader, self.teacher.reader, self.cfg.seq_len, self.cfg.teacher_tokens)
        chunks = self.teacher.chunks(pair, self.reader.boundary is not None, self.accelerator.device,
                                     self.accelerator.autocast)
        return MicroBatch((pair, chunks), {"chunks": chunks.count, "tokens": pair.student.labels.ge(0).sum()})

    def loss(self, model: torch.nn.Module, batch: MicroBatch, share: dict[str, torch.Tensor]) -> StepOutput:
        self.trained = True
        if self.teacher is None:
            ids = batch.inputs.to(self.accelerator.device)
            return StepOutput(model(input_ids=ids, labels=ids).loss, ids.numel() - len(ids))  # labels shift inside
        return self.distill(model, batch, share)

    def distill(self, model: torch.nn.Module, batch: MicroBatch, share: dict[str, torch.Tensor]) -> StepOutput:
        """``alm_weight`` x ALM against the base on the same text + ``lm_weight`` x the LM loss,
        each a mean over the whole step's chunks and tokens (``share``)."""
        pair, chunks = batch.inputs
        student = pair.student.to(self.accelerator.device)
        logits = model(input_ids=student.ids, attention_mask=student.attention).logits
        losses = distill_loss(logits, chunks, pair, self.reader, self.teacher.config)
        alm, lm = losses.alm, losses.lm
        metrics = {"alm": alm.loss.item(), "lm": lm.item(), "chunks": float(alm.num_chunks),
                   "chunk_gap": alm.mean_abs_logp_diff.item()}
        loss = self.cfg.alm_weight * alm.loss * share["chunks"] + self.cfg.lm_weight * lm * share["tokens"]
        return StepOutput(loss, int(batch.counts["tokens"]), metrics)

    @functools.cached_property
    def reader(self) -> Reader:
        """How the model being trained reads text (its tokenizer, prefix and word-boundary tokens)."""
        return hf_reader(self.tokenizer, self.model.get_input_embeddings().weight.shape[0])

    # --- evaluation and export ---------------------------------------------------------

    def evaluate(self, model: PreTrainedModel) -> dict[str, float]:
        """Perplexity ratio to the base per group (and overall), plus the model's bits/byte.
        A stage's first evaluation, before it trained, is the previous stage's last: not run again."""
        if not self.docs:
            return {}
        if not self.trained and self.loaded.evaluated is not None:
            return self.loaded.evaluated
        self.loaded.evaluated = self.score(model)
        return self.loaded.evaluated

    def score(self, model: PreTrainedModel) -> dict[str, float]:
        config = EvalConfig(batch_size=self.cfg.eval_batch, max_length=self.cfg.eval_length)
        new = evaluate_model(model, self.tokenizer, self.docs, "trained", config)  # under FSDP on every process
        if not self.accelerator.is_main_process:
            return {}  # the main process reports; it alone scores the base
        teacher = None if self.teacher is None or self.teacher.tokenizer is None else \
            (self.teacher.model, self.teacher.tokenizer)
        self.base = self.base or base_evaluation(self.cfg, self.loaded.record["base"], self.docs, config,
                                                 self.accelerator, teacher)
        figures = {f"ratio/{group}": value for group, value in ppl_ratio(new, self.base).items()}
        return figures | {f"bpb/{group}": score.bits_per_byte for group, score in new.groups.items()}

    def export(self, model: PreTrainedModel, run: Path) -> None:
        """After the last stage, the trained checkpoint; earlier stages leave only RUN/stageN."""
        if self.stage != self.last_stage:
            return
        weights = self.accelerator.get_state_dict(model)  # under FSDP gathered from every process, to the main one
        if self.accelerator.is_main_process:
            export_trained(model, weights, self.loaded, self.cfg)

    def should_stop(self) -> bool:
        return False  # a fixed budget of steps: the curve is the result

    def state_objects(self) -> list:
        return []


def base_evaluation(cfg: ContinuedConfig, base: str, docs: list[Document], config: EvalConfig,
                    accelerator: Accelerator, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
                    ) -> Evaluation:
    """The base model's scores on the eval documents, computed once per run (cached in RUN:
    a resume or a second stage does not load the base again). Scored under the same autocast
    as the trained model, so the ratio compares like with like. ``loaded``: the base already
    in memory (ALM's teacher), scored as it is instead of loaded again."""
    cache = cfg.run_path / "base-eval.json"
    key = {"base": base, "corpus": cfg.eval_corpus, "groups": cfg.eval_groups, "docs": cfg.eval_docs,
           "length": cfg.eval_length, "precision": accelerator.mixed_precision}
    if cache.is_file() and (saved := json.loads(cache.read_text()))["key"] == key:
        return Evaluation(base, {g: Score.from_fields(s) for g, s in saved["groups"].items()})
    model, tokenizer = loaded or load_model(base, trust=cfg.trust)
    with accelerator.autocast():
        evaluation = evaluate_model(model.to(accelerator.device), tokenizer, docs, base, config)
    del model
    groups = {g: dataclasses.asdict(s) for g, s in evaluation.groups.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "groups": groups}, indent=2, allow_nan=False))
    return evaluation


def stage_summary(run: Path, number: int) -> dict[str, Any]:
    """Steps, tokens and first/last evaluation of one stage, from its log."""
    records = [json.loads(line) for line in (run / f"stage{number}" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    return {
        "stage": number,
        "steps": steps[-1]["step"] if steps else 0,
        "tokens": steps[-1]["tokens"] if steps else 0,
        "final_loss": steps[-1]["loss"] if steps else None,
        "eval_start": evals[0]["eval"] if evals else None,
        "eval_end": evals[-1]["eval"] if evals else None,
    }


def stored_weights(model: PreTrainedModel, weights: dict[str, torch.Tensor],
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``weights`` in ``dtype``, every name of one parameter (tied embeddings) on one tensor.

    save_pretrained writes a tied weight once only if its names share a tensor: casting makes a
    tensor per name, and FSDP gathers each name on its own."""
    first: dict[int, str] = {}
    origin = {name: first.setdefault(id(param), name) for name, param in model.named_parameters(remove_duplicate=False)}
    cast: dict[str, torch.Tensor] = {}  # by the parameter's first name
    for name, weight in weights.items():
        if origin.get(name, name) not in cast:
            cast[origin.get(name, name)] = weight.to(dtype) if weight.is_floating_point() else weight
    return {name: cast[origin.get(name, name)] for name in weights}


def export_trained(model: PreTrainedModel, weights: dict[str, torch.Tensor], loaded: Transplanted,
                   cfg: ContinuedConfig) -> None:
    """The trained model as a normal HF checkpoint (``weights``, its full state dict, in the
    transplant's dtype; config, generation config, tokenizer), written atomically like
    ``transplant model``'s. Under FSDP ``model`` holds only this process's shards: it gives the
    config and the layout, ``weights`` the values."""
    record = {**loaded.record, "training": {
        "config": config_dict(cfg),
        "stages": [stage_summary(cfg.run_path, number) for number, _ in stage_configs(cfg)],
    }}
    with atomic_path(Path(cfg.out), existing="replace" if cfg.force else "refuse") as tmp:
        model.save_pretrained(tmp, state_dict=stored_weights(model, weights, loaded.dtype))
        model.config.dtype = loaded.dtype  # save_pretrained wrote the dtype the model trained in
        model.config.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        if (Path(cfg.model) / INITIALIZED_FILE).is_file():
            shutil.copy(Path(cfg.model) / INITIALIZED_FILE, tmp / INITIALIZED_FILE)
        (tmp / "transplant.json").write_text(json.dumps(record, indent=2, default=str, allow_nan=False))


# --- the run -----------------------------------------------------------------------------


def train(cfg: ContinuedConfig) -> PreTrainedModel:
    """Run every stage of ``cfg`` and write the trained checkpoint to ``cfg.out``; returns the
    trained model (on every process; under FSDP each holds its own shards of the weights)."""
    docs = eval_documents(cfg)  # a bad eval corpus is one line, before any model loads
    read_corpora(check_corpora(cfg.corpus))  # and so is a bad line anywhere in the training corpus
    state = make_accelerator(cfg)  # a launch this loop cannot run as asked is one line, before any model loads
    loaded = load_transplanted(cfg)
    with run_directory(cfg.run_path, config_dict(cfg), cfg.resume, state):
        for number, stage_cfg in stage_configs(cfg):
            accelerator = make_accelerator(stage_cfg)
            task = ContinuedTask(cfg, number, loaded, docs, accelerator)
            fit(task, stage_cfg, cfg.run_path / f"stage{number}", accelerator, resume=cfg.resume)
            task.close()
            accelerator.free_memory()  # drops the stage's DDP wrapper and optimizer
    return loaded.model
