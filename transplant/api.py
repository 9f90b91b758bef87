"""The Python API: what the command line does, as functions with typed results.

    import transplant

    done = transplant.model("smollm2-135m", "gemma3-270m", "out/smollm2-gemma3", method="omp")
    scores = transplant.evaluate(done.out, base="smollm2-135m", corpus="dev.jsonl")
    print(scores.ratio["overall"])                       # 1.0 = as good as the base
    trained = transplant.train(done.out, corpus=["train.jsonl"], out="out/trained")
    hn_dir = transplant.hypernet.train("smollm2-135m", "out/hn", corpus=["train.jsonl"], steps=200)

Each function checks its inputs before any model loads and raises
:class:`transplant.errors.UserError` (one line) for a mistake; the CLI prints that line.
Nothing heavy is imported until a function runs, so ``import transplant`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transplant.evaluation.compare import Comparison
    from transplant.evaluation.draft import DraftEvaluation
    from transplant.evaluation.evaluate import Evaluation
    from transplant.hydra import HydraResult, Selected
    from transplant.pipeline import TransplantResult
    from transplant.progress import Stages
    from transplant.vocab.tokenizer_train import TrainedTokenizer

ScoringProgress = Callable[[str], Callable[[int, int], None]]  # model label -> (done, total) callback


def model(base: str, tokenizer: str, out: str | Path, *, method: str = "auto",
          options: Mapping[str, Any] | None = None, donor: str | None = None, seed: int = 0, device: str = "cpu",
          chat_template: str = "base", pad_to_multiple_of: int = 1, force: bool = False,
          allow_pickle: bool = False, trust_remote_code: bool = False, stages: Stages | None = None,
          gguf: str | None = None) -> TransplantResult:
    """Give ``base`` the tokenizer ``tokenizer`` and write the checkpoint to ``out``.

    ``options`` are the method's own (``transplant methods`` lists them), e.g.
    ``{"k": 32}`` for ``omp``. The result holds the output path, the row counts (copied /
    initialized / special) and the timings; ``out/transplant.json`` records everything.
    ``allow_pickle`` / ``trust_remote_code``: read ``.bin`` pickles, or let a directory's
    ``auto_map`` import its own Python files — both run code, so only for files you trust.
    ``gguf`` (``"f16"``, ``"bf16"``, ``"q8_0"``) also writes ``out/model-<gguf>.gguf`` for llama.cpp."""
    from transplant.errors import UserError
    from transplant.pipeline import TransplantConfig, transplant

    if chat_template not in ("base", "new"):
        raise UserError(f"chat_template must be 'base' or 'new', not {chat_template!r}")
    if gguf is not None:
        from transplant.io.gguf_export import GGUF_TYPES

        if gguf not in GGUF_TYPES:
            raise UserError(f"--gguf must be one of {', '.join(GGUF_TYPES)}, not {gguf!r}")
    config = TransplantConfig(base=base, tokenizer=tokenizer, out=Path(out), method=method, options=dict(options or {}),
                              donor=donor, seed=seed, force=force, allow_pickle=allow_pickle,
                              trust_remote_code=trust_remote_code, device=device,
                              chat_template=chat_template, pad_to_multiple_of=pad_to_multiple_of, gguf=gguf)
    return transplant(config, stages)


def hydra_build(base: str, tokenizers: Sequence[str], out: str | Path, *, method: str = "auto",
                options: Mapping[str, Any] | None = None, seed: int = 0, device: str = "cpu",
                chat_template: str = "base", pad_to_multiple_of: int = 1, force: bool = False,
                allow_pickle: bool = False, trust_remote_code: bool = False,
                stages: Stages | None = None) -> HydraResult:
    """A Hydra model in ``out``: the body of ``base`` once, and one embedding/head set per
    tokenizer (``"REF"``, or ``"NAME=REF"`` to name it). :func:`hydra_select` of a name gives
    the checkpoint :func:`model` would have written for that tokenizer, bit for bit."""
    from transplant.errors import UserError
    from transplant.hydra import HydraConfig, build

    if chat_template not in ("base", "new"):
        raise UserError(f"chat_template must be 'base' or 'new', not {chat_template!r}")
    config = HydraConfig(base=base, tokenizers=list(tokenizers), out=Path(out), method=method,
                         options=dict(options or {}), seed=seed, force=force, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code, device=device, chat_template=chat_template,
                         pad_to_multiple_of=pad_to_multiple_of)
    return build(config, stages)


def hydra_select(out: str | Path, name: str, dest: str | Path, *, force: bool = False) -> Selected:
    """Vocabulary ``name`` of the Hydra model ``out`` as an ordinary checkpoint in ``dest``,
    its weights hard links to ``out``'s files (copies where the file system has none)."""
    from transplant.hydra import select

    return select(Path(out), name, Path(dest), force=force)

