"""An 8B-shaped transplant on one machine: wall per stage, peak RSS, output dtype and size.

The base is a synthetic checkpoint with Llama-3-8B's real shapes (``LlamaConfig``: hidden
4,096, intermediate 14,336, 32 layers, 32 heads, 8 KV heads, 128,256 rows untied, bfloat16,
rope_theta 500,000) and random weights. It is written tensor by tensor: one layer's tensors
are drawn once and written for every layer, so this script holds about one layer (0.4 GB) and
one embedding matrix (1 GB) at a time. embed_tokens and lm_head have a shard each, as the
body's layers have theirs (4 a shard), so every output hard-links the body instead of copying
it (an 8B output then costs its 4.3 GB of new embeddings on disk, not 20 GB).
Its tokenizer is SmolLM2's (the packaged ``smollm2-135m``): 49,152 tokens in 128,256 rows.
The rows beyond the tokenizer are padding, like Llama-3's reserved rows, which
``check_fits`` accepts: every id the tokenizer writes has a row.

Each method (``subword``, ``omp`` with the donor ``gemma3-270m``, ``tokenadapt``) runs
``transplant model BASE --tokenizer gemma3-270m`` in a child process under ``/usr/bin/time``:
peak RSS, wall per stage (from the output's ``transplant.json``), the output's embedding
dtype, its size and how much of it is new on disk (not a hard link to the base). The first
output is then loaded in a child process with
``AutoModelForCausalLM.from_pretrained(..., device_map="cpu", dtype=torch.bfloat16)`` and runs
one forward pass on a short prompt. Outputs are deleted after they are measured (three would
not fit next to the base on a 20 GB disk) unless ``--keep``. Prints a markdown table.

A benchmark, not a test: the full run writes a 16 GB base and needs the machine alone.

Run:   python benchmarks/scale.py --work /tmp/scale
Smoke: python benchmarks/scale.py --work /tmp/scale-smoke --layers 2 --hidden 256 --methods subword
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from transplant.io.shards import read_header, torch_tensor, write_shard
from transplant.io.sources import resolve_model
from transplant.io.tokenizer import load_tokenizer
from transplant.io.trust import Trust

GB = 1024**3
LLAMA3_8B = {"hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocab": 128256}
LAYERS_PER_SHARD = 4
MARKER = "synthetic.json"  # written last: a base with it is complete and may be reused
NEW = "gemma3-270m"
PROMPT = "The capital of France is"

LOAD_AND_RUN = f"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map="cpu", dtype=torch.bfloat16)
loaded = time.perf_counter() - start
ids = AutoTokenizer.from_pretrained(sys.argv[1])({PROMPT!r}, return_tensors="pt")
with torch.inference_mode():
    logits = model(**ids).logits
print(json.dumps({{"load_s": round(loaded, 1), "forward_s": round(time.perf_counter() - start - loaded, 1),
                  "dtype": str(model.dtype), "tokens": ids.input_ids.shape[1], "finite": bool(torch.isfinite(logits).all())}}))
"""


def llama_config(hidden: int, layers: int, bos: int | None, eos: int | None) -> LlamaConfig:
    """Llama-3-8B's config at ``hidden`` width (the MLP and the heads scale with it)."""
    return LlamaConfig(
        vocab_size=LLAMA3_8B["vocab"], hidden_size=hidden, intermediate_size=LLAMA3_8B["intermediate"] * hidden // 4096,
        num_hidden_layers=layers, num_attention_heads=LLAMA3_8B["heads"], num_key_value_heads=LLAMA3_8B["kv_heads"],
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=eos, dtype="bfloat16",
    )


