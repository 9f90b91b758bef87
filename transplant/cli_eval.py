"""`transplant evaluate` and `transplant compare`: parse, call the library, print.

Plain functions with typer-annotated parameters; `cli.py` registers them as commands.
Tables go to stdout, progress and notes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from transplant.compare import CompareConfig
from transplant.compare import compare as run_compare
from transplant.errors import UserError
from transplant.evaluate import EvalConfig, evaluate_model, load_corpus, load_model, ppl_ratio
from transplant.report import pair_grid, ranking_grid

# Tables are wide (one column per language); when piped, do not squeeze them into 80 columns.
out_console = Console() if sys.stdout.isatty() else Console(width=200)
err_console = Console(stderr=True)

CORPUS_HELP = ".txt (blank-line-separated documents) or .jsonl (text, optional lang/domain)."
MAX_DOCS_HELP = "Keep the first N documents of each group (lang/domain)."
BATCH_HELP = "Windows per forward pass (also capped so logits stay under 1 GiB)."
LENGTH_HELP = "Window length in tokens; longer documents are scored in overlapping windows."


@contextlib.contextmanager
def progress_bars() -> Iterator:
    """A factory of per-model progress callbacks drawing rich bars on stderr."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bars:
        tasks: dict[str, int] = {}

        def factory(label: str):
            def advance(done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bars.add_task(f"scoring {label}", total=total)
                bars.advance(tasks[label], done)

            return advance

        yield factory


def evaluate(
    model: str = typer.Argument(..., help="Transplanted model (HF dir, .gguf, hub id or packaged name)."),
    base: str = typer.Option(..., "--base", help="Base model to compare against."),
    corpus: Path = typer.Option(..., "--corpus", help=CORPUS_HELP),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help=MAX_DOCS_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help=BATCH_HELP),
    max_length: int = typer.Option(1024, "--max-length", help=LENGTH_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all figures to this JSON file."),
) -> None:
    """Byte-level perplexity ratio of MODEL to BASE on the same documents, per group and overall."""
    docs = load_corpus(corpus, max_docs)
    config = EvalConfig(batch_size=batch_size, max_length=max_length)
    evaluations = {}
    with progress_bars() as progress:
        for label, ref in (("base", base), ("new", model)):
            loaded, tokenizer = load_model(ref)
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
        err_console.print(f"wrote {json_out}")


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
) -> None:
    """Transplant BASE with each method, score all on one corpus, rank by perplexity ratio."""
    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    if len(set(names)) != len(names):
        raise UserError(f"--methods lists a method twice: {methods}")
    config = CompareConfig(base=base, tokenizer=tokenizer, methods=names, corpus=corpus, out=out, donor=donor,
                           max_docs=max_docs, seed=seed, force=force,
                           scoring=EvalConfig(batch_size=batch_size, max_length=max_length))
    with progress_bars() as progress:
        result = run_compare(config, log=lambda line: err_console.print(line, highlight=False), progress=progress)
    out_console.print(ranking_grid(result.base, result.results).to_rich())
    err_console.print("wrote " + ", ".join(str(p) for p in result.report))
