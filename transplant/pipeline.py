"""The whole transplant, top to bottom: resolve, load, match, initialize, export."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from transplant import __version__
from transplant.device import resolve_device
from transplant.vocab.chat import ChatMode, adopt_chat_template
from transplant.io.atomic import check_output
from transplant.io.checkpoint import INITIALIZED_FILE, RECORD_FILE, Embeddings, export, model_config, read_embeddings
from transplant.io.gguf_export import check_gguf, export_gguf
from transplant.errors import UserError
from transplant.methods import registry
from transplant.matrices import build_matrices
from transplant.methods.base import Context
from transplant.options import build_options
from transplant.progress import Stages
from transplant.io.sources import resolve_model
from transplant.io.tokenizer import check_fits, load_tokenizer
from transplant.io.trust import Trust
from transplant.vocab.matching import match_vocabularies
from transplant.vocab.numbers import compare_numbers


# Padding rounds the rows up for GPU-friendly shapes (8, 64, 128 are usual); beyond this
# it only adds zero rows, and a slip such as 10**9 would allocate gigabytes of them.
MAX_PAD_MULTIPLE = 1 << 16


@dataclass(kw_only=True)
class TransplantSettings:
    """How a base gets a new vocabulary, whatever the vocabulary: shared by one transplant
    (:class:`TransplantConfig`) and a Hydra model's heads (:class:`transplant.hydra.HydraConfig`)."""

    method: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    force: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str = "cpu"
    chat_template: ChatMode = "base"
    pad_to_multiple_of: int = 1

    @property
    def trust(self) -> Trust:
        return Trust(remote_code=self.trust_remote_code, pickle=self.allow_pickle)

    def settings(self) -> dict[str, Any]:
        """These fields by name (``options`` copied), to build another config from."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TransplantSettings)} | \
            {"options": dict(self.options)}


@dataclass
class TransplantConfig(TransplantSettings):
    base: str
    tokenizer: str
    out: Path
    donor: str | None = None
    gguf: str | None = None  # also write OUT/model-<gguf>.gguf (f16, bf16, q8_0)


@dataclass
class TransplantResult:
    out: Path
    counts: dict[str, int]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # one line each, for the caller to show


def _check_donor(donor: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase) -> None:
    new_vocab = new.get_vocab()
    mismatched = sum(new_vocab.get(token) != i for token, i in donor.get_vocab().items())
    if mismatched:
        raise UserError(f"the donor's tokenizer is not the new tokenizer ({mismatched} tokens differ)")


def _load_donor(cfg: TransplantConfig, new: PreTrainedTokenizerBase, required: bool) -> tuple[Path, Embeddings] | None:
    """The donor: ``--donor``, or else NEW itself when it names a model. A method that only
    uses a donor (``uses_donor``) runs without one when NEW is just a tokenizer."""
    ref = cfg.donor or cfg.tokenizer
    try:
        directory = resolve_model(ref, cfg.trust)
    except UserError as e:
        if cfg.donor is None:
            if not required:
                return None
            raise UserError(f"method {cfg.method!r} needs a donor model whose tokenizer is the new one (--donor)") from e
        raise
    _check_donor(load_tokenizer(str(directory), cfg.trust), new)
    return directory, read_embeddings(directory, cfg.trust)


def _on_device(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A matrix for the context, in its own dtype (methods cast the rows they gather)."""
    return None if t is None else t.to(device)


def _inputs(cfg: TransplantConfig) -> list[str | Path | None]:
    """What the transplant reads: base, tokenizer, donor, and any path among the method's options
    (a hypernetwork directory, a corpus, word vectors)."""
    paths = [value for value in cfg.options.values() if isinstance(value, (str, Path))]
    return [cfg.base, cfg.tokenizer, cfg.donor, *paths]


def _timings_until_now(stages: Stages, running: dict[str, float]) -> dict[str, float]:
    """The finished stages' timings, and each clock still running (name -> start) up to now.
    transplant.json is the last file written, so only the final flush and rename escape it."""
    now = time.perf_counter()
    return {**stages.timings, **{name: round(now - start, 3) for name, start in running.items()}}


@dataclass
class Base:
    """The base model as read once: its directory, tokenizer and embedding tensors. A Hydra
    output (:mod:`transplant.hydra`) gives it several new vocabularies without reading it again."""

    dir: Path
    tokenizer: PreTrainedTokenizerBase
    embeddings: Embeddings


@dataclass
class NewVocabulary:
    """One new tokenizer's part of the output: what :func:`export` writes besides the base's
    other tensors. ``record`` is ``transplant.json`` without its timings."""

    tokenizer: PreTrainedTokenizerBase
    replace: dict[str, torch.Tensor]  # checkpoint name -> new embedding (and lm_head) rows
    initialized: torch.Tensor  # a bool per row: rows a method made
    counts: dict[str, int]
    record: dict[str, Any]
    warnings: list[str]

    @property
    def num_rows(self) -> int:
        return len(self.initialized)


def check_config(cfg: TransplantConfig) -> None:
    """The config's own mistakes (method, options, padding, device), before any model loads."""
    build_options(registry.get(cfg.method).Options, cfg.options)
    if not 1 <= cfg.pad_to_multiple_of <= MAX_PAD_MULTIPLE:
        raise UserError(f"--pad-to-multiple-of must be between 1 and {MAX_PAD_MULTIPLE}, got {cfg.pad_to_multiple_of}")
    resolve_device(cfg.device)


