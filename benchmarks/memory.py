"""Peak RSS of what streams: a transplant (embeddings + one shard), a GGUF conversion (one
tensor) and an evaluation (one piece of a long document).

``transplant``: builds random llamas of growing depth (up to ~870 MB of float32 weights in
100 MB shards) with the same embeddings, transplants each onto a SentencePiece tokenizer in a
child process and prints peak RSS per size.

``gguf``: writes a random F16 llama GGUF with TinyLlama-1.1B's shapes (1.1 B parameters, 2.2 GB;
generated one tensor at a time, so the generator stays small) and converts it to safetensors in
a child process twice: the way before issue 9 (transformers loads the whole dequantized model,
a fresh model takes its state dict, ``save_pretrained``) and tensor by tensor
(:func:`transplant.io.gguf.gguf_to_hf`). The old way needs ~10 GB of RAM.

``evaluate``: ``transplant evaluate`` (a tiny random llama with a 2,000-token byte-level BPE,
scored against itself) on a corpus of one 5 MB and one 50 MB line, in a child process each:
peak RSS and time. Before issue 22 the whole line was tokenized at once and every window
made up front (50 MB: 6.6 GB); now it is read in pieces and its windows made a batch at a
time.

Run: ``python benchmarks/memory.py [transplant|gguf|evaluate]`` (all by default).
"""

from __future__ import annotations

import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MB = 1024 * 1024


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of a child running ``args`` (measured by a fresh wrapper process)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def transplant_sizes() -> None:
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


TINYLLAMA = {"hidden": 2048, "layers": 22, "intermediate": 5632, "heads": 32, "kv_heads": 4, "vocab": 32000}

WHOLE_MODEL = f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
config = loaded.config
del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.load_state_dict(loaded.state_dict())
del loaded
model.save_pretrained(out, max_shard_size="500MB")
tokenizer.save_pretrained(out)
"""

TENSOR_BY_TENSOR = f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from transplant.io.gguf import gguf_to_hf
gguf_to_hf(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _llama_shapes(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF tensor names and (numpy-order) shapes of an untied llama."""
    h, kv = hidden, hidden // heads * kv_heads
    block = {"attn_norm": (h,), "attn_q": (h, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, h),
             "ffn_norm": (h,), "ffn_gate": (intermediate, h), "ffn_up": (intermediate, h), "ffn_down": (h, intermediate)}
    shapes = [("token_embd.weight", (vocab, h))]
    shapes += [(f"blk.{i}.{name}.weight", shape) for i in range(layers) for name, shape in block.items()]
    return shapes + [("output_norm.weight", (h,)), ("output.weight", (vocab, h))]


def write_synthetic_gguf(path: Path, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int,
                         vocab: int) -> int:
    """A random F16 llama GGUF with a byte-level BPE vocabulary, one tensor in memory at a time; returns parameters."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    alphabet = list(bytes_to_unicode().values())
    pairs = [(a, b) for a in alphabet for b in alphabet][: vocab - len(alphabet) - 2]
    writer.add_token_list(["<s>", "</s>", *alphabet, *(a + b for a, b in pairs)])
    writer.add_token_types([3, 3] + [1] * (vocab - 2))
    writer.add_token_merges([f"{a} {b}" for a, b in pairs])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    shapes = _llama_shapes(hidden, layers, intermediate, heads, kv_heads, vocab)
    dtype = {1: np.float32, 2: np.float16}  # norms in float32, as llama.cpp writes them
    for name, shape in shapes:
        itemsize = np.dtype(dtype[len(shape)]).itemsize
        writer.add_tensor_info(name, shape, np.dtype(dtype[len(shape)]), itemsize * math.prod(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for _, shape in shapes:
        values = np.ones(shape, np.float32) if len(shape) == 1 else rng.standard_normal(shape, np.float32) * 0.02
        writer.write_tensor_data(values.astype(dtype[len(shape)]))
    writer.close()
    return sum(math.prod(shape) for _, shape in shapes)


def gguf_conversion() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "synthetic-1.1b-f16.gguf"
        started = time.perf_counter()
        params = write_synthetic_gguf(path, **TINYLLAMA)
        print(f"synthetic GGUF: {params / 1e9:.2f} B parameters, {path.stat().st_size / MB:.0f} MiB, "
              f"written in {time.perf_counter() - started:.0f} s")
        largest = 4 * max(math.prod(s) for _, s in _llama_shapes(**TINYLLAMA)) / MB
        print(f"float32: whole model {4 * params / MB:.0f} MiB, largest tensor {largest:.0f} MiB\n")
        print(f"{'conversion':<40}{'peak RSS MiB':>14}{'seconds':>10}")
        for label, code in (("whole model (before issue 9)", WHOLE_MODEL), ("tensor by tensor", TENSOR_BY_TENSOR)):
            out = root / "out"
            started = time.perf_counter()
            peak = peak_rss_mb([sys.executable, "-c", code, str(path), str(out)])
            print(f"{label:<40}{peak:>14.0f}{time.perf_counter() - started:>10.0f}", flush=True)
            shutil.rmtree(out)


def write_one_line(path: Path, megabytes: int, text: str) -> int:
    """A one-line document of ``megabytes`` MB made of ``text``'s words; returns its bytes."""
    words = text.split()
    chunk = " ".join(words).encode() + b" "
    written = 0
    with path.open("wb") as f:
        while written + len(chunk) < megabytes * 10**6:
            f.write(chunk)
            written += len(chunk)
        f.write(b"end\n")
    return written + 4


def evaluate_lengths() -> None:
    from conftest import bpe_tokenizer, make_text, tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus.txt"
        corpus.write_text(make_text(lines=3000))
        model = tiny_llama(bpe_tokenizer(corpus, vocab_size=2000), root / "model", tied=True, hidden=64)
        print(f"{'document':>10}{'bytes':>14}{'peak RSS MiB':>14}{'seconds':>10}")
        for megabytes in (5, 50):
            doc = root / f"line-{megabytes}mb.txt"
            size = write_one_line(doc, megabytes, make_text(seed=megabytes, lines=200))
            cli = [sys.executable, "-m", "cli", "evaluate", str(model), "--base", str(model), "--corpus", str(doc),
                   "--batch-size", "32"]
            started = time.perf_counter()
            peak = peak_rss_mb(cli)
            print(f"{f'{megabytes} MB':>10}{size:>14,}{peak:>14.0f}{time.perf_counter() - started:>10.0f}", flush=True)
        print("\nPeak RSS stays flat as the document grows: one piece and one batch of windows at a time.")


if __name__ == "__main__":
    which = sys.argv[1:] or ["transplant", "gguf", "evaluate"]
    if "transplant" in which:
        transplant_sizes()
    if "gguf" in which:
        gguf_conversion()
    if "evaluate" in which:
        evaluate_lengths()
