"""Hypernetworks that predict embedding rows for unseen tokens (ZeTT, HyperOFA).

Each hypernetwork method registers itself in :mod:`transplant.methods.registry` like any
other initialization method; modules placed here are discovered automatically. Training one
is :func:`train` here, or ``transplant hypernet train`` on the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

KINDS = ("zett", "hyperofa")


def train(base: str | None = None, out: str | Path | None = None, *, kind: str = "zett",
          corpus: Sequence[str | Path] | None = None, config: str | Path | None = None, **settings: Any) -> Path:
    """Train a hypernetwork of ``kind`` for ``base`` into ``out`` (HN_DIR) and return it.

    ``zett`` learns from text (``corpus``); ``hyperofa`` from word vectors (``vectors=`` or
    ``train_vectors=``). ``settings`` are the fields of the trainer's config
    (``steps``, ``objective="alm"``, ``eval_corpus``, …) and win over the ``config`` YAML.
    Apply the result with ``transplant.model(..., method=kind, options={"hypernet": out})``."""
    from transplant.errors import UserError
    from transplant.hypernet import hyperofa_train, zett_train
    from transplant.training.loop import load_config

    trainers = {"zett": (zett_train.train, zett_train.HypernetTrainConfig),
                "hyperofa": (hyperofa_train.train, hyperofa_train.HyperOfaTrainConfig)}
    if kind not in trainers:
        raise UserError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    run, config_cls = trainers[kind]
    cfg = load_config(config_cls, None if config is None else Path(config), base=base,
                      corpus=None if corpus is None else [str(c) for c in corpus],
                      out=None if out is None else str(out), **settings)
    return Path(run(cfg))
