"""Where a fine-tuned variant ends and another model begins: the data behind ``VARIANT_DISTANCE``.

A hypernetwork trained for a base serves the base's fine-tuned variants
(:mod:`transplant.hypernet.fingerprint`): same vocabulary and hidden size, sampled embedding
rows close to the recorded ones. This measures the statistic (relative Frobenius distance of
the sampled rows, and the mean row cosine beside it) on

- variants: every embedding weight moved by 1 % of its tensor's std (a light fine-tune); the
  model re-quantized (Q8_0, Q4_0: what a user gets from another GGUF of the same model; the
  packaged SmolLM2's embedding is stored as Q8_0, so Q8_0 gives it back exactly); a
  real short full fine-tune (AdamW on training text, every weight learning), after each of
  a few step counts;
- other models of the same shape: the rows shuffled (a model trained from scratch on the same
  tokenizer: same statistics, unrelated rows), and a freshly initialized model of the config.

    python benchmarks/variant_distance.py --corpus out/train-corpus/train.jsonl [--base smollm2-135m]
        [--steps 1,3,10,30] [--lr 1e-4] [--seq-len 128] [--save DIR]

The fine-tune runs on the CPU at batch 1 (~5 s a step for SmolLM2 on one busy core); the
corpus must be training text, never the evaluation book (DATA.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from transformers import AutoConfig, AutoModelForCausalLM

from transplant.hypernet.fingerprint import STATISTIC, BaseSample
from transplant.inputs.corpus import load_corpus
from transplant.io.checkpoint import read_embeddings
from transplant.io.sources import resolve_model
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.surface import vocabulary


def row_cosine(sample: BaseSample, base_input: torch.Tensor) -> float:
    """Mean cosine between each sampled input row now and as recorded (scale-blind, for comparison)."""
    return float(F.cosine_similarity(base_input[sample.ids].float(), sample.input, dim=1).mean())


def jittered(matrix: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    return matrix + torch.randn(matrix.shape, generator=generator) * fraction * matrix.std()


def requantized(matrix: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    array = matrix.float().numpy().astype(np.float32)
    return torch.from_numpy(dequantize(quantize(array, qtype), qtype).reshape(array.shape).copy())


def fine_tune(base_dir, tokenizer, corpus: str, steps: list[int], lr: float, seq_len: int, save: str | None = None):
    """Yield (step, input rows, output rows or None) of a full fine-tune at the given steps; with
    ``save``, the model after the last step is written there (a real variant to transplant)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ids = [i for doc in load_corpus(corpus, max_docs=500) for i in tokenizer(doc.text)["input_ids"]]
    tied = model.config.tie_word_embeddings
    for step in range(1, max(steps) + 1):
        batch = torch.tensor(ids[(step - 1) * seq_len : step * seq_len]).unsqueeze(0)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in steps:
            rows_in = model.get_input_embeddings().weight.detach().clone()
            yield step, loss.item(), rows_in, None if tied else model.get_output_embeddings().weight.detach().clone()
    if save:
        model.save_pretrained(save)
        tokenizer.save_pretrained(save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--corpus", required=True, help="training text (.txt/.jsonl) for the short fine-tune")
    parser.add_argument("--steps", default="1,3,10,30", help="fine-tune steps at which to measure")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--save", help="write the fine-tuned model after the last step here")
    args = parser.parse_args()

    base_dir = resolve_model(args.base)
    tokenizer = load_tokenizer(str(base_dir))
    embeddings = read_embeddings(base_dir)
    rows_in = embeddings.input.float()
    rows_out = None if embeddings.output is None else embeddings.output.float()
    sample = BaseSample.of(vocabulary(tokenizer).tokens, rows_in, rows_out)
    table = []

    def measure(kind: str, what: str, new_in: torch.Tensor, new_out: torch.Tensor | None) -> None:
        table.append((kind, what, sample.distance(new_in, new_out), row_cosine(sample, new_in)))
        print(f"| {kind} | {what} | {table[-1][2]:.4f} | {table[-1][3]:.5f} |", flush=True)

    print(f"{args.base}: {STATISTIC}; rows std {rows_in.std():.4f}, rms {rows_in.square().mean().sqrt():.4f}\n")
    print("| kind | model | distance | mean row cosine |\n|---|---|---:|---:|")
    g = torch.Generator().manual_seed(0)
    measure("same", "the base itself", rows_in, rows_out)
    measure("variant", "every weight + N(0, (1 % of its tensor's std)²)", jittered(rows_in, 0.01, g),
            None if rows_out is None else jittered(rows_out, 0.01, g))
    for qtype in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0):
        measure("variant", f"re-quantized to {qtype.name}", requantized(rows_in, qtype),
                None if rows_out is None else requantized(rows_out, qtype))
    steps = sorted(int(s) for s in args.steps.split(","))
    started = time.perf_counter()
    for step, loss, new_in, new_out in fine_tune(base_dir, tokenizer, args.corpus, steps, args.lr, args.seq_len, args.save):
        measure("variant", f"full fine-tune, AdamW lr {args.lr:g}, {step} steps of {args.seq_len} tokens "
                f"(loss {loss:.2f}, {time.perf_counter() - started:.0f} s)", new_in, new_out)
    shuffle = torch.randperm(rows_in.shape[0], generator=g)
    measure("other", "the rows shuffled (same statistics, unrelated rows)", rows_in[shuffle],
            None if rows_out is None else rows_out[torch.randperm(rows_out.shape[0], generator=g)])
    torch.manual_seed(0)
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    measure("other", "a freshly initialized model of the same config", fresh.get_input_embeddings().weight.detach(),
            None if rows_out is None else fresh.get_output_embeddings().weight.detach())
    variants = [d for kind, _, d, _ in table if kind == "variant"]
    others = [d for kind, _, d, _ in table if kind == "other"]
    print(f"\nlargest variant distance {max(variants):.4f}, smallest other-model distance {min(others):.4f}")


if __name__ == "__main__":
    main()