def random_like(shape: torch.Size, generator: torch.Generator, block: int = 8192) -> torch.Tensor:
    """A bfloat16 tensor: ones for a norm (1-D), else N(0, 0.02), drawn in blocks of rows so
    no float32 copy of a whole matrix exists."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    out = torch.empty(shape, dtype=torch.bfloat16)
    for start in range(0, shape[0], block):
        rows = out[start : start + block]
        rows.copy_(torch.randn(rows.shape, generator=generator) * 0.02)
    return out


def write_base(directory: Path, hidden: int, layers: int) -> None:
    """The synthetic base in ``directory`` (see the module docstring), one tensor drawn at a time."""
    directory.mkdir(parents=True)
    tokenizer = load_tokenizer(str(resolve_model("smollm2-135m", Trust())), Trust())
    tokenizer.save_pretrained(directory)
    config = llama_config(hidden, layers, tokenizer.bos_token_id, tokenizer.eos_token_id)
    config.save_pretrained(directory)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in LlamaForCausalLM(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    layer = {name.removeprefix("model.layers.0."): random_like(shape, generator)
             for name, shape in shapes.items() if name.startswith("model.layers.0.")}
    shards = [["model.embed_tokens.weight"], ["lm_head.weight"]]
    shards += [[f"model.layers.{i}.{part}" for i in range(start, min(start + LAYERS_PER_SHARD, layers)) for part in layer]
               for start in range(0, layers, LAYERS_PER_SHARD)]
    shards[-1].append("model.norm.weight")
    weight_map, total = {}, 0
    for number, names in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = [torch_tensor(name, layer[name.split(".", 3)[3]] if name.startswith("model.layers.")
                                else random_like(shapes[name], generator)) for name in names]
        total += write_shard(directory / file, tensors)
        weight_map.update({name: file for name in names})
        print(f"  {file}: {len(names)} tensors", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / MARKER).write_text(json.dumps({"hidden": hidden, "layers": layers}))


def measured(command: list[str], work: Path) -> tuple[float, str]:
    """Run ``command`` under /usr/bin/time: (peak RSS in GB, its stdout)."""
    rss = work / "maxrss.txt"
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), *command], check=True, stdout=subprocess.PIPE,
                          text=True)
    return int(rss.read_text().split()[-1]) * 1024 / GB, done.stdout


def inodes(directory: Path) -> set[int]:
    return {path.stat().st_ino for path in directory.iterdir()}


def describe(out: Path, base: Path) -> dict[str, object]:
    """The output's embedding dtypes, its size on disk and the part of it that is not a hard link to the base."""
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    dtypes = {read_header(out / index[name])[0][name]["dtype"] for name in ("model.embed_tokens.weight", "lm_head.weight")}
    files = [path for path in out.iterdir() if path.is_file()]
    shared = inodes(base)
    return {"dtype": "/".join(sorted(dtypes)), "size_gb": sum(p.stat().st_size for p in files) / GB,
            "new_gb": sum(p.stat().st_size for p in files if p.stat().st_ino not in shared) / GB}


def stage(timings: dict[str, float], prefix: str) -> str:
    found = [seconds for name, seconds in timings.items() if name.startswith(prefix)]
    return f"{found[0]:.0f}" if found else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="where the base and the outputs go")
    parser.add_argument("--methods", default="subword,omp,tokenadapt")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=LLAMA3_8B["hidden"], help="4096 is Llama-3-8B; smaller for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the base and every output")
    args = parser.parse_args()

    base = args.work / "base"
    wanted = {"hidden": args.hidden, "layers": args.layers}
    if not (base / MARKER).is_file() or json.loads((base / MARKER).read_text()) != wanted:
        shutil.rmtree(base, ignore_errors=True)
        print(f"writing the synthetic base ({args.layers} layers, hidden {args.hidden}) to {base}", flush=True)
        started = time.perf_counter()
        write_base(base, args.hidden, args.layers)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    base_gb = sum(p.stat().st_size for p in base.glob("*.safetensors")) / GB

    rows, loaded = [], None
    for method in args.methods.split(","):
        out = args.work / f"out-{method}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "transplant", "model", str(base), "--tokenizer", NEW, "--method", method,
                   "-o", str(out)] + (["--donor", NEW] if method == "omp" else [])
        print(f"\n$ {' '.join(command)}", flush=True)
        peak, printed = measured(command, args.work)
        print(printed, end="", flush=True)
        timings = json.loads((out / "transplant.json").read_text())["timings"]
        rows.append({"method": method, "peak_gb": peak, "timings": timings, **describe(out, base)})
        if loaded is None:
            print(f"\nloading {out} and running one forward pass", flush=True)
            script = args.work / "load_and_run.py"
            script.write_text(LOAD_AND_RUN)
            load_peak, printed = measured([sys.executable, str(script), str(out)], args.work)
            loaded = {"method": method, "peak_gb": load_peak, **json.loads(printed.splitlines()[-1])}
        if not args.keep:
            shutil.rmtree(out)

    print(f"\nbase: {args.layers} layers, hidden {args.hidden}, {base_gb:.1f} GB bfloat16 -> tokenizer {NEW}\n")
    print("| method | load base s | load tokenizer s | load donor s | match s | initialize s | write s | total s "
          "| peak RSS GB | output dtype | output GB (new on disk) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        t = r["timings"]
        print(f"| {r['method']} | {stage(t, 'loading base')} | {stage(t, 'loading new tokenizer')} | "
              f"{stage(t, 'loading donor')} | {stage(t, 'matching')} | {stage(t, 'initializing')} | {stage(t, 'writing')} | "
              f"{t['total']:.0f} | {r['peak_gb']:.1f} | {r['dtype']} | {r['size_gb']:.1f} ({r['new_gb']:.1f}) |")
    if loaded is not None:
        print(f"\nload + one forward pass ({loaded['method']} output, device_map=cpu, {loaded['tokens']}-token prompt): "
              f"load {loaded['load_s']} s, forward {loaded['forward_s']} s, peak RSS {loaded['peak_gb']:.1f} GB, "
              f"dtype {loaded['dtype']}, logits finite: {loaded['finite']}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
