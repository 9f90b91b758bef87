"""What ties a trained hypernetwork to its base model, shared by every hypernetwork here.

A hypernetwork predicts rows *in one base model's embedding space*: applied to another
base it writes plausible-looking nonsense. So its directory records the base's hidden size,
whether it is tied, and a hash of its vocabulary and embedding matrices, and applying it to
any other base is refused with one line. Both kinds store a directory the same way:
``config.json`` (the tool, a format tag, the network's config, whatever the trainer measured)
and ``model.safetensors``; the tool's name in ``config.json`` is what lets ``--force`` replace it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
from safetensors.torch import save_file

from transplant.errors import UserError
from transplant.io.atomic import TOOL


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
C = TypeVar("C")


def save_directory(model: torch.nn.Module, config: Any, fmt: str, out: Path, extra: dict | None = None) -> None:
    """Write ``out/model.safetensors`` and ``out/config.json`` (``fmt``, ``config``, ``extra``)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    record = {"tool": TOOL, "format": fmt, "config": asdict(config), **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")


def read_directory_config(directory: Path, fmt: str, config_cls: type[C], kind: str) -> C:
    """The config of a ``kind`` hypernetwork directory, refused with one line if it is not one."""
    try:
        record = json.loads((Path(directory) / CONFIG_FILE).read_text())
        if record.get("format") != fmt:
            raise ValueError(record.get("format"))
        return config_cls(**record["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{directory} is not a {kind} hypernetwork directory ({type(e).__name__}: {e})") from e


def base_hash(tokens: Sequence[str | None], base_input: torch.Tensor, base_output: torch.Tensor | None) -> str:
    """A fingerprint of a base model: its vocabulary and its embedding matrices (float32)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(list(tokens), ensure_ascii=False).encode())
    for matrix in (base_input, base_output):
        if matrix is not None:
            digest.update(matrix.detach().to("cpu", torch.float32).contiguous().numpy())
    return digest.hexdigest()


def check_base(directory: Path, hidden_size: int, tied: bool, expected_hash: str, tokens: Sequence[str | None],
               base_input: torch.Tensor, base_output: torch.Tensor | None) -> None:
    """Refuse (one line) a base other than the one the hypernetwork in ``directory`` was trained for."""
    if base_input.shape[1] != hidden_size:
        raise UserError(f"hypernetwork {directory} was trained for a base of hidden size {hidden_size}, "
                        f"this base has {base_input.shape[1]}")
    if tied != (base_output is None) or base_hash(tokens, base_input, base_output) != expected_hash:
        raise UserError(f"hypernetwork {directory} was trained for another base model "
                        "(its vocabulary and embedding hash differ from this one's)")