def export_gguf(checkpoint: str | Path, type: str = "f16", *, force: bool = False,
                trust_remote_code: bool = False) -> Path:
    """Write ``checkpoint/model-<type>.gguf`` (``f16``, ``bf16``, ``q8_0``) that llama.cpp runs,
    from a checkpoint directory (safetensors, tokenizer.json); returns its path."""
    from transplant.io.gguf_export import export_gguf as write_gguf
    from transplant.io.trust import Trust

    return write_gguf(Path(checkpoint), type, force=force, trust=Trust(remote_code=trust_remote_code))


@dataclass
class PairEvaluation:
    """A model and its base scored on the same documents; ``ratio`` per group and overall is
    byte-level perplexity(model) / perplexity(base): 1.0 is lossless, lower is better."""

    corpus: str
    base: Evaluation
    new: Evaluation
    ratio: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "ratio": self.ratio, "base": self.base.to_dict(), "new": self.new.to_dict()}


def evaluate(model: str | Path, base: str, corpus: str | Path, *, max_docs: int | None = None, batch_size: int = 8,
             max_length: int = 1024, device: str = "cpu", allow_pickle: bool = False, trust_remote_code: bool = False,
             progress: ScoringProgress | None = None) -> PairEvaluation:
    """Score ``model`` and ``base`` on ``corpus`` (.txt or .jsonl with ``lang``/``domain``).
    Both models are opened and checked before either is scored."""
    from transplant.device import resolve_device
    from transplant.evaluation.evaluate import EvalConfig, evaluate_model, load_weights, open_model, ppl_ratio
    from transplant.inputs.corpus import load_corpus
    from transplant.io.trust import Trust

    resolve_device(device)
    docs = load_corpus(corpus, max_docs)
    config = EvalConfig(batch_size=batch_size, max_length=max_length)
    trust = Trust(remote_code=trust_remote_code, pickle=allow_pickle)
    refs = {"base": base, "new": str(model)}
    opened = {label: open_model(ref, trust) for label, ref in refs.items()}
    scores = {}
    for label, ref in refs.items():
        path, tokenizer = opened[label]
        loaded = load_weights(path, device, trust)
        scores[label] = evaluate_model(loaded, tokenizer, docs, ref, config, progress(ref) if progress else None)
        del loaded
    return PairEvaluation(str(corpus), scores["base"], scores["new"], ppl_ratio(scores["new"], scores["base"]))


def evaluate_draft(draft: str | Path, target: str, corpus: str | Path, *, max_docs: int | None = None,
                   window: int = 4, max_length: int = 256, batch_size: int = 8, new_tokens: int = 32,
                   timed_prompts: int = 4, device: str = "cpu", allow_pickle: bool = False,
                   trust_remote_code: bool = False) -> DraftEvaluation:
    """How well ``draft`` (on ``target``'s tokenizer) drafts for ``target`` in greedy
    speculative decoding: agreement per group, mean accepted run for a window of ``window``,
    and wall-clock tokens/s alone vs assisted on ``timed_prompts`` prompts (0: not timed).
    The tokenizers are checked before either model is loaded."""
    from transplant.device import resolve_device
    from transplant.evaluation.draft import DraftConfig, check_same_tokenizer, evaluate_draft as measure
    from transplant.evaluation.evaluate import load_weights, open_model
    from transplant.inputs.corpus import load_corpus
    from transplant.io.checkpoint import model_config
    from transplant.io.trust import Trust

    resolve_device(device)
    docs = load_corpus(corpus, max_docs)
    trust = Trust(remote_code=trust_remote_code, pickle=allow_pickle)
    (draft_path, draft_tokenizer), (target_path, target_tokenizer) = (open_model(str(draft), trust),
                                                                      open_model(target, trust))
    check_same_tokenizer(draft_tokenizer, target_tokenizer,
                         *(model_config(p, trust).get_text_config().vocab_size for p in (draft_path, target_path)))
    config = DraftConfig(window=window, max_length=max_length, batch_size=batch_size, new_tokens=new_tokens,
                         timed_prompts=timed_prompts)
    return measure(load_weights(draft_path, device, trust), load_weights(target_path, device, trust),
                   target_tokenizer, docs, (str(draft), target), config, timed=timed_prompts > 0)


