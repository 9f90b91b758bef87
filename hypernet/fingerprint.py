"""What ties a trained hypernetwork to its base model, shared by every hypernetwork here.

A hypernetwork predicts rows *in one base model's embedding space*: applied to another
base it writes plausible-looking nonsense. So its directory records the base's hidden size,
whether it is tied, and a hash of its vocabulary and embedding matrices, and applying it to
any other base is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from transplant.errors import UserError


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
