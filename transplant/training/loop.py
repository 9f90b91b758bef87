"""What every training loop here needs: corpus streaming, packing, schedule, and the loop.

Two trainers use this module (the hypernetwork of :mod:`transplant.hypernet.zett_train` and continued
pretraining of a transplanted model); each supplies a :class:`Task` — its trainable module,
its examples and its loss — and :func:`fit` runs the same loop for both on ``accelerate``:
one process by default, many under ``accelerate launch`` with nothing home-made for
distribution. Under FSDP (FSDP2: parameters sharded in place) the model's forwards and the
gathering of its weights are collectives, so evaluation and export run on every process and
only the main one logs and writes.

Resuming is exact: a checkpoint holds the weights, optimizer, schedule and RNG states
(``Accelerator.save_state``), the step count and the data position. Data positions are two
integers (epoch, examples consumed) and resuming replays the stream up to them, so nothing
about the data has to be serialized and a resumed run sees exactly the examples an
uninterrupted one would. A checkpoint becomes visible only when it is whole (written under a
temporary name, then renamed), and resuming takes the newest complete one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file

from transplant.inputs.corpus import texts
from transplant.errors import UserError
from transplant.io.atomic import TOOL, check_output, fsync_dir, fsync_tree, refuse_overlap
from transplant.options import build_options, check_finite

T = TypeVar("T")
C = TypeVar("C")


# --- configuration -------------------------------------------------------------------


@dataclass
class TrainConfig:
    """The knobs of the shared loop; trainers subclass it to add their own fields.

    ``batch_size`` is examples per process per micro-step, so an optimizer step sees
    ``batch_size * grad_accum * processes`` examples.
    """

    steps: int = 1000
    warmup_steps: int = 50
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.01
    # Adam divides each weight's step by the root of its own squared-gradient average, so a
    # weight with a tiny but steady gradient moves as fast as one with a large gradient. An
    # embedding row of a token absent from the batch gets only the softmax's small push-down;
    # a larger eps keeps such rows nearly still while rows with real gradients move at ~lr.
    adam_eps: float = 1e-8
    batch_size: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the start and the end
    save_every: int = 100
    keep_checkpoints: int = 2
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto = bf16 where CUDA has it
    shuffle_buffer: int = 1000  # documents, then examples, mixed at a time; sources often come one after another
    seed: int = 0

    def __post_init__(self) -> None:
        check_finite(self)  # every float field, this class's and its subclasses'
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.adam_eps > 0:
            raise UserError(f"adam_eps must be positive, got {self.adam_eps}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr} and {self.min_lr_ratio}")
        if not self.clip > 0:
            raise UserError(f"clip must be positive (the largest gradient norm), got {self.clip}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must not be negative, got {self.weight_decay}")


def load_config(cls: type[C], path: Path | None = None, **overrides: Any) -> C:
    """A ``cls`` config from a YAML mapping, then ``overrides`` (None values ignored).

    Unknown keys are refused with one line naming the known ones, before anything loads.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a mapping of config keys")
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k.replace("-", "_") for k in values if k.replace("-", "_") not in known)
    if unknown:
        where = f" in {path}" if path else ""
        raise UserError(f"unknown config key {unknown[0]!r}{where} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():  # a single path where a list of them is expected
        if typing.get_origin(hints[key.replace("-", "_")]) is list and isinstance(value, (str, Path)):
            values[key] = [value]
    return build_options(cls, values)


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready copy of a config dataclass (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


# --- the run directory -------------------------------------------------------------------

RUN_RECORD = "run.json"  # marks a run directory as the tool's and holds the run's settings
OUTPUT_FIELDS = ("out", "run_dir")  # config fields that name what a run writes
# Settings a resume may change: where the result goes and how often the run reports and saves.
# Any other (corpus, lr, seq_len, steps, seed, ...) would make the result neither run's.
RESUMABLE_CHANGES = frozenset({*OUTPUT_FIELDS, "resume", "force", "log_every", "save_every", "keep_checkpoints"})


def config_inputs(config: Any) -> list[str]:
    """Every path a config names outside :data:`OUTPUT_FIELDS` (model, base, corpora, vectors,
    ...): what the run reads, so what its outputs must stay clear of."""
    values = [getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in OUTPUT_FIELDS]
    return [v for value in values for v in (value if isinstance(value, list) else [value]) if isinstance(v, (str, Path))]


def check_run_outputs(config: Any, out: Path, record: str, run: Path, resume: bool, force: bool) -> None:
    """Refuse, before anything loads, a run whose result ``out`` (marked by ``record``) or run
    directory would destroy what the tool does not own, overlap an input, or overlap each other
    (the export would replace the run's checkpoints, or a fresh run the result)."""
    refuse_overlap(run, [out], role="output")
    inputs = config_inputs(config)
    check_output(out, record, inputs, replace=force)
    check_output(run, RUN_RECORD, inputs, replace=resume or force,
                 exists="holds an earlier run; pass --resume to continue it or --force to start over")
    if resume and (run / RUN_RECORD).is_file():
        _check_same_settings(run, config_dict(config))


def _check_same_settings(run: Path, config: dict[str, Any]) -> None:
    """Refuse to resume ``run`` under settings other than those it started with (its run.json)."""
    saved = json.loads((run / RUN_RECORD).read_text()).get("config", {})
    changed = [f"{key} {saved.get(key)} -> {value}" for key, value in config.items()
               if key not in RESUMABLE_CHANGES and saved.get(key) != value]
    if changed:
        raise UserError(f"{run} holds a run with other settings ({', '.join(changed)}): resume it with the same "
                        "ones, or pass --force to start over")


@contextmanager
def run_directory(run: Path, config: dict[str, Any], resume: bool, state: Accelerator) -> Iterator[Path]:
    """The directory of one training run, for the block that trains; ``state`` is the run's
    Accelerator (which process is the main one).

    A new run (no ``resume``, or nothing to resume) replaces the directory, which the config
    check made sure is the tool's, and marks it with :data:`RUN_RECORD`. If the block fails
    before any checkpoint was written, the directory goes too: it holds nothing to resume, and
    left behind it would only block the rerun.

    Every process first waits for the others: each checked its settings against the directory
    as it was, and the main process must not create it under one still checking."""
    state.wait_for_everyone()
    continuing = resume and (run / RUN_RECORD).is_file()
    state.wait_for_everyone()
    if not continuing and state.is_main_process:
        check_output(run, RUN_RECORD, replace=True)
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        (run / RUN_RECORD).write_text(json.dumps({"tool": TOOL, "config": config}, indent=2) + "\n")
    state.wait_for_everyone()
    try:
        yield run
    except BaseException:
        if not continuing and state.is_main_process and not any(checkpoints(d.parent) for d in run.rglob("checkpoints")):
            shutil.rmtree(run, ignore_errors=True)
        raise


# --- data --------------------------------------------------------------------------------


def shuffled(items: Iterable[T], buffer: int, rng: random.Random) -> Iterator[T]:
    """A streaming shuffle: keep ``buffer`` items, emit a random one as each new one comes.
    Mixes sources that a corpus file holds one after another without reading it all."""
    if buffer <= 1:
        yield from items
        return
    pool: list[T] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


def documents(paths: Sequence[Path], epoch: int, seed: int = 0, buffer: int = 0) -> Iterator[str]:
    """All documents of ``paths`` for one epoch, shuffled through a buffer seeded by epoch."""
    stream = itertools.chain.from_iterable(texts(p) for p in paths)
    return shuffled(stream, buffer, random.Random(f"{seed}:{epoch}"))


def epoch_examples(paths: Sequence[Path], epoch: int, seed: int, buffer: int,
                   cut: Callable[[Iterator[str]], Iterable[T]]) -> Iterator[T]:
    """One epoch of training examples: the documents shuffled, ``cut`` into examples
    (:func:`text_chunks`, or tokens :func:`pack`-ed), and the examples shuffled again.

    The second shuffle matters as much as the first: a long document is cut into many
    examples in a row (a 60 kB handbook page is 80 pieces of 768 characters, 20 steps of 4),
    and without it a batch, and many steps in a row, is one document in one language; the
    model drifts toward it and away from the rest (docs/results.md)."""
    docs = documents(paths, epoch, seed, buffer)
    return shuffled(iter(cut(docs)), buffer, random.Random(f"{seed}:{epoch}:examples"))


# Characters of text per example for trainers that tokenize text themselves (text_chunks):
# enough for ``seq_len`` tokens of most tokenizers (~4-5 characters each); what the kept
# tokens do not cover is dropped.
CHARS_PER_TOKEN = 6


def text_chunks(docs: Iterable[str], chars: int, separator: str = "\n\n") -> Iterator[str]:
    """Documents joined by ``separator`` and cut into pieces of exactly ``chars`` characters.

    The text-level twin of :func:`pack` for trainers that tokenize each batch differently
    (the hypernetwork samples a new tokenizer every step): short documents share a chunk,
    long ones span several, and no example is mostly padding. The last partial chunk is dropped.
    """
    buffer = ""
    for i, doc in enumerate(docs):
        buffer += (separator if i else "") + doc
        while len(buffer) >= chars:
            yield buffer[:chars]
            buffer = buffer[chars:]


def pack(token_lists: Iterable[Sequence[int]], seq_len: int, separator: int | None = None) -> Iterator[torch.Tensor]:
    """Token lists (one per document) concatenated, ``separator`` before each, and cut into
    ``seq_len`` windows. Every token lands in exactly one window, in order; the last partial
    window is dropped."""
    buffer: list[int] = []
    for ids in token_lists:
        if separator is not None:
            buffer.append(separator)
        buffer.extend(ids)
        while len(buffer) >= seq_len:
            yield torch.tensor(buffer[:seq_len], dtype=torch.long)
            del buffer[:seq_len]


class Stream(Generic[T]):
    """An endless, resumable stream of examples: epoch after epoch of ``make(epoch)``.

    Its state is (epoch, examples taken this epoch); :meth:`load_state_dict` replays the
    epoch up to that point, so any deterministic ``make`` resumes exactly.
    """

    def __init__(self, make: Callable[[int], Iterable[T]]):
        self.make = make
        self.epoch = 0
        self.position = 0
        self._it = iter(make(0))

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        for _ in range(2):
            try:
                item = next(self._it)
                self.position += 1
                return item
            except StopIteration:
                if self.position == 0:
                    break
                self.epoch, self.position = self.epoch + 1, 0
                self._it = iter(self.make(self.epoch))
        raise UserError("the training corpus yields no examples (too short for one sequence?)")

    def take(self, n: int) -> list[T]:
        return [next(self) for _ in range(n)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._it = itertools.islice(iter(self.make(self.epoch)), self.position, None)


# --- optimization ----------------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then a cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, eps: Mapping[torch.nn.Parameter, float] | None = None
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on biases, norms and other vectors) with warmup + cosine;
    ``eps`` names the parameters whose Adam eps is not ``cfg.adam_eps``."""
    eps = eps or {}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            key = (cfg.weight_decay if p.dim() >= 2 else 0.0, eps.get(p, cfg.adam_eps))
            groups.setdefault(key, []).append(p)
    # fused: one kernel for every tensor; on the CPU ×9 faster than the default per-tensor loop
    # (257M parameters, SmolLM2 with a 262k vocabulary: 0.11 s against 1.0 s a step)
    optimizer = torch.optim.AdamW([{"params": params, "weight_decay": decay, "eps": group_eps}
                                   for (decay, group_eps), params in groups.items()],
                                  lr=cfg.lr, betas=(0.9, 0.95), eps=cfg.adam_eps, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    return optimizer, schedule


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """One Accelerator for the run: bf16 where CUDA supports it (``auto``), seeds set.

    DDP does not re-broadcast buffers: trainers keep large frozen tensors (base embedding
    matrices) as buffers, identical on every rank by construction.
    """
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    check_sharding(accelerator)
    set_seed(cfg.seed)
    return accelerator


def check_sharding(accelerator: Accelerator) -> None:
    """Refuse, in one line, an FSDP set-up this loop cannot run as asked.

    accelerate runs an FSDP config only on GPUs: elsewhere each process silently becomes plain
    data parallel (``--cpu``) or a run of its own, every one writing the same outputs. The loop
    supports FSDP2 (``fsdp_version: 2``, parameters sharded in place, so evaluation and export
    see the model they trained) with ``FULL_STATE_DICT`` checkpoints, which a resume reads with
    torch's weights-only unpickler; ``SHARDED_STATE_DICT`` would write torch.distributed.checkpoint
    folders whose metadata a resume unpickles whole."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not is_sharded(accelerator):
        raise UserError(f"the accelerate config asks for FSDP, which accelerate runs only on GPUs; here it would "
                        f"run as {accelerator.distributed_type.value} on {accelerator.num_processes} process(es): "
                        "use recipes/accelerate/cpu.yaml or ddp.yaml")
    if not is_sharded(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise UserError(f"fsdp_version {plugin.fsdp_version} is not supported: use fsdp_version: 2 "
                        "(recipes/accelerate/fsdp.yaml)")
    if plugin.state_dict_type.name != "FULL_STATE_DICT":
        raise UserError(f"fsdp_state_dict_type {plugin.state_dict_type.name} would write checkpoints that a resume "
                        "unpickles: use fsdp_state_dict_type: FULL_STATE_DICT (recipes/accelerate/fsdp.yaml)")


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the model is sharded across processes (FSDP): its forward passes and the gathering
    of its weights are then collectives that every process must take part in."""
    return accelerator.distributed_type == DistributedType.FSDP


def reshard(model: torch.nn.Module) -> None:
    """Shard again the weights FSDP2 gathered for forwards that had no backward (evaluation).

    The root module keeps its weights gathered after a forward, for the backward that usually
    follows; without one they stay so, and the next stage's optimizer would be built on the
    gathered copies instead of the sharded parameters."""
    from torch.distributed.fsdp import FSDPModule  # torch >= 2.6, which FSDP2 needs anyway

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def refuse_sharding(accelerator: Accelerator, why: str) -> None:
    """One line for a trainer that cannot run under FSDP, saying ``why``."""
    if is_sharded(accelerator):
        raise UserError(f"{why}: use one process or DDP (recipes/accelerate/ddp.yaml)")


def step_seed(seed: int, step: int, micro: int) -> int:
    """A seed for one micro-step, independent of what ran before (so resumes agree) and the same
    on every process: a step's random choices (the hypernetwork's sampled tokenizer) belong to
    its global batch, as one process drawing them for the whole batch would make them. (The
    trailing ``:0`` was rank 0's: one-process runs keep the seeds they had.)"""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:0".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def step_shares(accelerator: Accelerator, counts: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """For each micro-step of one optimizer step, each loss term's share: the micro-step's
    count (tokens, chunks: what the term averages over) times the number of micro-steps and
    processes, over the step's total; all ones for one micro-step on one process.

    Gradients are averaged over micro-steps and processes, so a term's mean over one
    micro-step's items times its share is the mean over every item of the step: the step one
    process reading the whole batch at once would take. Where counts vary (ALM's chunks per
    text, a sampled tokenizer's tokens), plain means would weigh each item by how few shared
    its micro-step. One all-reduce a step, of one number per term."""
    parts, names = accelerator.num_processes * len(counts), sorted(counts[0]) if counts else []
    if parts == 1 or not names:
        return [{name: torch.ones((), device=accelerator.device) for name in names} for _ in counts]
    local = torch.stack([torch.stack([c[name].detach().to(accelerator.device, torch.float32) for name in names])
                         for c in counts])  # (micro-steps, terms)
    total = accelerator.reduce(local.sum(0), "sum").clamp_min(1)
    return [dict(zip(names, row * parts / total)) for row in local]


# --- the loop ----------------------------------------------------------------------------


@dataclass
class StepOutput:
    """What a task's loss returns for one micro-batch: the loss to minimize, the number of
    target tokens it covers (for tokens/s), and extra figures for the log."""

    loss: torch.Tensor
    tokens: int
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass
class MicroBatch:
    """One micro-step's examples after the work that needs no gradient (tokenizing, a
    teacher's pass), with the counts its loss terms average over, by name: :func:`fit`
    prepares every micro-step of an optimizer step before the first backward, so that each
    term can be weighted by its micro-step's share of the step (:func:`step_shares`)."""

    inputs: Any
    counts: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class Task(Protocol):
    """What a trainer supplies to :func:`fit`."""

    model: torch.nn.Module  # the module whose parameters are trained

    def examples(self, epoch: int) -> Iterable[Any]:
        """The examples of one epoch, deterministic in ``epoch``."""
        ...

    def prepare(self, examples: list[Any], step: int, seed: int) -> MicroBatch:
        """This process's ``examples`` for one micro-step of optimizer step ``step`` (0-based),
        ready for :meth:`loss`; ``seed`` (the same on every process) for anything random in it."""
        ...

    def loss(self, model: torch.nn.Module, batch: MicroBatch, share: dict[str, torch.Tensor]) -> StepOutput:
        """The loss on one prepared micro-step; each term averaged over its items is weighted
        by ``share[name]`` of its count (``batch.counts``)."""
        ...

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out figures for the log (may return {}). Called on the main process, and under
        FSDP on every process (the sharded model's forwards are collectives): only the main
        process's figures are logged."""
        ...

    def should_stop(self) -> bool:
        """Asked after each evaluation (main process only): True ends the run there, e.g.
        when the held-out figure has stopped improving (early stopping)."""
        ...

    def export(self, model: torch.nn.Module, run: Path) -> None:
        """Write the finished artifact; ``run`` is the directory :func:`fit` trained in (its
        checkpoints and ``log.jsonl``). Called on the main process, and under FSDP on every
        process (gathering the full weights, ``Accelerator.get_state_dict``, is a collective):
        only the main process writes."""
        ...

    def state_objects(self) -> list[Any]:
        """Extra objects with state_dict/load_state_dict to keep in checkpoints."""
        ...

    def adam_eps(self) -> dict[torch.nn.Parameter, float]:
        """Parameters whose Adam eps is not ``cfg.adam_eps`` (embedding matrices, whose rows of
        tokens absent from a batch get only a tiny gradient); usually {}."""
        ...


@dataclass
class Progress:
    """Counters a checkpoint keeps besides weights: steps done and tokens seen."""

    step: int = 0
    tokens: int = 0

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.tokens = state["step"], state["tokens"]


# --- checkpoints ---------------------------------------------------------------------------
#
# A checkpoint is written as checkpoints/step-N.tmp and renamed to step-N when it is whole, so
# a kill or a full disk mid-write leaves at worst a .tmp folder. Besides accelerate's files
# (weights, optimizer, schedule, RNG; read back by torch's weights-only unpickler) it holds the
# loop's own state in JSON and safetensors, never a pickle, and STATE_FILE, written last,
# lists every file with its size: a checkpoint is complete only when it holds exactly those.

STATE_FILE = "state.json"
TENSORS_FILE = "state.safetensors"
CHECKPOINT_NAME = re.compile(r"step-\d{8}")
TENSOR_KEY = "__tensor__"


def _checkpoint_dirs(out: Path) -> list[Path]:
    """Every checkpoint folder of a run, complete or not, oldest first."""
    return sorted(p for p in (out / "checkpoints").glob("step-*") if p.is_dir())


def _files(directory: Path) -> dict[str, int]:
    """Every file below ``directory`` (relative name -> size)."""
    return {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}


def _complete(checkpoint: Path) -> bool:
    """Renamed into place, and holding exactly the files its manifest lists, at their sizes
    (nothing missing or cut short, and nothing added that a resume would load)."""
    if not CHECKPOINT_NAME.fullmatch(checkpoint.name):
        return False
    try:
        listed = json.loads((checkpoint / STATE_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    found = _files(checkpoint)
    del found[STATE_FILE]
    return found == listed


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first."""
    return [p for p in _checkpoint_dirs(out) if _complete(p)]


def _to_json(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``value`` with every tensor moved to ``tensors`` and replaced by a reference to its key."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {TENSOR_KEY: key}
    if isinstance(value, dict):
        return {k: _to_json(v, tensors, f"{key}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, tensors, f"{key}/{i}") for i, v in enumerate(value)]
    return value


def _from_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {TENSOR_KEY}:
            return tensors[value[TENSOR_KEY]]
        return {k: _from_json(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
    return value


def _write_state(objects: Sequence[Any], directory: Path) -> None:
    """The objects' state dicts (JSON, tensors in safetensors), then the manifest of the folder."""
    tensors: dict[str, torch.Tensor] = {}
    states = [_to_json(obj.state_dict(), tensors, str(i)) for i, obj in enumerate(objects)]
    if tensors:
        save_file(tensors, directory / TENSORS_FILE)
    (directory / STATE_FILE).write_text(json.dumps({"objects": states, "files": _files(directory)}))


def _read_state(objects: Sequence[Any], directory: Path) -> None:
    tensors = load_file(directory / TENSORS_FILE) if (directory / TENSORS_FILE).is_file() else {}
    states = json.loads((directory / STATE_FILE).read_text())["objects"]
    for obj, state in zip(objects, states, strict=True):
        obj.load_state_dict(_from_json(state, tensors))


def _save(accelerator: Accelerator, out: Path, step: int, keep: int, objects: Sequence[Any]) -> None:
    """Write checkpoint ``step`` under a temporary name, rename it when whole, keep the newest ``keep``."""
    final = out / "checkpoints" / f"step-{step:08d}"
    partial = final.with_name(f"{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_state(objects, partial)
        fsync_tree(partial)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        fsync_dir(final.parent)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _resume(accelerator: Accelerator, out: Path, objects: Sequence[Any]) -> bool:
    """Load the newest complete checkpoint of ``out``, if any, and say which; checkpoints cut
    mid-write are left out and removed. Whether there was one to resume from."""
    complete = checkpoints(out)
    broken = [p for p in _checkpoint_dirs(out) if p not in complete]
    if complete:
        accelerator.load_state(str(complete[-1]))
        _read_state(objects, complete[-1])
    skipped = f"; left out incomplete {', '.join(p.name for p in broken)}" if broken else ""
    accelerator.print(f"resuming from {complete[-1]}{skipped}" if complete else
                      f"no complete checkpoint in {out}: starting from step 0{skipped}")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in broken:
            shutil.rmtree(path)
    return bool(complete)


def _log(accelerator: Accelerator, out: Path, record: dict[str, Any]) -> None:
    if accelerator.is_main_process:
        with (out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")


def _truncate_log(accelerator: Accelerator, out: Path, step: int) -> None:
    """Drop log lines of steps after ``step``: they are redone after a resume."""
    path = out / "log.jsonl"
    if accelerator.is_main_process and path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def fit(task: Task, cfg: TrainConfig, out: Path, accelerator: Accelerator, resume: bool = False) -> Progress:
    """Train ``task.model`` for ``cfg.steps`` optimizer steps; checkpoints and the log in ``out``.

    With ``resume``, continue from the newest checkpoint in ``out`` (an uninterrupted run
    and an interrupted-then-resumed one log the same losses and end with the same weights).
    """
    out = Path(out)
    optimizer, schedule = make_optimizer(task.model, cfg, task.adam_eps())
    model, optimizer, schedule = accelerator.prepare(task.model, optimizer, schedule)
    stream: Stream[Any] = Stream(task.examples)
    progress = Progress()
    objects = [progress, stream, *task.state_objects()]  # kept in checkpoints beside accelerate's state
    if resume and _resume(accelerator, out, objects):
        _truncate_log(accelerator, out, progress.step)
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").unlink(missing_ok=True)
    rank, per_step = accelerator.process_index, cfg.batch_size * accelerator.num_processes
    every_process = is_sharded(accelerator)  # evaluation and export take part in collectives

    def evaluate() -> bool:
        """Log the held-out figures; whether the task asks to stop, the main process's
        answer on every process, so that all of them leave the loop together."""
        stop = [False]
        if every_process or accelerator.is_main_process:
            model.eval()
            figures = task.evaluate(accelerator.unwrap_model(model))
            model.train()
            if every_process:
                reshard(model)
        if accelerator.is_main_process:
            if figures:
                _log(accelerator, out, {"step": progress.step, "eval": figures})
                accelerator.print(f"eval @ {progress.step}: " + " ".join(f"{k} {v:.4f}" for k, v in figures.items()))
            stop[0] = task.should_stop()
        accelerator.wait_for_everyone()
        return broadcast_object_list(stop)[0]

    stopped = False
    if progress.step == 0:
        evaluate()
    started, start_tokens, start_step = time.perf_counter(), progress.tokens, progress.step
    model.train()
    while progress.step < cfg.steps and not stopped:
        losses, tokens, metrics = [], 0, {}
        batches = [task.prepare(stream.take(per_step)[rank * cfg.batch_size : (rank + 1) * cfg.batch_size],
                                progress.step, step_seed(cfg.seed, progress.step, micro)) for micro in range(cfg.grad_accum)]
        for batch, share in zip(batches, step_shares(accelerator, [batch.counts for batch in batches])):
            with accelerator.accumulate(model):
                result = task.loss(model, batch, share)
                accelerator.backward(result.loss)
                if accelerator.sync_gradients:  # the norm before clipping: how much of each step the clip keeps
                    norm = accelerator.clip_grad_norm_(model.parameters(), cfg.clip)
                    metrics["grad_norm"] = float(norm)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(result.loss.detach())
            tokens += result.tokens
            metrics |= {k: metrics.get(k, 0.0) + v / cfg.grad_accum for k, v in result.metrics.items()}
        schedule.step()
        loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item()
        if not math.isfinite(loss):  # the same reduced value on every process: all stop together
            raise UserError(f"the loss is {loss} at step {progress.step + 1}: training stopped "
                            "(NaN weights in the model, or try a lower lr)")
        progress.tokens += int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum"))
        progress.step += 1
        elapsed = time.perf_counter() - started
        rate = (progress.tokens - start_tokens) / elapsed
        eta = elapsed / (progress.step - start_step) * (cfg.steps - progress.step)
        _log(accelerator, out, {"step": progress.step, "loss": loss, "lr": schedule.get_last_lr()[0],
                                "tokens": progress.tokens, "tokens_per_s": rate, **metrics})
        if progress.step % cfg.log_every == 0 or progress.step == cfg.steps:
            accelerator.print(f"step {progress.step}/{cfg.steps} | loss {loss:.4f} | lr {schedule.get_last_lr()[0]:.2e}"
                              f" | {rate:,.0f} tok/s | eta {eta / 60:.1f} min")
        if cfg.eval_every and progress.step % cfg.eval_every == 0 and progress.step < cfg.steps:
            stopped = evaluate()
        if progress.step % cfg.save_every == 0 or progress.step == cfg.steps or stopped:
            _save(accelerator, out, progress.step, cfg.keep_checkpoints, objects)
    if stopped:
        accelerator.print(f"stopped early at step {progress.step} of {cfg.steps}")
    else:
        evaluate()
    if every_process or accelerator.is_main_process:
        task.export(accelerator.unwrap_model(model), out)
    accelerator.wait_for_everyone()
    return progress

