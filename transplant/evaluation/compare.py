"""Run several initialization methods on one base/tokenizer pair and rank them.

Each method's checkpoint goes to `OUT/<method>/`; every checkpoint and the base are scored on
the same documents (the base once), and the ranking by byte-level perplexity ratio is written
to `OUT/report.md`, `OUT/report.json` and `OUT/ratio.png`. A method directory that already
holds a finished transplant (`transplant.json`) is reused unless `force` is set, so an
interrupted comparison resumes where it stopped; only if its record says it is the same
transplant (base, tokenizer, donor, method, options, seed, chat template, tool version),
else it is made again.

A method may carry options, so variants of one method compete side by side:
``omp:k=8:pool=0`` is ``--method omp --k 8 --pool 0``, written to `OUT/omp_k=8_pool=0-<hash>/`
(a short hash of the whole spec: options may hold paths, and ``a/b`` and ``a_b`` differ).
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from transplant import __version__
from transplant.errors import UserError
from transplant.inputs.corpus import Document, load_corpus
from transplant.io.atomic import local_paths, refuse_overlap
from transplant.evaluation.evaluate import EvalConfig, Evaluation, Progress, evaluate_model, load_model
from transplant.methods import registry
from transplant.options import build_options
from transplant.pipeline import TransplantConfig, transplant
from transplant.evaluation.report import write_report
from transplant.device import resolve_device
from transplant.io.outputs import check_output_dir
from transplant.io.tokenizer import load_tokenizer
from transplant.io.trust import Trust


@dataclass(frozen=True)
class CompareConfig:
    base: str
    tokenizer: str
    methods: tuple[str, ...]
    corpus: Path
    out: Path
    donor: str | None = None
    max_docs: int | None = None
    seed: int = 0
    force: bool = False
    device: str = "cpu"  # where transplants compute their rows and models are scored
    trust_remote_code: bool = False
    scoring: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class Comparison:
    base: Evaluation
    results: dict[str, Evaluation]
    transplants: dict[str, dict]  # per method: counts and timings from transplant.json
    report: list[Path]


Log = Callable[[str], None]
ProgressFactory = Callable[[str], Progress]  # label -> progress callback for one evaluation


def compare(cfg: CompareConfig, log: Log = print, progress: ProgressFactory | None = None) -> Comparison:
    if not cfg.methods:
        raise UserError("--methods needs at least one method")
    refuse_overlap(cfg.out, local_paths([cfg.base, cfg.tokenizer, cfg.donor, cfg.corpus]))  # and each method's folder
    for spec in cfg.methods:  # unknown methods and bad options fail before any work starts
        name, options = parse_variant(spec)
        build_options(registry.get(name).Options, options)
    resolve_device(cfg.device)
    check_output_dir(cfg.out)
    load_tokenizer(cfg.tokenizer, Trust(remote_code=cfg.trust_remote_code))  # a bad NEW fails before any scoring
    docs = load_corpus(cfg.corpus, cfg.max_docs)
    log(f"{len(docs)} documents from {cfg.corpus}")
    base = _evaluate(cfg.base, cfg.base, docs, cfg.scoring, progress, cfg)
    results: dict[str, Evaluation] = {}
    transplants: dict[str, dict] = {}
    for name in cfg.methods:
        out = _transplant(cfg, name, log)
        transplants[name] = {k: v for k, v in json.loads((out / "transplant.json").read_text()).items()
                             if k in ("counts", "timings")}
        results[name] = _evaluate(str(out), name, docs, cfg.scoring, progress, cfg)
        log(f"{name}: bits/byte {results[name].overall.bits_per_byte:.4f}")
    meta = {
        "base": cfg.base,
        "tokenizer": cfg.tokenizer,
        "donor": cfg.donor,
        "corpus": str(cfg.corpus),
        "documents": len(docs),
        "seed": cfg.seed,
        "scoring": asdict(cfg.scoring),
        "transplants": transplants,
    }
    report = write_report(cfg.out, base, results, meta)
    return Comparison(base, results, transplants, report)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``"omp:k=8:pool=0"`` -> ``("omp", {"k": "8", "pool": "0"})``."""
    name, *pairs = spec.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key or not sep:
            raise UserError(f"method variant {spec!r}: options are written key=value, e.g. omp:k=8")
        options[key] = value
    return name, options


def variant_dir(out: Path, spec: str) -> Path:
    """``OUT/<spec>``, each run of characters a folder name should not hold replaced by ``_``;
    when any was, a short hash of the whole spec follows, so that two variants whose options
    differ only there (paths ``a/b`` and ``a_b``) do not share, and overwrite, one folder."""
    name = re.sub(r"[^\w.=-]+", "_", spec)
    if name != spec:
        name += "-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    return out / name


def _request(config: TransplantConfig) -> dict[str, Any]:
    """The fields of ``transplant.json`` that say which transplant a checkpoint is, as ``config`` would write them."""
    method = registry.get(config.method)
    request = {
        "version": __version__,
        "base": config.base,
        "tokenizer": config.tokenizer,
        "donor": (config.donor or config.tokenizer) if method.needs_donor else None,
        "method": config.method,
        "options": asdict(build_options(method.Options, config.options)),
        "seed": config.seed,
        "chat_template": config.chat_template,
    }
    if method.uses_donor and not config.donor:  # NEW's own model, when NEW names one: known once loaded
        del request["donor"]
    return json.loads(json.dumps(request, default=str))  # compared with what was read back from JSON


def _transplant(cfg: CompareConfig, spec: str, log: Log) -> Path:
    """``OUT/<spec>/``: transplanted now, or reused when it holds exactly the transplant asked for."""
    out = variant_dir(cfg.out, spec)
    method, options = parse_variant(spec)
    config = TransplantConfig(base=cfg.base, tokenizer=cfg.tokenizer, out=out, method=method, options=options,
                              donor=cfg.donor, seed=cfg.seed, force=cfg.force, device=cfg.device,
                              trust_remote_code=cfg.trust_remote_code)
    record = out / "transplant.json"
    if record.is_file() and not cfg.force:
        found = json.loads(record.read_text())
        differs = [f"{key} differs" for key, value in _request(config).items() if found.get(key) != value]
        if not differs:
            log(f"{spec}: reusing {out}")
            return out
        log(f"{spec}: {out} holds another transplant ({', '.join(differs)}); transplanting again")
        config = replace(config, force=True)
    else:
        log(f"{spec}: transplanting into {out}")
    return transplant(config).out


def _evaluate(ref: str, name: str, docs: list[Document], config: EvalConfig,
              progress: ProgressFactory | None, cfg: CompareConfig) -> Evaluation:
    model, tokenizer = load_model(ref, cfg.device, Trust(remote_code=cfg.trust_remote_code))
    evaluation = evaluate_model(model, tokenizer, docs, name, config, progress(name) if progress else None)
    del model
    gc.collect()  # one model in memory at a time
    return evaluation
