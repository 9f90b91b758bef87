"""ZeTT-style hypernetwork: a token's embedding rows predicted from its surface string.

For a base model B, a token of any tokenizer is spelled by B's own tokenizer as base
pieces (the decomposition ``subword`` averages). The hypernetwork reads the frozen base
rows of those pieces (input ⊕ output rows when B is untied), projects them to its width,
runs a small transformer encoder over them (learned positions, padding masked) and pools
the first position; one head per matrix adds a correction to the mean of the pieces'
rows:

    row(t) = mean_j E[piece_j]  +  head(encoder(pieces))

The heads start at zero, so an untrained hypernetwork *is* the ``subword`` baseline and
training can only move away from it where the LM loss says so. A trained hypernetwork is
tied to its base and the base's fine-tuned variants (:mod:`transplant.hypernet.fingerprint`):
applying it to anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from transplant.hypernet.fingerprint import (WEIGHTS_FILE, BaseSample, check_base, read_directory_config,
                                             save_directory)
from transplant.errors import UserError
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import mix_rows
from transplant.methods.registry import register

FORMAT = "transplant-zett-1"


@dataclass(frozen=True)
class HypernetConfig:
    """Shape of a hypernetwork and the base it belongs to. 0 for width/heads = derived
    (width = the base hidden size, heads = width / 64)."""

    hidden_size: int
    tied: bool
    base_hash: str
    width: int = 0
    layers: int = 3
    heads: int = 0
    mlp_ratio: int = 2
    max_pieces: int = 7

    @property
    def model_width(self) -> int:
        return self.width or self.hidden_size

    @property
    def model_heads(self) -> int:
        return self.heads or max(1, self.model_width // 64)


def padded_ids(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """(n, longest) ids padded with -1: the layout :class:`HyperNetwork` reads its pieces in."""
    rows = [torch.tensor(r, dtype=torch.long) for r in rows]
    return pad_sequence(rows, batch_first=True, padding_value=-1)


class HyperNetwork(nn.Module):
    """Base pieces -> (input row, output row or None when tied).

    The base matrices are frozen buffers that are not saved: the hypernetwork's file holds
    only what was trained, and the base is supplied again (and checked) when it is loaded.
    """

    def __init__(self, config: HypernetConfig, base_input: torch.Tensor, base_output: torch.Tensor | None):
        super().__init__()
        if base_input.shape[1] != config.hidden_size or config.tied != (base_output is None):
            raise ValueError("base matrices do not fit the hypernetwork config")
        self.config = config
        self.register_buffer("base_input", base_input.float(), persistent=False)
        self.register_buffer("base_output", None if base_output is None else base_output.float(), persistent=False)
        width, d = config.model_width, config.hidden_size
        self.project = nn.Linear(d if config.tied else 2 * d, width)
        self.positions = nn.Parameter(torch.randn(config.max_pieces, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, config.model_heads, config.mlp_ratio * width, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict({name: nn.Linear(width, d) for name in (("input",) if config.tied else ("input", "output"))})
        for head in self.heads.values():  # zero heads: step 0 is exactly `subword`
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def matrix(self, which: Which) -> torch.Tensor:
        return self.base_output if which == "output" and self.base_output is not None else self.base_input

    def forward(self, pieces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows for tokens given as (n, L) base pieces padded with -1.

        As under ``subword``: the residual mean runs over *all* pieces, and a token without
        pieces (a special, or a byte the base vocabulary lacks) gets the mean base row. The
        encoder reads the first ``max_pieces``.
        """
        present = pieces >= 0
        count = present.sum(1, keepdim=True)
        weights = present.float() / count.clamp(min=1)
        clipped = pieces[:, : self.config.max_pieces].clamp(min=0)
        x = self.base_input[clipped]
        if self.base_output is not None:
            x = torch.cat([x, self.base_output[clipped]], dim=-1)
        x = self.project(x) + self.positions[: clipped.shape[1]]
        padding = ~present[:, : clipped.shape[1]]
        padding[:, 0] = False  # a token without pieces reads one dummy piece; its row is replaced below
        pooled = self.norm(self.encoder(x, src_key_padding_mask=padding))[:, 0]
        rows = {}
        for name, head in self.heads.items():
            matrix = self.matrix(name)
            predicted = mix_rows(matrix, pieces, weights) + head(pooled)
            rows[name] = torch.where(count > 0, predicted, matrix.mean(0))
        return rows["input"], rows.get("output")


