"""HyperOFA: a hypernetwork from external word vectors to the base embedding space.

After OFA (Liu et al., NAACL 2024) and HyperOFA (Özeren, Liu & Schütze, 2025), for a
causal LM. A token is described by external word vectors (fastText, word2vec): those of the
words whose tokenization contains it and of its own surface when that is a word
(:mod:`transplant.hypernet.wordsets`). A small set encoder reads that set — each vector projected to
the network's width, tagged as "own surface" or "a word containing it" and transformed on
its own, then learned queries attending over the set (attention pooling) — and one head
per matrix writes the token's base row (input, and output when untied).

It is trained on the base vocabulary, where every token with vectors has a right answer
(``hypernet/hyperofa_train.py``), and applied to the tokens of a new tokenizer that the
base lacks. It needs neither a donor model nor parallel text, only word vectors of the
language. Tokens without any vector (bytes, pieces no vocabulary word contains) fall back
to ``subword``.

A trained directory holds the network, the word vectors and their words, and the
fingerprint of its base (:mod:`transplant.hypernet.fingerprint`): it is refused for any base but
that one and its fine-tuned variants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from transplant.hypernet.fingerprint import (WEIGHTS_FILE, BaseSample, check_base, read_directory_config,
                                             save_directory)
from transplant.hypernet.wordsets import WordSets, build_word_sets
from transplant.errors import UserError
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import subword_rows
from transplant.methods.registry import register

WORDS_FILE = "words.json"
FORMAT = "transplant-hyperofa-1"


@dataclass(frozen=True)
class HyperOfaConfig:
    """Shape of a HyperOFA network and the base it belongs to."""

    hidden_size: int
    tied: bool
    base_hash: str
    vector_dim: int
    words: int  # rows of the word-vector table
    width: int = 256
    heads: int = 4  # attention-pooling queries
    max_words: int = 256  # words per token set (OFA's cap)


class HyperOfaNetwork(nn.Module):
    """Word-index sets -> (input row, output row or None when tied).

    A set encoder in the Set Transformer's terms, rFF + PMA: each vector is projected to
    the network's width, tagged by slot and passed through a residual MLP on its own, then
    ``heads`` learned queries attend over the token's set (attention pooling) and a head per
    matrix writes the row. There is no self-attention inside the set: the per-vector work
    runs on the vectors that are present only (a flat batch), so a batch costs what its sets
    hold, not its largest set times the batch (sets run from 1 to 257 vectors, median ~2).

    The word vectors are a buffer of the network (saved with it, never trained), L2-normalized
    (a fastText vector's norm mostly tracks its word's frequency); so are the base rows'
    statistics (:meth:`standardize`). Applying the network to a new tokenizer needs them and
    nothing else from the training run.
    """

    def __init__(self, config: HyperOfaConfig, vectors: torch.Tensor):
        super().__init__()
        if vectors.shape != (config.words, config.vector_dim):
            raise ValueError(f"word vectors {tuple(vectors.shape)} do not fit the config")
        self.config = config
        self.register_buffer("vectors", F.normalize(vectors.float(), dim=1))
        width = config.width
        self.project = nn.Linear(config.vector_dim, width)
        self.slot = nn.Parameter(torch.zeros(2, width))  # 0: the token's own surface, 1: a word containing it
        self.element = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.key = nn.Linear(width, width)
        self.query = nn.Parameter(torch.randn(config.heads, width // config.heads) * 0.02)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        names = ("input",) if config.tied else ("input", "output")
        self.heads = nn.ModuleDict({name: nn.Linear(width, config.hidden_size) for name in names})
        for head in self.heads.values():  # zero heads: an untrained network writes the mean base row
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.register_buffer("offset", torch.zeros(len(names), config.hidden_size))
        self.register_buffer("spread", torch.ones(len(names), config.hidden_size))

    @torch.no_grad()
    def standardize(self, targets: dict[str, torch.Tensor]) -> None:
        """Predict rows as offset + spread * head: the targets' mean row plus a correction in
        units of their per-dimension spread. Base rows share a large common part (SmolLM2's
        mean row has cosine ~0.6 with its rows, with dimensions up to 0.6 against a spread
        of 0.1), which AdamW, moving a bias by about lr per step, would take thousands of
        steps to reach."""
        for i, name in enumerate(self.heads):
            self.offset[i] = targets[name].mean(0)
            self.spread[i] = targets[name].std(0)

    def forward(self, sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows for tokens given as (n, L) word indices padded with -1, the surface slot
        first (:meth:`WordSets.inputs`). A token without any gets one constant row: callers
        give such tokens ``subword`` rows instead."""
        present = sets >= 0
        token, column = present.nonzero(as_tuple=True)
        x = self.project(self.vectors[sets[token, column]]) + torch.where(column.unsqueeze(1) > 0, self.slot[1], self.slot[0])
        x = x + self.element(x)  # (vectors present, width)
        heads, width = self.config.heads, self.config.width
        scores = (self.key(x).view(-1, heads, width // heads) * self.query).sum(-1) / (width // heads) ** 0.5
        padded = scores.new_full((*sets.shape, heads), -torch.inf)
        padded[token, column] = scores
        weights = padded.softmax(dim=1)[token, column]  # (vectors present, heads), summing to 1 per token and head
        pooled = x.new_zeros(len(sets), heads, width // heads)
        pooled.index_add_(0, token, weights.unsqueeze(-1) * x.view(-1, heads, width // heads))
        h = pooled.view(len(sets), width)
        h = h + self.mlp(h)
        rows = {name: self.offset[i] + self.spread[i] * head(h) for i, (name, head) in enumerate(self.heads.items())}
        return rows["input"], rows.get("output")


def trimmed(sets: torch.Tensor) -> torch.Tensor:
    """``sets`` without the all-padding columns at its right (word columns are left-packed)."""
    used = (sets >= 0).any(0).nonzero()
    return sets[:, : int(used.max()) + 1 if len(used) else 1]


@torch.no_grad()
def predict(model: HyperOfaNetwork, sets: torch.Tensor, which: Which, batch_size: int = 1024) -> torch.Tensor:
    """Rows of ``which`` for every set, in batches of similar size (little padding)."""
    sizes = (sets >= 0).sum(1)
    device = model.vectors.device
    rows = torch.empty(len(sets), model.config.hidden_size, device=device)
    for batch in torch.argsort(sizes, stable=True).split(batch_size):
        rows_in, rows_out = model(trimmed(sets[batch]).to(device))
        rows[batch.to(device)] = rows_out if which == "output" and rows_out is not None else rows_in
    return rows


def save_hyperofa(model: HyperOfaNetwork, words: Sequence[str], out: Path, base: BaseSample,
                  extra: dict | None = None) -> None:
    """Write ``out/config.json``, ``out/model.safetensors`` (network + vectors), ``out/words.json``
    and the ``base`` sample."""
    save_directory(model, model.config, FORMAT, out, base, extra)
    (out / WORDS_FILE).write_text(json.dumps(list(words), ensure_ascii=False, allow_nan=False))


def read_config(directory: Path) -> HyperOfaConfig:
    """The config of a HyperOFA directory, refused with one line if it is not one."""
    return read_directory_config(directory, FORMAT, HyperOfaConfig, "hyperofa")


def load_hyperofa(directory: Path, tokens: Sequence[str | None], base_input: torch.Tensor,
                  base_output: torch.Tensor | None) -> tuple[HyperOfaNetwork, list[str], dict]:
    """The network in ``directory``, its words, and how this base relates to the one it was
    trained for (the base itself or a fine-tuned variant; anything else is refused)."""
    config = read_config(directory)
    relation = check_base(directory, config.hidden_size, config.tied, config.base_hash, tokens, base_input, base_output)
    state = load_file(Path(directory) / WEIGHTS_FILE)
    model = HyperOfaNetwork(config, state["vectors"])
    model.load_state_dict(state)
    words = json.loads((Path(directory) / WORDS_FILE).read_text())
    return model.eval(), words, relation


@dataclass(frozen=True)
class HyperOfaOptions:
    hypernet: str = ""  # a directory written by `transplant hypernet train --kind hyperofa`
    batch_size: int = 1024  # tokens per forward pass; bounds memory

    def __post_init__(self) -> None:
        if not self.hypernet:
            raise UserError("--method hyperofa needs --hypernet DIR (train one with "
                            "`transplant hypernet train --kind hyperofa`)")
        read_config(Path(self.hypernet))
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")


@register
class HyperOfa(MethodBase):
    name: ClassVar[str] = "hyperofa"
    description: ClassVar[str] = ("HyperOFA hypernetwork: rows predicted from external word vectors of the words "
                                  "containing the token (--hypernet DIR); subword where a token has none")
    Options: ClassVar[type] = HyperOfaOptions

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        model, sets = self.loaded(ctx)
        rows = subword_rows(ctx, which, missing)
        covered = sets.covered[missing]
        if covered.any():
            rows[covered.to(ctx.device)] = predict(model, sets.inputs(missing[covered]), which, ctx.options.batch_size)
        return rows

    def loaded(self, ctx: Context) -> tuple[HyperOfaNetwork, WordSets]:
        """The network for this base and the new tokenizer's word sets, built once per run."""
        if "hyperofa" not in ctx.cache:
            model, words, ctx.report["base_check"] = load_hyperofa(Path(ctx.options.hypernet), ctx.match.base_vocab.tokens,
                                                             ctx.base_input, ctx.base_output)
            sets = build_word_sets(ctx.match.new_tokenizer, ctx.match.new_vocab, words,
                                   {w: i for i, w in enumerate(words)}, model.config.max_words)
            ctx.cache["hyperofa"] = (model.to(ctx.device), sets)
        return ctx.cache["hyperofa"]
