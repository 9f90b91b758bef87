"""Name -> method registry.

Methods register themselves with ``@register``; :func:`load_all` imports every module of
the packages :mod:`transplant.methods` and :mod:`transplant.hypernet` so that adding a
method is adding one file, never editing a dispatch table.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from transplant.errors import UserError
from transplant.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}

# The long flags of `transplant model` (as option names). Method options are flags of the same
# command, so an option named like one of these would be taken by the command and never reach
# the method. tests/test_options.py checks this list against the command itself.
COMMAND_FLAGS = frozenset({
    "tokenizer", "out", "method", "donor", "seed", "device", "chat_template", "pad_to_multiple_of",
    "recipe", "force", "allow_pickle", "trust_remote_code", "json", "gguf", "help",
})


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}")
    clashes = sorted(f.name for f in dataclasses.fields(cls.Options) if f.name in COMMAND_FLAGS)
    if clashes:
        flags = ", ".join("--" + name.replace("_", "-") for name in clashes)
        raise ValueError(f"method {cls.name!r}: option {flags} is a flag of `transplant model`; rename it")
    _REGISTRY[cls.name] = cls
    return cls


def load_all() -> None:
    """Import every module of the packages that hold methods (idempotent).

    The packages are imported here, not at the top: their modules import this one to
    register, so the registry must exist before they load."""
    from transplant import hypernet, methods

    for package in (methods, hypernet):
        for info in pkgutil.iter_modules(package.__path__, prefix=package.__name__ + "."):
            importlib.import_module(info.name)


def available() -> dict[str, type[Method]]:
    """All registered methods, sorted by name."""
    load_all()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Method]:
    """The method class called ``name``; a one-line error lists the known names."""
    methods = available()
    if name not in methods:
        raise UserError(f"unknown method {name!r}; known: {', '.join(methods)}")
    return methods[name]
