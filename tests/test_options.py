"""Method options and recipes are checked when they are built, before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from transplant.errors import UserError
from transplant.methods import registry
from transplant.methods.base import MethodBase
from transplant.methods.baselines import SubwordOptions
from transplant.methods.omp import OmpOptions
from transplant.options import build_options, describe, parse_flags
from transplant.pipeline import TransplantConfig, transplant
from transplant.recipe import Recipe, load_recipe


@pytest.mark.parametrize(
    ("method", "options", "fragment"),
    [
        ("tokenadapt", {"temperature": "0"}, "--temperature"),
        ("tokenadapt", {"top_k": "0"}, "--top-k"),
        ("tokenadapt", {"global_weight": "1.5"}, "--global-weight"),
        ("tokenadapt", {"batch_size": "0"}, "--batch-size"),
        ("omp", {"k": "0"}, "--k"),
    ],
)
def test_bad_option_fails_before_the_base_is_read(tmp_path: Path, method: str, options: dict, fragment: str) -> None:
    """The base does not exist: an error about the option proves nothing was loaded first."""
    config = TransplantConfig(base=str(tmp_path / "no-base"), tokenizer=str(tmp_path / "no-tok"), out=tmp_path / "out",
                              method=method, options=options)
    with pytest.raises(UserError, match=fragment):
        transplant(config)


def test_subword_weighting_is_checked_when_built_directly() -> None:
    """A library caller bypasses the flag parser; an unknown weighting must not silently mean 'mean'."""
    with pytest.raises(UserError, match="--subword-weighting"):
        SubwordOptions(subword_weighting="lenght")


def test_omp_auto_options_hold_the_values_used() -> None:
    assert (OmpOptions().ridge, OmpOptions().fallback_threshold) == (0.03, 0.55)
    assert (OmpOptions(pool=0).ridge, OmpOptions(pool=0).fallback_threshold) == (0.0, 0.3)
    given = OmpOptions(ridge=0.1, fallback_threshold=0.2)
    assert (given.ridge, given.fallback_threshold) == (0.1, 0.2)
    shown = {flag: default for flag, _, default in describe(OmpOptions)}
    assert shown["--ridge"] == shown["--fallback-threshold"] == "auto"


@pytest.mark.parametrize("name", sorted(registry.COMMAND_FLAGS))
def test_register_rejects_an_option_named_like_a_command_flag(name: str) -> None:
    options = dataclass(frozen=True)(type("ClashOptions", (), {"__annotations__": {name: int}, name: 0}))

    class Clash(MethodBase):
        name: ClassVar[str] = "clash"
        Options: ClassVar[type] = options

    with pytest.raises(ValueError, match=f"--{name.replace('_', '-')}"):
        registry.register(Clash)
    assert "clash" not in registry.available()


def test_command_flags_are_the_model_command_flags() -> None:
    """The library's list is the `transplant model` command's long flags, nothing missing or extra."""
    import typer.main

    from transplant.cli import app

    command = typer.main.get_command(app).commands["model"]
    flags = {opt[2:].replace("-", "_") for param in command.params for opt in param.opts if opt.startswith("--")}
    assert registry.COMMAND_FLAGS == flags | {"help"}


def test_recipe_values_are_typed_and_blank_means_unset(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("base: smollm2-135m\nmethod: omp\noptions:\n  k: 8\nseed: 3\ndonor:\n")
    assert load_recipe(path) == Recipe(base="smollm2-135m", method="omp", options={"k": 8}, seed=3)
    assert load_recipe(None) == Recipe()


def test_unknown_recipe_key_names_the_allowed_ones(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("base: x\nsead: 3\n")
    with pytest.raises(UserError, match=r"unknown key 'sead'.*seed"):
        load_recipe(path)


def test_packaged_recipes_load() -> None:
    for path in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")):
        assert load_recipe(path).base


@pytest.mark.parametrize("value", [8.5, True, "8.5"])
def test_integer_option_is_not_truncated(value: object) -> None:
    """A recipe's ``k: 8.5`` (or ``k: true``) is a mistake, not k = 8 (or 1)."""
    with pytest.raises(UserError, match="--k must be int"):
        build_options(OmpOptions, {"k": value})
    assert build_options(OmpOptions, {"k": "8", "ridge": 0}).k == 8


@dataclass(frozen=True)
class _ListOptions:
    corpus: list[str] = field(default_factory=list)
    k: int = 1


def test_list_options_collect_repeated_flags_and_wrap_one_value() -> None:
    assert parse_flags(_ListOptions, ["--corpus", "a.txt", "--k", "2", "--corpus=b.txt"]) == {
        "corpus": ["a.txt", "b.txt"], "k": "2"}
    assert build_options(_ListOptions, {"corpus": "a.txt"}).corpus == ["a.txt"]  # a recipe's single string
    assert build_options(_ListOptions, {"corpus": ["a.txt", "b.txt"]}).corpus == ["a.txt", "b.txt"]
    assert ("--corpus", "str, repeatable", "[]") in describe(_ListOptions)
