"""Plot the perplexity-ratio curve of a `transplant train` run (RUN = OUT.run) to a PNG.

    python recipes/plot_training.py out/smollm2-de-subword-trained.run -o ratio.png

One line per evaluation group (ratio/de, ratio/en, ...) against training tokens, stages one
after another (a dashed line where stage 2 starts); 1.0 is the base model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves(run: Path) -> tuple[dict[str, list[tuple[int, float]]], list[int]]:
    """Ratio per group as (tokens so far, ratio) points, and the token counts where stages begin."""
    points: dict[str, list[tuple[int, float]]] = {}
    starts, offset = [], 0
    for log in sorted(run.glob("stage*/log.jsonl")):
        starts.append(offset)
        tokens = offset
        for record in map(json.loads, log.read_text().splitlines()):
            tokens = offset + record.get("tokens", tokens - offset)
            for key, value in record.get("eval", {}).items():
                if key.startswith("ratio/"):
                    points.setdefault(key.removeprefix("ratio/"), []).append((tokens, value))
        offset = tokens
    return points, starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run directory (OUT.run)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    points, starts = curves(args.run)
    if not points:
        raise SystemExit(f"error: no evaluations in {args.run}/stage*/log.jsonl (was eval_corpus set?)")
    fig, ax = plt.subplots(figsize=(7, 4))
    for group, series in points.items():
        ax.plot([t / 1e6 for t, _ in series], [r for _, r in series], marker="o", markersize=3, label=group)
    for start in starts[1:]:
        ax.axvline(start / 1e6, color="grey", linestyle="--", linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("byte perplexity / base")
    ax.set_title(args.run.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
