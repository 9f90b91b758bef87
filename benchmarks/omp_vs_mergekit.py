"""OMP: transplant vs mergekit-tokensurgeon, wall time, peak RSS and (when available) quality.

Two parts, both on the same HF-format checkpoints:

``commands``: runs ``mergekit-tokensurgeon BASE DONOR OUT -k K -a omp`` and then
``transplant model BASE --tokenizer DONOR --donor DONOR --method omp --k K --fallback F`` for
each F, one after the other, each as a child process whose RSS (with its children) is sampled
every 0.2 s; then ``transplant evaluate`` (per-group perplexity ratios) on every output.

``math``: the OMP math alone on the real matrices of the pair (anchors and missing tokens from
``match_vocabularies``): our ``batch_omp`` on every missing token, and mergekit's
``batch_omp`` on its first ``--mergekit-batches`` batches of 512, extrapolated linearly to
all tokens (labelled as such: mergekit's cost per batch is the same for every batch).

    python benchmarks/omp_vs_mergekit.py commands --base /tmp/omp_models/gemma3 --donor /tmp/omp_models/smollm2 \\
        --corpus /tmp/eval_corpus/dev.jsonl --max-docs 10
    python benchmarks/omp_vs_mergekit.py math --base /tmp/omp_models/smollm2 --donor /tmp/omp_models/gemma3 --mergekit-batches 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (GiB, process tree) and exit code of ``cmd``."""
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: progress bars would fill a pipe
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.2)
    if proc.returncode:
        log.seek(0)
        print(f"  {cmd[0]} failed: {log.read().strip().splitlines()[-3:]}", file=sys.stderr)
    return time.perf_counter() - start, peak / 2**30, proc.returncode


CLI = [sys.executable, str(ROOT / "cli.py")]


def commands(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="omp_bench_"))
    runs = {"mergekit": ["mergekit-tokensurgeon", args.base, args.donor, str(work / "mergekit"), "-k", str(args.k), "-a", "omp"]}
    for fallback in args.fallback:
        runs[f"transplant/{fallback}"] = [
            *CLI, "model", args.base, "--tokenizer", args.donor, "--donor", args.donor, "--method", "omp",
            "--k", str(args.k), "--fallback", fallback, "-o", str(work / f"transplant_{fallback}"), "--force", *args.extra]
    rows = []
    for name, cmd in runs.items():
        out = Path(cmd[cmd.index("-o") + 1] if "-o" in cmd else cmd[3])
        wall, rss, code = run_measured(cmd)
        ratios = evaluate(out, args) if code == 0 and args.corpus else {}
        rows.append((name, wall, rss, ratios))
        print(f"{name}: {wall:.1f} s, peak RSS {rss:.2f} GiB, ratios {ratios}", flush=True)
    groups = sorted({g for *_, r in rows for g in r if g != "overall"}) + ["overall"]
    print(f"\n{'tool':22s} {'wall s':>7s} {'RSS GiB':>8s} " + " ".join(f"{g:>7s}" for g in groups))
    for name, wall, rss, ratios in rows:
        print(f"{name:22s} {wall:7.1f} {rss:8.2f} " + " ".join(f"{ratios.get(g, float('nan')):7.3f}" for g in groups))


def evaluate(model: Path, args: argparse.Namespace) -> dict[str, float]:
    """Per-group and overall byte-level perplexity ratios from ``transplant evaluate``."""
    report = model.with_suffix(".eval.json")
    cmd = [*CLI, "evaluate", str(model), "--base", args.base, "--corpus", args.corpus, "--json", str(report)]
    if args.max_docs:
        cmd += ["--max-docs", str(args.max_docs)]
    if subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode or not report.exists():
        return {}
    return json.loads(report.read_text())["ratio"]


def math(args: argparse.Namespace) -> None:
    from mergekit.tokensurgeon.omp import batch_omp as mergekit_omp
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from transplant.omp import batch_omp
    from transplant.vocab import match_vocabularies

    def embeddings(path: str) -> torch.Tensor:
        """The input embedding matrix of a single-file checkpoint (enough for these pairs)."""
        with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
            return f.get_tensor(next(k for k in f.keys() if k.endswith("embed_tokens.weight"))).float()

    match = match_vocabularies(AutoTokenizer.from_pretrained(args.base), AutoTokenizer.from_pretrained(args.donor))
    donor = embeddings(args.donor)
    new_ids, _ = match.anchors
    atoms = donor[new_ids[new_ids < len(donor)]]
    targets = donor[match.missing[match.missing < len(donor)]]
    print(f"{len(targets)} missing tokens, {len(atoms)} anchors, donor dim {atoms.shape[1]}, k={args.k}, "
          f"{torch.get_num_threads()} threads")
    batches = min(args.mergekit_batches, -(-len(targets) // 512))
    start = time.perf_counter()
    for b in range(batches):
        mergekit_omp(targets[b * 512 : (b + 1) * 512], atoms, args.k)
    per_token = (time.perf_counter() - start) / min(len(targets), batches * 512)
    print(f"mergekit batch_omp: {per_token * len(targets):8.1f} s  "
          f"(EXTRAPOLATED from {batches} batch(es) of 512 to {len(targets)} tokens)")
    for refresh in args.refresh:
        start = time.perf_counter()
        result = batch_omp(targets, atoms, args.k, refresh=refresh, pool=args.pool)
        print(f"transplant batch_omp refresh={refresh}: {time.perf_counter() - start:8.1f} s  "
              f"(all tokens; mean relative residual {result.rel_residual.mean():.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["commands", "math"])
    parser.add_argument("--base", required=True, help="HF model dir of the base")
    parser.add_argument("--donor", required=True, help="HF model dir of the donor (its tokenizer is the new one)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--corpus", help="commands: evaluation corpus for `transplant evaluate`")
    parser.add_argument("--max-docs", type=int, default=0, help="commands: documents per group to evaluate")
    parser.add_argument("--fallback", nargs="+", default=["subword", "none"], help="commands: our --fallback runs")
    parser.add_argument("--work", help="commands: output folder (default: a new temp dir)")
    parser.add_argument("--mergekit-batches", type=int, default=2, help="math: mergekit batches to time")
    parser.add_argument("--refresh", type=int, nargs="+", default=[1, 8], help="math: our refresh settings")
    parser.add_argument("--pool", type=int, default=256)
    parser.add_argument("extra", nargs="*", help="extra flags for `transplant model` (after --)")
    args = parser.parse_args()
    commands(args) if args.part == "commands" else math(args)


if __name__ == "__main__":
    main()
