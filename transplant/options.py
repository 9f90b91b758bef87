"""Method options: dataclass fields <-> CLI flags and recipe values.

A method declares its options as a dataclass; this module turns ``--field-name value``
flags (or a recipe's mapping) into an instance, checking names and types, so the CLI never
has to know any method's options. Training configs are parsed the same way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from transplant.errors import UserError


YAML_WORDS = {True: ("yes", "on", "true"), False: ("no", "off", "false")}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def finite(name: str, value: float) -> float:
    """``value``, if it is a finite number. ``nan`` and ``inf`` parse as floats, but in an
    option they only come from a slip or a broken file, and they do not fail: they silently
    turn whatever they touch (initialized rows, trained weights, the record) into NaN."""
    if not math.isfinite(value):
        raise UserError(f"{_flag(name)} must be a finite number, not {value}")
    return value


def check_finite(instance: Any) -> None:
    """Every float field of a dataclass instance is finite, for configs built without parsing."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if isinstance(value, float):
            finite(f.name, value)


def _convert(name: str, kind: Any, value: Any) -> Any:
    """Coerce ``value`` (often a CLI string) to the annotated type of field ``name``."""
    origin = typing.get_origin(kind)
    if origin is list:  # repeated flags give a list; one value (a recipe's string) is a list of one
        values = value if isinstance(value, (list, tuple)) else [value]
        return [_convert(name, typing.get_args(kind)[0], v) for v in values]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _convert(name, args[0], value)
    if origin is Literal:
        choices = typing.get_args(kind)
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted yes/no/on/off as a bool
            value = next((c for c in choices if str(c).lower() in YAML_WORDS[value]), value)
        if value not in choices:
            raise UserError(f"{_flag(name)} must be one of {', '.join(map(str, choices))}, not {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{_flag(name)} must be true or false, not {value!r}")
    # int(8.5) is 8 and int(True) is 1: a recipe's `k: 8.5` or `k: true` is a mistake, not a number
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise UserError(f"{_flag(name)} must be {kind.__name__}, not {value!r}")
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{_flag(name)} must be {kind.__name__}, not {value!r}") from None
    return finite(name, converted) if kind is float else converted


def build_options(options_cls: type, values: dict[str, Any]) -> Any:
    """An ``options_cls`` instance from a name -> value mapping (names use _ or -)."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name for f in dataclasses.fields(options_cls)}
    converted = {}
    for raw_name, value in values.items():
        name = raw_name.replace("-", "_")
        if name not in fields:
            known = ", ".join(_flag(f) for f in sorted(fields)) or "none"
            raise UserError(f"unknown option {_flag(name)} for this method (its options: {known})")
        converted[name] = _convert(name, hints[name], value)
    return options_cls(**converted)


def parse_flags(options_cls: type, args: list[str]) -> dict[str, Any]:
    """``['--k', '8', '--center']`` -> ``{'k': '8', 'center': True}`` for ``options_cls``.

    A list-valued option collects every occurrence: ``--corpus a --corpus b`` -> ``['a', 'b']``."""
    hints = typing.get_type_hints(options_cls)
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}")
        name, _, inline = arg[2:].partition("=")
        name = name.replace("-", "_")
        if hints.get(name) is bool and not inline:
            values[name] = True
        elif name.startswith("no_") and hints.get(name[3:]) is bool and not inline:
            values[name[3:]] = False
        else:
            if inline:
                value = inline
            elif i + 1 < len(args):
                value = args[i + 1]
                i += 1
            else:
                raise UserError(f"{arg} needs a value")
            if typing.get_origin(hints.get(name)) is list:
                values.setdefault(name, []).append(value)
            else:
                values[name] = value
        i += 1
    return values


def describe(options_cls: type) -> list[tuple[str, str, str]]:
    """(flag, type, default) of every option, for ``transplant methods``."""
    hints = typing.get_type_hints(options_cls)
    rows = []
    for f in dataclasses.fields(options_cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[X]: None = the method decides
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is Literal:
            shown = "|".join(map(str, typing.get_args(kind)))
        elif typing.get_origin(kind) is list:
            shown = f"{typing.get_args(kind)[0].__name__}, repeatable"
        else:
            shown = getattr(kind, "__name__", str(kind))
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        rows.append((_flag(f.name), shown, "auto" if default is None else repr(default)))
    return rows
