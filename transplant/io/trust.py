"""What a model directory may make this process do besides handing over tensors and JSON.

A model directory is data, often downloaded from strangers. Two things in one can run code:
an ``auto_map`` in its ``config.json`` or ``tokenizer_config.json`` (transformers imports the
Python file it names) and pickle weights (``pytorch_model.bin``; unpickling can run anything
on load, whatever the loader's safeguards). Neither is used unless the user allows it
(``--trust-remote-code``, ``--allow-pickle``); a directory that needs one is refused in one
line instead, and transformers is always told the answer so it never asks on the terminal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transplant.errors import UserError

# The model's own weights: these names, never just any *.safetensors in the directory (ours
# include initialized.safetensors, which holds no weights).
SAFETENSORS_WEIGHTS = ("model.safetensors.index.json", "model.safetensors")
PICKLE_WEIGHTS = ("pytorch_model.bin.index.json", "pytorch_model.bin")
CODE_CONFIGS = ("config.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Trust:
    """What the user allows model directories to do; the defaults allow neither."""

    remote_code: bool = False  # import Python files a config's auto_map names
    pickle: bool = False  # unpickle .bin weights

    def code_kwargs(self) -> dict[str, Any]:
        """For every transformers ``from_pretrained``: the answer given, so it never prompts."""
        return {"trust_remote_code": self.remote_code}

    def model_kwargs(self) -> dict[str, Any]:
        """For a model's ``from_pretrained``: also safetensors only, unless pickle is allowed."""
        return {**self.code_kwargs(), "use_safetensors": None if self.pickle else True}

    def check_code(self, directory: Path) -> None:
        """Refuse a directory whose configs ask transformers to import code, unless trusted."""
        if self.remote_code:
            return
        for name in CODE_CONFIGS:
            if "auto_map" in read_json(directory / name, missing_ok=True):
                raise UserError(f"{directory / name} maps its classes to Python code in the model directory "
                                "(auto_map); pass --trust-remote-code if you trust it")

    def weights_file(self, directory: Path) -> Path:
        """The file that holds or indexes the model's own weights: its safetensors (or their
        index) first; ``pytorch_model.bin`` (or its index) only when pickle is allowed."""
        allowed = SAFETENSORS_WEIGHTS + (PICKLE_WEIGHTS if self.pickle else ())
        for name in allowed:
            if (directory / name).is_file():
                return directory / name
        if any((directory / name).is_file() for name in PICKLE_WEIGHTS) or any(directory.glob("*.bin")):
            raise UserError(f"{directory} has only pickle weights (.bin); pass --allow-pickle if you trust them")
        raise UserError(f"{directory} has no model weights (model.safetensors or model.safetensors.index.json)")


def read_json(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from a model directory; anything else is one line naming the file."""
    if missing_ok and not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from e
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value
