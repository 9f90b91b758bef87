"""OMP: transplant vs mergekit-tokensurgeon, wall time, peak RSS, quality, and which rows differ.

Three parts, all on the same HF-format checkpoints:

``commands``: runs ``mergekit-tokensurgeon BASE DONOR OUT -k K -a omp`` and then
``transplant model BASE --tokenizer DONOR --donor DONOR --method omp --k K FLAGS`` for each
``--variants`` entry FLAGS, one after the other, each as a child process whose RSS (with its
children) is sampled every 0.2 s; then ``transplant evaluate`` (per-group perplexity ratios)
on every output.

``math``: the OMP math alone on the real matrices of the pair (anchors and missing tokens from
``match_vocabularies``): mergekit's ``batch_omp`` and our exact mode (``pool=0``) on the first
``--exact-batches`` batches of 512, extrapolated linearly to all tokens (labelled as such: an
exact batch costs the same for every batch), and our pooled mode on every token.

``rows``: where two finished outputs differ, row by row of the input matrix: ``--ours`` (e.g.
``transplant … --pool 0 --fallback none``, whose OMP is mergekit's) and ``--theirs``
(``mergekit-tokensurgeon … -a omp``; both as written by ``commands``). Rows fall into
categories by who copies a base row: we match tokens on decoded bytes, mergekit on its
normalized strings (``mergekit.tokenizer.normalization``: a leading ``Ġ``/``▁`` becomes a
word-start flag, specials become their role; nothing else is decoded, so a byte-level
stand-in for a raw byte, ``Ċ`` (newline) or ``ã`` (byte 0xE3), matches a SentencePiece token
that *is* that character, and specials sharing a role collapse to one key, leaving the other
ids zero rows). For each category: rows, max and
median relative difference ``|theirs - ours| / |ours|``, and with ``--corpus`` the share of
the corpus's tokens (new tokenizer) that fall in it, per group and overall.

    D=~/.cache/transplant/models
    python benchmarks/omp_vs_mergekit.py commands --base $D/gemma3-270m --donor $D/smollm2-135m \\
        --corpus /tmp/eval_corpus/dev.jsonl --max-docs 10
    python benchmarks/omp_vs_mergekit.py math --base $D/smollm2-135m --donor $D/gemma3-270m --exact-batches 1
    python benchmarks/omp_vs_mergekit.py rows --base $D/gemma3-270m --donor $D/smollm2-135m \\
        --ours WORK/transplant_0 --theirs WORK/mergekit --corpus /tmp/eval_corpus/dev.jsonl
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
from transformers import PreTrainedTokenizerBase

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

    from transplant.io.checkpoint import read_embeddings
    from transplant.maths.omp import batch_omp
    from transplant.vocab.matching import match_vocabularies

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


def mergekit_rows(base: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(copied, zeroed) masks over new ids, by mergekit-tokensurgeon's own matching rule:
    a donor token is copied when its normalized key is a base key; ids whose key another id
    took (specials of one role) are never visited and stay zero."""
    from mergekit.tokenizer.normalization import normalized_vocabulary

    base_keys, new_keys = normalized_vocabulary(base), normalized_vocabulary(new)
    copied, visited = torch.zeros(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.bool)
    visited[list(new_keys.values())] = True
    copied[[i for key, i in new_keys.items() if key in base_keys]] = True
    return copied, ~visited


def why_mergekit_misses(surface: bytes, special: bool) -> str:
    """Why a token we copy is no exact match for mergekit: the bytes it stands for."""
    text = surface[1:] if surface.startswith(b" ") else surface
    if special:
        return "special"
    if any(b in b" \t\n\r" for b in text):
        return "whitespace"
    if any(b >= 0x80 for b in text):
        return "non-ASCII"
    return "other"


