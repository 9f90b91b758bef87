"""``--device``: checked before any work, so a name torch does not know or a device this
machine lacks is one line rather than a traceback after the models have loaded."""

from __future__ import annotations

import torch

from transplant.errors import UserError, reason


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` names, once a tensor has been made on it.

    torch parses names lazily: ``cuda`` on a machine without CUDA, or ``cuda:7`` on one
    with two GPUs, fails only at the first tensor. ``meta`` holds no data: every figure
    computed there would be garbage, so it is refused too.
    """
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # torch's "not compiled with CUDA" is an AssertionError
        raise UserError(f"--device {name}: not usable here ({reason(e)})") from None
    if device.type == "meta":
        raise UserError("--device meta holds no data; use cpu or cuda")
    return device