def save_hypernet(model: HyperNetwork, out: Path, base: BaseSample, extra: dict | None = None) -> None:
    """Write ``model`` as ``out/config.json`` + ``out/model.safetensors``, with its ``base`` sample."""
    save_directory(model, model.config, FORMAT, out, base, extra)


def read_config(directory: Path) -> HypernetConfig:
    """The config of a hypernetwork directory, refused with one line if it is not one."""
    return read_directory_config(directory, FORMAT, HypernetConfig, "zett")


def load_hypernet(directory: Path, tokens: Sequence[str | None], base_input: torch.Tensor,
                  base_output: torch.Tensor | None) -> tuple[HyperNetwork, dict]:
    """The hypernetwork in ``directory`` for this base and how the base relates to the one it
    was trained for (:func:`~transplant.hypernet.fingerprint.check_base`), or one line saying
    why it does not fit."""
    config = read_config(directory)
    relation = check_base(directory, config.hidden_size, config.tied, config.base_hash, tokens, base_input, base_output)
    model = HyperNetwork(config, base_input, base_output)
    model.load_state_dict(load_file(Path(directory) / WEIGHTS_FILE))
    return model.eval(), relation


def hypernet_for(ctx: Context, directory: Path) -> HyperNetwork:
    """The hypernetwork in ``directory`` loaded for this transplant, once: the first call
    checks it fits the base (:func:`load_hypernet`, a one-line refusal if not), records the
    base check and keeps it on ``ctx.device``; later calls (the other matrix, or ``auto`` after
    picking it) reuse it."""
    key = f"zett:{Path(directory).resolve()}"
    if key not in ctx.cache:
        model, ctx.report["base_check"] = load_hypernet(Path(directory), ctx.match.base_vocab.tokens,
                                                        ctx.base_input, ctx.base_output)
        ctx.cache[key] = model.to(ctx.device)
    return ctx.cache[key]


@dataclass(frozen=True)
class ZettOptions:
    hypernet: str = ""  # a directory written by `transplant hypernet train`
    batch_size: int = 4096  # tokens per forward pass; bounds memory
    predict_all: bool = False  # predict exact matches too (specials stay copied), as ZeTT's own evaluation does

    def __post_init__(self) -> None:
        if not self.hypernet:
            raise UserError("--method zett needs --hypernet DIR (train one with `transplant hypernet train`)")
        read_config(Path(self.hypernet))
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")


@register
class Zett(MethodBase):
    name: ClassVar[str] = "zett"
    description: ClassVar[str] = "ZeTT hypernetwork: rows predicted from the token's base pieces (--hypernet DIR)"
    Options: ClassVar[type] = ZettOptions

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        """Predicted rows, in batches of tokens sorted by piece count (little padding)."""
        model = hypernet_for(ctx, Path(ctx.options.hypernet))
        lengths = torch.tensor([len(ctx.match.decompose(i)) for i in missing.tolist()])
        rows = torch.empty(len(missing), ctx.base(which).shape[1], device=ctx.device)
        with torch.inference_mode():
            for batch in torch.argsort(lengths, stable=True).split(ctx.options.batch_size):
                predicted_input, predicted_output = model(ctx.match.decompose_padded(missing[batch]).to(ctx.device))
                rows[batch.to(ctx.device)] = predicted_output if which == "output" and predicted_output is not None else predicted_input
        return rows
