"""Cost of one training step of ``transplant train`` under ``objective: lm`` and ``alm``.

ALM adds a frozen forward pass of the base (the teacher, on its own tokenization of the same
text), two tokenizations with offsets, the chunk alignment and the loss. This times the
task's whole step on the same model and batch shape (stage 2: every weight learns): prepare,
forward, backward and the optimizer's step; and prints a table: seconds per step, student
tokens per second, and ALM's overhead.

    python benchmarks/objective_cost.py MODEL --corpus TEXT [--steps 5] [--batch 4] [--seq-len 128] [--precision no bf16]

MODEL is a transplanted model directory (``transplant model -o``); TEXT is training text.
Run it alone: two torch jobs side by side on two cores each run ~3x slower.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState

from transplant.training.continued import ContinuedTask, load_train_config, load_transplanted
from transplant.training.loop import make_accelerator, make_optimizer, step_shares


def time_steps(model: str, corpus: str, objective: str, precision: str, steps: int, batch: int, seq_len: int,
               scratch: Path) -> tuple[float, int]:
    """Median seconds per step (prepare, forward, backward, optimizer), and student tokens per step."""
    cfg = load_train_config(None, None, model=model, corpus=[corpus], out=str(scratch / objective), rows="all",
                            batch_size=batch, seq_len=seq_len, mixed_precision=precision, shuffle_buffer=0,
                            objective=objective, force=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # one process, a new precision each call
    task = ContinuedTask(cfg, 2, load_transplanted(cfg), [], make_accelerator(cfg))
    optimizer, _ = make_optimizer(task.model, cfg, task.adam_eps())
    stream = iter(task.examples(0))
    seconds, tokens = [], 0
    for step in range(steps + 1):  # the first step warms up (allocations, cached readers)
        examples = [next(stream) for _ in range(batch)]
        started = time.perf_counter()
        prepared = task.prepare(examples, step, 0)
        result = task.loss(task.model, prepared, step_shares(task.accelerator, [prepared.counts])[0])
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            seconds.append(time.perf_counter() - started)
            tokens = result.tokens
    return sorted(seconds)[len(seconds) // 2], tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--precision", nargs="+", default=["no"], choices=["no", "bf16"],
                        help="mixed precision (bf16: autocast, on the CPU too where it has bf16 instructions)")
    args = parser.parse_args()
    scratch = Path(args.model).parent / "objective-cost"
    rows = {(objective, precision): time_steps(args.model, args.corpus, objective, precision, args.steps, args.batch,
                                               args.seq_len, scratch)
            for precision in args.precision for objective in ("lm", "alm")}
    print(f"\n{args.model}: batch {args.batch} x {args.seq_len}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps (prepare, forward, backward, optimizer; every weight)")
    print("| objective | precision | s/step | tokens/step | tokens/s | vs the first lm |")
    print("|---|---|---:|---:|---:|---:|")
    for (objective, precision), (seconds, tokens) in rows.items():
        print(f"| {objective} | {precision} | {seconds:.2f} | {tokens} | {tokens / seconds:.0f} "
              f"| x{seconds / rows['lm', args.precision[0]][0]:.2f} |")


if __name__ == "__main__":
    main()