def compare(base: str, tokenizer: str, methods: Sequence[str], corpus: str | Path, out: str | Path, *,
            donor: str | None = None, max_docs: int | None = None, batch_size: int = 8, max_length: int = 1024,
            seed: int = 0, force: bool = False, device: str = "cpu", trust_remote_code: bool = False,
            log: Callable[[str], None] = print, progress: ScoringProgress | None = None) -> Comparison:
    """Transplant ``base`` with each of ``methods`` (``"omp:k=8"`` sets an option), score every
    result and the base on ``corpus``, and write ``out/report.{md,json}`` and ``out/ratio.png``."""
    from transplant.errors import UserError
    from transplant.evaluation.compare import CompareConfig
    from transplant.evaluation.compare import compare as run_compare
    from transplant.evaluation.evaluate import EvalConfig

    names = tuple(methods)
    if len(set(names)) != len(names):  # an empty list is compare's own one-line error
        raise UserError(f"methods must name each method once, got {', '.join(names)}")
    config = CompareConfig(base=base, tokenizer=tokenizer, methods=names, corpus=Path(corpus), out=Path(out),
                           donor=donor, max_docs=max_docs, seed=seed, force=force, device=device,
                           trust_remote_code=trust_remote_code, scoring=EvalConfig(batch_size=batch_size, max_length=max_length))
    return run_compare(config, log=log, progress=progress)


@dataclass
class TrainResult:
    """Where continued pretraining wrote its checkpoint and its run (log, checkpoints), and
    per stage the steps, tokens and first/last evaluation (also in ``out/transplant.json``)."""

    out: Path
    run_dir: Path
    stages: list[dict[str, Any]]


def train(model: str | Path | None = None, corpus: Sequence[str | Path] | None = None, out: str | Path | None = None, *,
          config: str | Path | None = None, recipe: str | Path | None = None, **settings: Any) -> TrainResult:
    """Continued pretraining of a transplanted ``model`` (stage 1: its new rows; stage 2:
    every weight; by default ALM, 20 + 300 steps). ``settings`` are the fields of
    :class:`transplant.training.continued.ContinuedConfig` (``steps``, ``lr``,
    ``objective="alm"``, ``eval_corpus``, …) and win over ``config`` / ``recipe`` YAML."""
    import json

    from transplant.training.continued import load_train_config
    from transplant.training.continued import train as run_training

    cfg = load_train_config(None if config is None else Path(config), None if recipe is None else Path(recipe),
                            model=None if model is None else str(model),
                            corpus=None if corpus is None else [str(c) for c in corpus],
                            out=None if out is None else str(out), **settings)
    run_training(cfg)
    record = json.loads((Path(cfg.out) / "transplant.json").read_text())
    return TrainResult(Path(cfg.out), cfg.run_path, record["training"]["stages"])


def train_tokenizer(corpus: Sequence[str | Path], out: str | Path, *, vocab_size: int = 16_000, kind: str = "bpe",
                    supertokens: bool = False, max_words: int | None = None, max_chars: int | None = None,
                    transition: float | None = None, seed: int = 0, force: bool = False) -> TrainedTokenizer:
    """Train a ``kind`` (``"bpe"`` or ``"unigram"``, both byte-level) tokenizer
    of ``vocab_size`` tokens on ``corpus`` and write it to ``out``, a directory that
    ``AutoTokenizer`` and :func:`model` load. ``supertokens``: tokens may span up to
    ``max_words`` words and ``max_chars`` bytes (``transition``: BPE's share of ordinary
    tokens, learned first); see :mod:`transplant.vocab.supertokens`."""
    from dataclasses import replace

    from transplant.errors import UserError
    from transplant.vocab.supertokens import SupertokenOptions
    from transplant.vocab.tokenizer_train import TokenizerConfig, train_tokenizer as run

    caps = {"max_words": max_words, "max_chars": max_chars, "transition": transition}
    given = {name: value for name, value in caps.items() if value is not None}
    if given and not supertokens:
        raise UserError(f"--{next(iter(given)).replace('_', '-')} applies to supertokens: add --supertokens")
    options = replace(SupertokenOptions(), **given) if supertokens else None
    return run(TokenizerConfig(corpora=tuple(Path(c) for c in corpus), out=Path(out), vocab_size=vocab_size,
                               kind=kind, supertokens=options, seed=seed, force=force))
