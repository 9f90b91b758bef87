"""The shared training module: streaming, packing, schedule, config files, and the loop's resume."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transplant.errors import UserError
from transplant.training.loop import (
    MicroBatch, StepOutput, Stream, TrainConfig, documents, fit, load_config, lr_factor, make_accelerator, pack,
    shuffled, text_chunks,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pack_keeps_every_token_once_in_order() -> None:
    rng = random.Random(0)
    docs = [[rng.randrange(1000) for _ in range(rng.randrange(0, 50))] for _ in range(40)]
    windows = list(pack(docs, seq_len=16, separator=-7))
    stream = [t for doc in docs for t in [-7, *doc]]
    assert all(w.shape == (16,) for w in windows)
    assert torch.cat(windows).tolist() == stream[: len(windows) * 16]
    assert len(stream) - len(windows) * 16 < 16  # only the last partial window is dropped


def test_text_chunks_cover_the_joined_text() -> None:
    docs = ["alpha beta", "g" * 25, "", "delta"]
    chunks = list(text_chunks(docs, chars=7))
    joined = "\n\n".join(docs)
    assert all(len(c) == 7 for c in chunks)
    assert "".join(chunks) == joined[: len(chunks) * 7] and len(joined) - len(chunks) * 7 < 7


def test_shuffle_is_a_seeded_permutation() -> None:
    items = list(range(500))
    once = list(shuffled(items, 64, random.Random(1)))
    assert sorted(once) == items and once != items
    assert once == list(shuffled(items, 64, random.Random(1)))
    assert once != list(shuffled(items, 64, random.Random(2)))


def test_documents_reshuffle_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"doc {i}" for i in range(100)))
    first, second = list(documents([path], 0, buffer=20)), list(documents([path], 1, buffer=20))
    assert sorted(first) == sorted(second) and first != second
    assert first == list(documents([path], 0, buffer=20))


def test_stream_resumes_mid_epoch_and_rolls_over() -> None:
    stream = Stream(lambda epoch: (f"{epoch}:{i}" for i in range(5)))
    assert stream.take(7) == ["0:0", "0:1", "0:2", "0:3", "0:4", "1:0", "1:1"]
    state = stream.state_dict()
    rest = stream.take(6)
    resumed = Stream(lambda epoch: (f"{epoch}:{i}" for i in range(5)))
    resumed.load_state_dict(state)
    assert resumed.take(6) == rest == ["1:2", "1:3", "1:4", "2:0", "2:1", "2:2"]
    with pytest.raises(UserError, match="no examples"):
        next(Stream(lambda epoch: iter(())))


def test_schedule_warms_up_linearly_then_decays_by_cosine() -> None:
    factors = [lr_factor(s, warmup=10, total=110, min_ratio=0.1) for s in range(111)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[60] == pytest.approx(0.55) and factors[110] == pytest.approx(0.1)


def test_load_config_rejects_unknown_keys_and_converts(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\nlr: 1e-3\nmixed_precision: 'no'\n")
    cfg = load_config(TrainConfig, path, batch_size="4", seed=None)
    assert (cfg.steps, cfg.lr, cfg.batch_size, cfg.mixed_precision, cfg.seed) == (20, 1e-3, 4, "no", 0)
    path.write_text("steps: 20\nlearning_rate: 1e-3\n")
    with pytest.raises(UserError) as e:
        load_config(TrainConfig, path)
    assert "learning_rate" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="steps must be at least 1"):
        load_config(TrainConfig, None, steps=0)


# --- the loop, on a task small enough to run in a second ---------------------------------


class Interrupted(Exception):
    pass


@dataclass
class BigramTask:
    """A bigram LM on packed ids: the smallest task with real data, loss and state."""

    model: torch.nn.Module
    crash_at: int | None = None
    stop_at: int | None = None  # ask fit to stop at the first evaluation from this step on
    step: int = 0

    def examples(self, epoch: int):
        rng = random.Random(epoch)
        starts = [(rng.randrange(2, 50), rng.randrange(3, 30)) for _ in range(60)]
        docs = [[2 + (start + 7 * i) % 48 for i in range(length)] for start, length in starts]  # learnable
        return pack(docs, seq_len=12, separator=1)

    def prepare(self, examples, step: int, seed: int) -> MicroBatch:
        if step == self.crash_at:
            raise Interrupted
        self.step = step + 1
        noise = torch.randn((), generator=torch.Generator().manual_seed(seed)) * 1e-3  # seeds must replay too
        return MicroBatch((torch.stack(examples), noise))

    def loss(self, model, batch: MicroBatch, share: dict[str, torch.Tensor]) -> StepOutput:
        ids, noise = batch.inputs
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()) + noise
        return StepOutput(loss, ids[:, 1:].numel())

    def evaluate(self, model) -> dict[str, float]:
        return {"seen": float(self.step)}

    def should_stop(self) -> bool:
        return self.stop_at is not None and self.step >= self.stop_at

    def export(self, model, out: Path) -> None:
        torch.save(model.state_dict(), out / "final.pt")

    def state_objects(self) -> list:
        return []

    def adam_eps(self) -> dict:
        return {}


def bigram_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50))


def run(out: Path, cfg: TrainConfig, crash_at: int | None = None, resume: bool = False,
        stop_at: int | None = None) -> list[dict]:
    task = BigramTask(bigram_model(), crash_at, stop_at)
    try:
        fit(task, cfg, out, make_accelerator(cfg), resume=resume)
    except Interrupted:
        pass
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_fit_lowers_loss_and_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=12, warmup_steps=2, lr=3e-2, batch_size=4, grad_accum=2, save_every=4, log_every=100,
                      mixed_precision="no", shuffle_buffer=0)
    whole = [r for r in run(tmp_path / "whole", cfg) if "loss" in r]
    assert [r["step"] for r in whole] == list(range(1, 13))
    assert whole[-1]["loss"] < whole[0]["loss"] - 1.0

    run(tmp_path / "cut", cfg, crash_at=6)  # dies during step 7, after the checkpoint of step 4
    assert [p.name for p in sorted((tmp_path / "cut" / "checkpoints").iterdir())] == ["step-00000004"]
    resumed = [r for r in run(tmp_path / "cut", cfg, resume=True) if "loss" in r]
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    final = [torch.load(tmp_path / d / "final.pt") for d in ("whole", "cut")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert len(list((tmp_path / "cut" / "checkpoints").iterdir())) == cfg.keep_checkpoints


def _damage(checkpoints: Path, how: str) -> Path:
    """Leave the newest checkpoint (step 6) as a SIGKILL or a full disk during its writing would."""
    newest = checkpoints / "step-00000006"
    if how == "truncated":  # the weights cut off mid-write (ulimit -f, a full disk)
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "missing file":  # killed before the optimizer state was written
        (newest / "optimizer.bin").unlink()
    else:  # killed while the next checkpoint was still under its temporary name
        newest = checkpoints / "step-00000008.tmp"
        newest.mkdir()
        (newest / "model.safetensors").write_bytes(b"partial")
    return newest


@pytest.mark.parametrize("how", ["truncated", "missing file", "temporary"])
def test_resume_skips_a_checkpoint_cut_mid_write(tmp_path: Path, how: str, capsys: pytest.CaptureFixture) -> None:
    """Resume from the newest *complete* checkpoint, say which, drop the broken one, and end
    exactly where an uninterrupted run ends."""
    cfg = TrainConfig(steps=12, warmup_steps=2, lr=3e-2, batch_size=4, grad_accum=2, save_every=2, log_every=100,
                      mixed_precision="no", shuffle_buffer=0)
    whole = [r for r in run(tmp_path / "whole", cfg) if "loss" in r]
    run(tmp_path / "cut", cfg, crash_at=6)  # checkpoints of steps 4 and 6 kept, dies during step 7
    checkpoints = tmp_path / "cut" / "checkpoints"
    broken = _damage(checkpoints, how)
    capsys.readouterr()
    resumed = [r for r in run(tmp_path / "cut", cfg, resume=True) if "loss" in r]
    said = [line for line in capsys.readouterr().out.splitlines() if "resum" in line]
    restart = 4 if how != "temporary" else 6
    assert len(said) == 1 and f"step-{restart:08d}" in said[0], said
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    final = [torch.load(tmp_path / d / "final.pt") for d in ("whole", "cut")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert not broken.exists()


class Planted:
    """A pickle that, when loaded, creates a file: what a hostile run directory could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_loads_no_pickle_that_can_run_code(tmp_path: Path) -> None:
    """The loop's own state (step, tokens, data position, the task's objects) is JSON and
    safetensors; accelerate's files load with torch's weights-only unpickler."""
    cfg = TrainConfig(steps=6, warmup_steps=2, lr=3e-2, batch_size=4, save_every=2, log_every=100,
                      mixed_precision="no", shuffle_buffer=0)
    run(tmp_path / "cut", cfg, crash_at=4)
    newest = tmp_path / "cut" / "checkpoints" / "step-00000004"
    marker = tmp_path / "code-ran"
    for i in range(2):  # accelerate's name for the state of registered objects (here: progress, data position)
        torch.save(Planted(marker), newest / f"custom_checkpoint_{i}.pkl")
    run(tmp_path / "cut", cfg, resume=True)
    assert not marker.exists()


def test_a_task_can_stop_the_run_early_and_it_still_exports(tmp_path: Path) -> None:
    """Early stopping: the task says so after an evaluation; the loop ends there, without a
    second evaluation of the same step, and the artifact is written as after the last step."""
    cfg = TrainConfig(steps=12, warmup_steps=2, lr=3e-2, batch_size=4, eval_every=3, log_every=100,
                      mixed_precision="no", shuffle_buffer=0)
    log = run(tmp_path / "stopped", cfg, stop_at=5)
    assert [r["step"] for r in log if "eval" in r] == [0, 3, 6]
    assert max(r["step"] for r in log) == 6
    assert (tmp_path / "stopped" / "final.pt").is_file()
    assert [r["step"] for r in run(tmp_path / "full", cfg) if "eval" in r] == [0, 3, 6, 9, 12]


def test_yaml_yes_no_reach_a_choice_field_as_the_words_written(tmp_path):
    """YAML 1.1 reads an unquoted `no` as False; `mixed_precision: no` means the choice "no"."""
    path = tmp_path / "train.yaml"
    path.write_text("mixed_precision: no\n")
    assert load_config(TrainConfig, path).mixed_precision == "no"
