"""Hydra models (trans-tokenization): one shared body, one embedding/head set per vocabulary.

A Hydra output keeps everything of the base that no tokenizer changes (attention, MLPs,
norms) once, and per new vocabulary only what does: its embedding (and untied lm_head)
rows, configs and tokenizer files. ``select`` turns one vocabulary into an ordinary
checkpoint that transformers loads, by hard-linking the body into it; the weights of two
vocabularies then cost one body on disk instead of two. Layout of OUT::

    hydra.json                        base, the vocabularies, the body's files, timings
    body/model*.safetensors           every base tensor but the embeddings (shards as in the base)
    heads/NAME/embeddings.safetensors NAME's embedding (and lm_head) rows
    heads/NAME/{config.json, generation_config.json, tokenizer files, initialized.safetensors, transplant.json}

Each vocabulary goes through the same functions as ``transplant model``
(:func:`transplant.pipeline.new_vocabulary`, :func:`transplant.io.checkpoint.write_vocabulary_files`),
so a selected checkpoint holds the same tensors and tokenizer files, bit for bit, as a
separate transplant onto that tokenizer. The base is read once; one vocabulary's new
matrices are in memory at a time.

Weight files are written read-only: a selected checkpoint shares them with OUT, and an
in-place write into one (``save_pretrained`` over it) would otherwise change both.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transplant import __version__
from transplant.errors import UserError
from transplant.io.atomic import TOOL, atomic_path, check_output, is_ours
from transplant.io.links import link_or_copy, read_only
from transplant.io.checkpoint import RECORD_FILE, write_record, write_vocabulary_files, write_weights
from transplant.io.shards import read_header, torch_tensor, write_shard
from transplant.io.tokenizer import load_tokenizer
from transplant.io.trust import read_json
from transplant.pipeline import Base, TransplantConfig, TransplantSettings, check_config, load_base, new_vocabulary
from transplant.progress import Stages

HYDRA_FILE = "hydra.json"
BODY = "body"
HEADS = "heads"
HEAD_WEIGHTS = "embeddings.safetensors"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOKENIZER_SUFFIXES = (".model", ".json", ".gguf")


@dataclass
class HydraConfig(TransplantSettings):
    """One base, several new tokenizers (``REF`` or ``NAME=REF``), the settings of one transplant."""

    base: str
    tokenizers: list[str]
    out: Path

    def vocabularies(self) -> dict[str, TransplantConfig]:
        """Name -> the config of the separate transplant this vocabulary must equal."""
        if not self.tokenizers:
            raise UserError("a Hydra model needs at least one --tokenizer")
        configs: dict[str, TransplantConfig] = {}
        for given in self.tokenizers:
            name, ref = head_name(given)
            if name in configs:
                raise UserError(f"two vocabularies are named {name!r} ({configs[name].tokenizer} and {ref}): "
                                f"name them, e.g. --tokenizer {name}-2={ref}")
            configs[name] = TransplantConfig(base=self.base, tokenizer=ref, out=self.out / HEADS / name,
                                             **{**self.settings(), "force": False})
        return configs


@dataclass
class HydraResult:
    """What ``build`` wrote; each vocabulary's own record is ``OUT/heads/NAME/transplant.json``."""

    out: Path
    counts: dict[str, dict[str, int]]  # vocabulary name -> its row counts
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # one line each, prefixed with the vocabulary


@dataclass
class Selected:
    """The checkpoint ``select`` wrote, and whether its weights share OUT's files."""

    out: Path
    linked: bool  # the weights are hard links to the Hydra's files (False: copies)
    note: str | None = None  # why they were copied


def head_name(given: str) -> tuple[str, str]:
    """(name, tokenizer reference) of ``NAME=REF``, or of a bare ``REF``: its file or packaged
    name without a tokenizer suffix (``/x/german16k.model`` -> ``german16k``). A reference that
    is itself an existing path is never split at ``=``."""
    name, sep, ref = given.partition("=")
    if not sep or Path(given).exists():
        name, ref = Path(given.rstrip("/")).name, given
        for suffix in _TOKENIZER_SUFFIXES:
            name = name.removesuffix(suffix)
    if not _NAME.fullmatch(name) or not ref:
        raise UserError(f"cannot name a vocabulary {name!r} (letters, digits, '.', '_', '-'): "
                        f"give it a name, e.g. --tokenizer de={ref or given}")
    return name, ref