def load_base(cfg: TransplantConfig, stages: Stages) -> Base:
    with stages.run("loading base model"):
        base_dir = resolve_model(cfg.base, cfg.trust)
        base_tokenizer = load_tokenizer(str(base_dir), cfg.trust)
        embeddings = read_embeddings(base_dir, cfg.trust)
        check_fits(base_tokenizer, embeddings.input.shape[0], f"the base {cfg.base}")
    return Base(base_dir, base_tokenizer, embeddings)


def new_vocabulary(cfg: TransplantConfig, base: Base, stages: Stages) -> NewVocabulary:
    """Load the new tokenizer of ``cfg``, match it against ``base`` and build its embedding
    rows: copied rows bit for bit, the method's rows for the rest. ``base`` is only read."""
    method_cls = registry.get(cfg.method)
    options = build_options(method_cls.Options, cfg.options)
    device = resolve_device(cfg.device)
    embeddings = base.embeddings
    with stages.run("loading new tokenizer"):
        new_tokenizer = load_tokenizer(cfg.tokenizer, cfg.trust)
    donor_dir, donor = None, None
    if method_cls.wants_donor(options):
        with stages.run("loading donor"):
            donor_dir, donor = _load_donor(cfg, new_tokenizer, method_cls.needs_donor) or (None, None)
    with stages.run("matching vocabularies"):
        added = adopt_chat_template(base.tokenizer, new_tokenizer, cfg.chat_template)
        match = match_vocabularies(base.tokenizer, new_tokenizer, cfg.pad_to_multiple_of)
        if getattr(options, "predict_all", False):  # a method option: its rows for exact matches too
            match = match.predicting_all()
        numbers = compare_numbers(base.tokenizer, new_tokenizer)
    if cfg.gguf is not None:  # a GGUF llama.cpp cannot run is refused before the work, not after
        check_gguf(model_config(base.dir, cfg.trust), new_tokenizer.backend_tokenizer, match.num_rows, cfg.gguf)
    ctx = Context(
        match=match,
        base_input=_on_device(embeddings.input, device),
        base_output=_on_device(embeddings.output, device),
        options=options,
        seed=cfg.seed,
        device=device,
        donor_input=_on_device(donor.input, device) if donor else None,
        donor_output=_on_device(donor.output, device) if donor else None,
        progress=stages.progress,
        base_dir=base.dir,
        donor_dir=donor_dir,
        trust=cfg.trust,
    )
    bases = {"input": embeddings.input} if embeddings.tied else {"input": embeddings.input, "output": embeddings.output}
    with stages.run(f"initializing {len(match.missing):,} rows with {cfg.method}"):
        built = build_matrices(method_cls(), ctx, match, bases)
    replace = {embeddings.input_name: built["input"]}
    if not embeddings.tied:
        replace[embeddings.output_name] = built["output"]
    counts = {
        "rows": match.num_rows,
        "copied": len(match.copy_new),
        "initialized": len(match.missing),
        "special_matched": match.special_matched,
        "padding": len(match.padding),
        "unreachable": len(match.unreachable),
        "chat_markers_added": len(added),
    }
    record = {
        "tool": "transplant",
        "version": __version__,
        "base": cfg.base,
        "tokenizer": cfg.tokenizer,
        "donor": (cfg.donor or cfg.tokenizer) if donor else None,
        "method": cfg.method,
        "options": dataclasses.asdict(options),
        "seed": cfg.seed,
        "chat_template": cfg.chat_template,
        "chat_markers_added": added,
        "tied": embeddings.tied,
        "counts": counts,
        "method_report": ctx.report,
        "numbers": numbers.to_dict(),
        "initialized_rows": INITIALIZED_FILE,
    }
    initialized = torch.zeros(match.num_rows, dtype=torch.bool)
    initialized[match.missing] = True
    warning = numbers.warning()
    return NewVocabulary(new_tokenizer, replace, initialized, counts, record, [warning] if warning else [])


def transplant(cfg: TransplantConfig, stages: Stages | None = None) -> TransplantResult:
    """Give the base model of ``cfg`` the new tokenizer and write it to ``cfg.out``."""
    stages = stages or Stages()
    started = time.perf_counter()
    check_config(cfg)
    check_output(cfg.out, RECORD_FILE, _inputs(cfg), replace=cfg.force)
    base = load_base(cfg, stages)
    new = new_vocabulary(cfg, base, stages)
    writing = "writing checkpoint"
    running = {writing: time.perf_counter(), "total": started}
    with stages.run(writing):
        export(base.dir, cfg.out, new.replace, new.num_rows, new.tokenizer, base.tokenizer,
               lambda: {**new.record, "timings": _timings_until_now(stages, running)}, cfg.force, new.initialized,
               cfg.trust)
    if cfg.gguf is not None:
        with stages.run(f"writing GGUF ({cfg.gguf})"):
            export_gguf(cfg.out, cfg.gguf, trust=cfg.trust)
    stages.timings["total"] = round(time.perf_counter() - started, 3)
    return TransplantResult(out=cfg.out, counts=new.counts, timings=dict(stages.timings), warnings=new.warnings)
