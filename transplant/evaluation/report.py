"""Turn evaluations into tables (terminal and markdown), a JSON record and a bar chart.

Every table is first built as plain strings (`Grid`) so the terminal and the markdown
report always show the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from transplant.evaluation.draft import DraftEvaluation
from transplant.evaluation.evaluate import Evaluation, ppl_ratio


TOKEN_PPL_NOTE = "* per-token PPL under the model's own tokenizer: not comparable across tokenizers"


@dataclass(frozen=True)
class Grid:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    labels: int = 1  # leading text columns, left-aligned; the rest are numbers

    def to_rich(self) -> Table:
        table = Table(title=self.title, caption=self.note or None)
        for i, header in enumerate(self.headers):
            table.add_column(header, justify="left" if i < self.labels else "right")
        for row in self.rows:
            table.add_row(*row)
        return table

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "|".join([":---"] * self.labels + ["---:"] * (len(self.headers) - self.labels)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


def scores_grid(evaluation: Evaluation, title: str | None = None) -> Grid:
    """Absolute figures of one model per group (bits/byte, byte PPL, own-token PPL, bytes/token)."""
    headers = ["group", "docs", "bytes", "tokens", "bits/byte", "byte PPL", "token PPL*", "bytes/token"]
    named = [*evaluation.groups.items(), ("overall", evaluation.overall)]
    rows = [
        [g, str(s.docs), f"{s.bytes:,}", f"{s.tokens:,}", f"{s.bits_per_byte:.4f}", f"{s.byte_ppl:.4f}",
         f"{s.token_ppl:.2f}", f"{s.bytes_per_token:.3f}"]
        for g, s in named
    ]
    return Grid(title or evaluation.model, headers, rows, TOKEN_PPL_NOTE)


def pair_grid(new: Evaluation, base: Evaluation) -> Grid:
    """One transplanted model against its base, per group: the `transplant evaluate` table."""
    ratios = ppl_ratio(new, base)
    headers = ["group", "docs", "bpb base", "bpb new", "B/tok base", "B/tok new", "tokPPL base*", "tokPPL new*",
               "ratio"]
    named = [(g, base.groups[g], new.groups[g]) for g in base.groups] + [("overall", base.overall, new.overall)]
    if "digits" in ratios:
        named.append(("digits", base.digits, new.digits))
    rows = [
        [g, str(b.docs), f"{b.bits_per_byte:.4f}", f"{n.bits_per_byte:.4f}", f"{b.bytes_per_token:.3f}",
         f"{n.bytes_per_token:.3f}", f"{b.token_ppl:.2f}", f"{n.token_ppl:.2f}", f"{ratios[g]:.4f}"]
        for g, b, n in named
    ]
    title = f"{new.model} vs {base.model}: byte-level perplexity ratio (1.0 = lossless)"
    note = TOKEN_PPL_NOTE + ("; digits: the tokens that write the numbers in the text, per byte of them"
                             if "digits" in ratios else "")
    return Grid(title, headers, rows, note)


def draft_grid(drafted: DraftEvaluation) -> Grid:
    """A draft against its target, per group: the `transplant evaluate --draft-for` table."""
    headers = ["group", "positions", "agreement", f"accepted / round (k={drafted.window})", "tokens / target pass"]
    named = [*drafted.groups.items(), ("overall", drafted.overall)]
    rows = [[g, f"{d.positions:,}", f"{d.agreement:.3f}", f"{d.mean_accepted:.2f}", f"{d.tokens_per_round:.2f}"]
            for g, d in named]
    note = ("agreement: share of text positions where the draft's greedy token is the target's; accepted: "
            "draft tokens kept per speculative round on the target's greedy continuations")
    if drafted.speed is not None:
        speed = drafted.speed.to_dict()
        note += (f"\nwall clock, {speed['tokens']} greedy tokens: target alone {speed['alone_tokens_per_s']:.1f} tok/s, "
                 f"with the draft {speed['assisted_tokens_per_s']:.1f} tok/s (x{speed['speedup']:.2f}"
                 f"{'' if speed['same_output'] else '; outputs differ: float noise between the two paths'})")
    return Grid(f"{drafted.draft} drafting for {drafted.target}", headers, rows, note)


def ranking(base: Evaluation, results: dict[str, Evaluation]) -> list[tuple[str, dict[str, float]]]:
    """(method, ratios per group and overall), best overall ratio first."""
    ratios = {name: ppl_ratio(ev, base) for name, ev in results.items()}
    return sorted(ratios.items(), key=lambda item: (item[1]["overall"], item[0]))


def ranking_grid(base: Evaluation, results: dict[str, Evaluation]) -> Grid:
    """Methods ranked by overall perplexity ratio, with per-group ratios and bytes/token."""
    groups = list(base.groups)
    headers = ["rank", "method", "overall", *groups, "bpb", "B/tok"]
    rows = [
        [str(rank), name, f"{r['overall']:.4f}", *(f"{r[g]:.4f}" for g in groups),
         f"{results[name].overall.bits_per_byte:.4f}", f"{results[name].overall.bytes_per_token:.3f}"]
        for rank, (name, r) in enumerate(ranking(base, results), 1)
    ]
    rows.append(["", "base", "1.0000", *("1.0000" for _ in groups), f"{base.overall.bits_per_byte:.4f}",
                 f"{base.overall.bytes_per_token:.3f}"])
    title = f"Byte-level perplexity ratio to {base.model} (lower is better, 1.0 = lossless)"
    note = "bpb: bits per byte overall; B/tok: UTF-8 bytes per token of the new tokenizer"
    return Grid(title, headers, rows, note, labels=2)


def ratio_figure(base: Evaluation, results: dict[str, Evaluation], tokenizer: str):
    """Grouped bar chart: one group of bars per corpus group, one bar per method (ranked).

    The y axis is logarithmic (a ratio of 2 is as bad as one of 0.5 is good) but labelled
    with plain numbers: ratios are read as "1.5×", not as powers of ten."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ranked = ranking(base, results)
    groups = [*base.groups, "overall"]
    width = 0.8 / len(ranked)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(ranked) / 3)), 4.5))
    for i, (name, ratios) in enumerate(ranked):
        xs = [g + (i - (len(ranked) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [ratios[g] for g in groups], width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("byte-level PPL ratio to base (log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_title(f"{base.model} onto the tokenizer {tokenizer}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_ratios(path: Path, base: Evaluation, results: dict[str, Evaluation], tokenizer: str) -> Path:
    """:func:`ratio_figure` saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = ratio_figure(base, results, tokenizer)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, base: Evaluation, results: dict[str, Evaluation], meta: dict) -> list[Path]:
    """`report.md`, `report.json` and `ratio.png` in `out`; `meta` (corpus, settings, per-method
    transplant counts and timings) goes into the JSON and the markdown header."""
    out.mkdir(parents=True, exist_ok=True)
    record = {
        **meta,
        "metric": "byte-level perplexity ratio = 2^bpb(new) / 2^bpb(base) on the same documents",
        "ranking": [{"method": name, "ratio": r} for name, r in ranking(base, results)],
        "base": base.to_dict(),
        "methods": {name: ev.to_dict() for name, ev in results.items()},
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    png_path = plot_ratios(out / "ratio.png", base, results, str(meta.get("tokenizer", "?")))
    settings = "\n".join(f"- {k}: `{v}`" for k, v in meta.items() if not isinstance(v, dict))
    sections = [
        "# Tokenizer transplant comparison",
        settings,
        ranking_grid(base, results).to_markdown(),
        f"![ratio per group]({png_path.name})",
        scores_grid(base, f"base: {base.model}").to_markdown(),
        *(scores_grid(results[name], f"method: {name}").to_markdown() for name, _ in ranking(base, results)),
    ]
    md_path = out / "report.md"
    md_path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return [md_path, json_path, png_path]
