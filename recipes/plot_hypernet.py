"""Plot a `transplant hypernet train` run (HN_DIR/log.jsonl) to a PNG.

    python recipes/plot_hypernet.py out/hn-smollm2 -o hypernet.png

Left: the training loss per step (LM cross-entropy under that step's sampled tokenizer, and
its running mean over 20 steps: single steps jump because every step has another tokenizer
and other text). Right: the held-out bits per byte under one fixed sampled tokenizer at each
evaluation, overall and per group; its first point is the untrained hypernetwork, i.e. the
`subword` initialization.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the hypernetwork directory (holds log.jsonl)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    records = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["ce"]) for r in records if "ce" in r]
    evals = [(r["step"], r["eval"]) for r in records if "eval" in r]
    if not steps:
        raise SystemExit(f"error: no training steps in {args.run}/log.jsonl")

    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
    x, ce = np.array(steps).T
    window = min(20, len(ce))
    loss_ax.plot(x, ce, color="lightgrey", linewidth=0.8, label="cross-entropy per step")
    loss_ax.plot(x[window - 1:], np.convolve(ce, np.ones(window) / window, "valid"), label=f"running mean ({window})")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("nats per token (sampled tokenizer)")
    loss_ax.legend()
    for key in sorted({k for _, e in evals for k in e}, key=lambda k: (k != "bpb", k)):
        points = [(s, e[key]) for s, e in evals if key in e]
        style = {"linewidth": 2.5, "color": "black"} if key == "bpb" else {"linewidth": 0.8}
        eval_ax.plot(*zip(*points), marker="o", markersize=3, label=key.removeprefix("bpb/") if key != "bpb" else "overall", **style)
    eval_ax.set_xlabel("step")
    eval_ax.set_ylabel("held-out bits per byte")
    eval_ax.legend(fontsize=6, ncol=2)
    fig.suptitle(args.run.name)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