def _write_head(directory: Path, cfg: TransplantConfig, base: Base,
                stages: Stages) -> tuple[dict[str, int], list[str]]:
    """One vocabulary: its rows built as ``transplant model`` builds them, written beside the body.
    Its matrices are freed when this returns, before the next vocabulary is built."""
    new = new_vocabulary(cfg, base, stages)
    with stages.run("writing vocabulary"):
        directory.mkdir(parents=True)
        weights = directory / HEAD_WEIGHTS
        write_shard(weights, [torch_tensor(name, rows) for name, rows in new.replace.items()])
        read_only(weights)
        write_vocabulary_files(base.dir, directory, new.num_rows, new.tokenizer, base.tokenizer, new.initialized,
                               cfg.trust)
    write_record(directory, {**new.record, "timings": dict(stages.timings)})
    return new.counts, new.warnings


def build(cfg: HydraConfig, stages: Stages | None = None) -> HydraResult:
    """Write the base's body once to ``cfg.out``, then one head per tokenizer (atomically)."""
    stages = stages or Stages()
    started = time.perf_counter()
    vocabularies = cfg.vocabularies()
    first = next(iter(vocabularies.values()))
    check_config(first)
    check_output(cfg.out, HYDRA_FILE, [cfg.base, *(v.tokenizer for v in vocabularies.values())], replace=cfg.force)
    with stages.run("loading new tokenizers"):  # a mistake in the last one, found before the body is written
        for vocabulary in vocabularies.values():
            load_tokenizer(vocabulary.tokenizer, vocabulary.trust)
    base = load_base(first, stages)
    counts, warnings, head_timings = {}, [], {}
    with atomic_path(cfg.out, existing="replace" if cfg.force else "refuse") as tmp:
        tmp.mkdir()
        with stages.run("writing the shared body"):
            (tmp / BODY).mkdir()
            write_weights(base.dir, tmp / BODY, {}, first.trust, embeddings=False)
            body = sorted(p.name for p in (tmp / BODY).glob("*.safetensors"))
            for name in body:
                read_only(tmp / BODY / name)
        for name, vocabulary in vocabularies.items():
            if stages.console is not None:
                stages.console.print(f"[bold]{name}[/] ({vocabulary.tokenizer})", highlight=False)
            head_stages = Stages(console=stages.console)
            counts[name], found = _write_head(tmp / HEADS / name, vocabulary, base, head_stages)
            warnings += [f"{name}: {line}" for line in found]
            head_timings[name] = head_stages.timings
        stages.timings["total"] = round(time.perf_counter() - started, 3)
        record = {"tool": TOOL, "version": __version__, "kind": "hydra", "base": cfg.base,
                  "heads": {name: v.tokenizer for name, v in vocabularies.items()}, "body": body,
                  "tied": base.embeddings.tied, "timings": {**stages.timings, "heads": head_timings}}
        (tmp / HYDRA_FILE).write_text(json.dumps(record, indent=2, allow_nan=False))
    return HydraResult(cfg.out, counts, dict(stages.timings), warnings)


def _hydra_record(out: Path) -> dict[str, Any]:
    if not (out / HYDRA_FILE).is_file() or not is_ours(out, HYDRA_FILE):
        raise UserError(f"{out} is not a Hydra output (no {HYDRA_FILE}; write one with `transplant hydra build`)")
    return read_json(out / HYDRA_FILE)


def select(out: Path, name: str, dest: Path, force: bool = False) -> Selected:
    """Make ``dest`` an ordinary checkpoint of vocabulary ``name`` of the Hydra output ``out``:
    the body's shards and the head's embeddings hard-linked as one sharded model, the head's
    small files copied, its transplant.json saying where it came from."""
    out, dest = Path(out), Path(dest)
    record = _hydra_record(out)
    if name not in record["heads"]:
        raise UserError(f"{out} has no vocabulary {name!r}; it has: {', '.join(record['heads'])}")
    head = out / HEADS / name
    shards = [out / BODY / file for file in record["body"]] + [head / HEAD_WEIGHTS]
    missing = [path for path in [*shards, head / RECORD_FILE] if not path.is_file()]
    if missing:
        raise UserError(f"{out} is incomplete: {missing[0]} is missing")
    check_output(dest, RECORD_FILE, [out], replace=force)
    notes = []
    with atomic_path(dest, existing="replace" if force else "refuse") as tmp:
        tmp.mkdir()
        weight_map, total = {}, 0
        for number, source in enumerate(shards, start=1):
            file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            notes.append(link_or_copy(source, tmp / file))
            header, _ = read_header(source)
            weight_map.update({tensor: file for tensor in header})
            total += sum(entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, allow_nan=False))
        for path in sorted(head.iterdir()):
            if path.name not in (HEAD_WEIGHTS, RECORD_FILE):
                shutil.copyfile(path, tmp / path.name)
        note = next((n for n in notes if n is not None), None)
        origin = {"from": str(out.resolve()), "name": name, "weights": "copied" if note else "hard links"}
        write_record(tmp, {**read_json(head / RECORD_FILE), "hydra": origin})
    return Selected(dest, linked=note is None, note=note)