def corpus_token_counts(tokenizer: PreTrainedTokenizerBase, corpus: str, rows: int) -> dict[str, torch.Tensor]:
    """Per corpus group and overall: how often each new id occurs in the corpus."""
    from transplant.inputs.corpus import load_corpus

    counts: dict[str, torch.Tensor] = {}
    for doc in load_corpus(Path(corpus)):
        ids = torch.tensor(tokenizer(doc.text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        counts[doc.group] = counts.get(doc.group, 0) + torch.bincount(ids, minlength=rows)[:rows]
    return {**counts, "all": sum(counts.values())}


def row_categories(match, base: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase,
                   relative: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masks over the first ``len(relative)`` new ids: who copies a base row, and why not."""
    n = len(relative)
    we_copy = torch.zeros(n, dtype=torch.bool)
    we_copy[match.copy_new[match.copy_new < n]] = True
    they_copy, they_zero = mergekit_rows(base, new, n)
    reason = [why_mergekit_misses(match.new_vocab.surfaces[i], match.new_vocab.special[i]) for i in range(n)]
    by_reason = {r: torch.tensor([x == r for x in reason]) for r in ("whitespace", "non-ASCII", "special", "other")}
    return {
        "both copy, the same base row": we_copy & they_copy & (relative == 0),
        "both copy, different base rows": we_copy & they_copy & (relative > 0),
        "both compute (OMP vs OMP)": ~we_copy & ~they_copy & ~they_zero,
        "only mergekit copies": ~we_copy & they_copy,
        "mergekit zero (key collision)": they_zero,
        **{f"only we copy, {r}": we_copy & ~they_copy & ~they_zero & mask for r, mask in by_reason.items()},
    }


def rows(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from transplant.io.checkpoint import read_embeddings
    from transplant.vocab.matching import match_vocabularies

    base, new = AutoTokenizer.from_pretrained(args.base), AutoTokenizer.from_pretrained(args.donor)
    theirs = read_embeddings(Path(args.theirs)).input.float()
    n = len(theirs)  # ours may hold more rows: base chat markers appended after the donor's ids
    ours = read_embeddings(Path(args.ours)).input.float()[:n]
    match = match_vocabularies(base, new)
    relative = (theirs - ours).norm(dim=1) / ours.norm(dim=1).clamp_min(1e-12)
    categories = row_categories(match, base, new, relative)
    counts = corpus_token_counts(new, args.corpus, n) if args.corpus else {}
    new_anchors = set(match.anchors[0].tolist())
    their_anchors = set(mergekit_rows(base, new, n)[0].nonzero().flatten().tolist())
    print(f"{n} rows; anchors: ours {len(new_anchors)}, mergekit {len(their_anchors)}, shared "
          f"{len(new_anchors & their_anchors)}; relative difference = |theirs - ours| / |ours|")
    print(f"{'category':34s} {'rows':>6s} {'equal':>6s} {'max rel':>9s} {'median':>9s}" + "".join(f" {g:>6s}" for g in counts))
    for name, mask in categories.items():
        if not mask.any():
            continue
        rel = relative[mask]
        line = (f"{name:34s} {int(mask.sum()):6d} {int((rel == 0).sum()):6d} {rel.max():9.2e} {rel.median():9.2e}")
        line += "".join(f" {c[mask].sum() / c.sum():6.1%}" for c in counts.values())
        print(line)
        examples = [match.new_vocab.tokens[i] for i in mask.nonzero().flatten()[: args.examples].tolist()]
        print(f"{'':34s} e.g. {examples}")
    if args.check:
        both = categories["both compute (OMP vs OMP)"].nonzero().flatten()
        sample = both[torch.linspace(0, len(both) - 1, min(args.check, len(both))).long()]
        rerun = mergekit_omp_with_our_anchors(args, match, sample)
        rel = (rerun - ours[sample]).norm(dim=1) / ours[sample].norm(dim=1)
        far = sample[rel > 1e-3]
        print(f"mergekit's batch_omp on our anchors, {len(sample)} 'both compute' rows: relative difference to ours "
              f"max {rel.max():.2e}, median {rel.median():.2e}; {len(far)} above 1e-3: "
              f"{[match.new_vocab.tokens[i] for i in far[: args.examples].tolist()]}")


def mergekit_omp_with_our_anchors(args: argparse.Namespace, match, new_ids: torch.Tensor) -> torch.Tensor:
    """Base rows for ``new_ids`` from mergekit's own ``batch_omp``, given our anchor set."""
    from mergekit.tokensurgeon.omp import batch_omp as mergekit_omp

    from transplant.io.checkpoint import read_embeddings

    donor, base = read_embeddings(Path(args.donor)).input.float(), read_embeddings(Path(args.base)).input.float()
    new_anchor_ids, base_anchor_ids = match.anchors
    indices, coeffs = mergekit_omp(donor[new_ids], donor[new_anchor_ids], args.k)
    return torch.bmm(coeffs.unsqueeze(1), base[base_anchor_ids][indices]).squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["commands", "math", "rows"])
    parser.add_argument("--base", required=True, help="HF model dir of the base")
    parser.add_argument("--donor", required=True, help="HF model dir of the donor (its tokenizer is the new one)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--corpus", help="commands: evaluation corpus for `transplant evaluate`; rows: token shares")
    parser.add_argument("--max-docs", type=int, default=0, help="commands: documents per group to evaluate")
    parser.add_argument("--variants", nargs="+", default=["", "--fallback none", "--pool 0 --fallback none"],
                        help="commands: flag sets of our runs (one string each)")
    parser.add_argument("--work", help="commands: output folder (default: a new temp dir)")
    parser.add_argument("--exact-batches", type=int, default=2, help="math: batches of 512 to time exact OMP on")
    parser.add_argument("--pool", type=int, nargs="+", default=[64], help="math: our pool sizes")
    parser.add_argument("--ours", help="rows: our output checkpoint")
    parser.add_argument("--theirs", help="rows: mergekit-tokensurgeon's output checkpoint")
    parser.add_argument("--examples", type=int, default=6, help="rows: example tokens per category")
    parser.add_argument("--check", type=int, default=0, help="rows: 'both compute' rows to redo with mergekit's "
                        "batch_omp on our anchors")
    args = parser.parse_args()
    {"commands": commands, "math": math, "rows": rows}[args.part](args)


if __name__ == "__main__":
    main()
