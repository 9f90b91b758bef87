"""Recipes: YAML files naming what `transplant model` runs (base, tokenizer, method, ...).

A recipe is read into :class:`Recipe` and checked completely before anything else happens,
so a typo in a key or a value of the wrong type is one line, not a traceback after the
models have loaded. The allowed keys are the dataclass's fields and their types are its
annotations: adding a key (a ``train:`` section, a ``hypernet:`` directory) is adding a field.
Method options stay a plain mapping here; the method's options dataclass checks them.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from transplant.errors import UserError

_KINDS = {str: "a string", int: "an integer", dict: "a mapping"}


@dataclass(frozen=True)
class Recipe:
    """Every key a recipe may hold; ``None`` means the recipe leaves it to the command line."""

    base: Optional[str] = None
    tokenizer: Optional[str] = None
    donor: Optional[str] = None
    method: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    out: Optional[str] = None
    train: dict[str, Any] = field(default_factory=dict)  # `transplant train` settings (transplant.training.continued)


def _kind(annotation: Any) -> type:
    """The plain type behind ``Optional[X]`` or ``dict[...]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _kind(args[0])
    return typing.get_origin(annotation) or annotation


def _check(path: Path, key: str, value: Any, kind: type) -> None:
    # bool is an int in Python, but `seed: true` is a mistake, not seed 1
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{path}: {key} must be {_KINDS.get(kind, kind.__name__)}, not {value!r}")
    if kind is dict and not all(isinstance(k, str) for k in value):
        raise UserError(f"{path}: the keys of {key} must be names, not {list(value)!r}")


def load_recipe(path: Optional[Path]) -> Recipe:
    """The recipe at ``path`` (an empty one for ``None``); a key left blank counts as absent."""
    if path is None:
        return Recipe()
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: unreadable recipe ({type(e).__name__})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of keys to values")
    kinds = {name: _kind(hint) for name, hint in typing.get_type_hints(Recipe).items()}
    values = {}
    for key, value in data.items():
        if key not in kinds:
            raise UserError(f"{path}: unknown key {key!r} (a recipe has: {', '.join(kinds)})")
        if value is not None:
            _check(path, key, value, kinds[key])
            values[key] = value
    return Recipe(**values)
