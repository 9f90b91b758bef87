"""OMP: transplant vs mergekit-tokensurgeon, wall time, peak RSS and (when available) quality.

Two parts, both on the same HF-format checkpoints:

``commands``: runs ``mergekit-tokensurgeon BASE DONOR OUT -k K -a omp`` and then
``transplant model BASE --tokenizer DONOR --donor DONOR --method omp --k K FLAGS`` for each
``--variants`` entry FLAGS, one after the other, each as a child process whose RSS (with its
children) is sampled every 0.2 s; then ``transplant evaluate`` (per-group perplexity ratios)
on every output.

``math``: the OMP math alone on the real matrices of the pair (anchors and missing tokens from
``match_vocabularies``): mergekit's ``batch_omp`` and our exact mode (``pool=0``) on the first
``--exact-batches`` batches of 512, extrapolated linearly to all tokens (labelled as such: an
exact batch costs the same for every batch), and our pooled mode on every token.

    D=~/.cache/transplant/models
    python benchmarks/omp_vs_mergekit.py commands --base $D/gemma3-270m --donor $D/smollm2-135m \\
        --corpus /tmp/eval_corpus/dev.jsonl --max-docs 10
    python benchmarks/omp_vs_mergekit.py math --base $D/smollm2-135m --donor $D/gemma3-270m --exact-batches 1
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
    for i, flags in enumerate(args.variants):
        runs[f"transplant {flags or '(defaults)'}"] = [
            *CLI, "model", args.base, "--tokenizer", args.donor, "--donor", args.donor, "--method", "omp",
            "--k", str(args.k), *flags.split(), "-o", str(work / f"transplant_{i}"), "--force"]
    rows = []
    for name, cmd in runs.items():
        out = Path(cmd[cmd.index("-o") + 1] if "-o" in cmd else cmd[3])
        wall, rss, code = run_measured(cmd)
        ratios = evaluate(out, args) if code == 0 and args.corpus else {}
        rows.append((name, wall, rss, ratios))
        print(f"{name}: {wall:.1f} s, peak RSS {rss:.2f} GiB, ratios {ratios}", flush=True)
    groups = sorted({g for *_, r in rows for g in r if g != "overall"}) + ["overall"]
    print(f"\n{'tool':40s} {'wall s':>7s} {'RSS GiB':>8s} " + " ".join(f"{g:>7s}" for g in groups))
    for name, wall, rss, ratios in rows:
        print(f"{name:40s} {wall:7.1f} {rss:8.2f} " + " ".join(f"{ratios.get(g, float('nan')):7.3f}" for g in groups))


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
    from transformers import AutoTokenizer

    from transplant.checkpoint import read_embeddings
    from transplant.omp import batch_omp
    from transplant.vocab import match_vocabularies

    match = match_vocabularies(AutoTokenizer.from_pretrained(args.base), AutoTokenizer.from_pretrained(args.donor))
    donor = read_embeddings(Path(args.donor)).input.float()
    new_ids, _ = match.anchors
    atoms = donor[new_ids[new_ids < len(donor)]]
    targets = donor[match.missing[match.missing < len(donor)]]
    print(f"{len(targets)} missing tokens, {len(atoms)} anchors, donor dim {atoms.shape[1]}, k={args.k}, "
          f"{torch.get_num_threads()} threads")
    sample = targets[: args.exact_batches * 512]
    exact = {"mergekit batch_omp": lambda x: mergekit_omp(x, atoms, args.k),
             "transplant pool=0 (exact)": lambda x: batch_omp(x, atoms, args.k, batch_size=512)}
    for name, run in exact.items():
        start = time.perf_counter()
        run(sample)
        seconds = (time.perf_counter() - start) / len(sample) * len(targets)
        print(f"{name:32s} {seconds:8.1f} s  (EXTRAPOLATED from {len(sample)} to {len(targets)} tokens)")
    for pool in args.pool:
        start = time.perf_counter()
        result = batch_omp(targets, atoms, args.k, pool=pool)
        print(f"{'transplant pool=' + str(pool):32s} {time.perf_counter() - start:8.1f} s  "
              f"(all tokens; mean relative residual {result.rel_residual.mean():.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["commands", "math"])
    parser.add_argument("--base", required=True, help="HF model dir of the base")
    parser.add_argument("--donor", required=True, help="HF model dir of the donor (its tokenizer is the new one)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--corpus", help="commands: evaluation corpus for `transplant evaluate`")
    parser.add_argument("--max-docs", type=int, default=0, help="commands: documents per group to evaluate")
    parser.add_argument("--variants", nargs="+", default=["", "--fallback none", "--pool 0 --fallback none"],
                        help="commands: flag sets of our runs (one string each)")
    parser.add_argument("--work", help="commands: output folder (default: a new temp dir)")
    parser.add_argument("--exact-batches", type=int, default=2, help="math: batches of 512 to time exact OMP on")
    parser.add_argument("--pool", type=int, nargs="+", default=[64], help="math: our pool sizes")
    args = parser.parse_args()
    commands(args) if args.part == "commands" else math(args)


if __name__ == "__main__":
    main()
