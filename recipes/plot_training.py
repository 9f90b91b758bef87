"""Plot the perplexity-ratio curves of `transplant train` runs (RUN = OUT.run) to one PNG.

    python recipes/plot_training.py out/smollm2-de-subword-trained.run [more runs] -o ratio.png

One line per evaluation group (ratio/de, ratio/en, ...) against training tokens, a colour
per group and a line style per run, so runs from different initializations compare at a
glance; stages one after another (a dotted line where stage 2 starts); 1.0 is the base.
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
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (OUT.run)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--groups", help="comma-separated groups to draw (default: all; digits can dwarf the rest)")
    args = parser.parse_args()
    keep = None if args.groups is None else set(args.groups.split(","))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours: dict[str, str] = {}
    for run, style in zip(args.runs, ("-", "--", "-.", ":") * len(args.runs)):
        points, starts = curves(run)
        if not points:
            raise SystemExit(f"error: no evaluations in {run}/stage*/log.jsonl (was eval_corpus set?)")
        for group, series in points.items():
            if keep is not None and group not in keep:
                continue
            colour = colours.setdefault(group, f"C{len(colours)}")
            label = group if len(args.runs) == 1 else f"{run.name}: {group}"
            ax.plot([t / 1e6 for t, _ in series], [r for _, r in series], style, color=colour, marker="o",
                    markersize=3, label=label)
        for start in starts[1:]:
            ax.axvline(start / 1e6, color="grey", linestyle=":", linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("byte perplexity / base")
    ax.set_title(", ".join(run.name for run in args.runs))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
