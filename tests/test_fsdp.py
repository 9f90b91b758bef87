"""Continued training under FSDP: two processes train (stage 1 on whole matrices, then stage 2
on every weight), evaluate and export the same checkpoint as one process with the same global
batch, and set-ups the loop cannot run as asked are refused in one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import bpe_tokenizer, tiny_llama
from transplant.errors import UserError
from transplant.hypernet import zett_train as zett
from transplant.pipeline import TransplantConfig, transplant
from transplant.training.continued import load_train_config, train
from transplant.training.loop import load_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")

# accelerate (1.16) takes its FSDP path only for GPU processes: launched with --cpu, an FSDP config
# silently runs as plain data parallel (MULTI_CPU), and FSDP1 refuses CPU devices. torch's FSDP2
# itself shards on CPU over gloo, so the launched script presents its CPU processes as GPU ones
# before the Accelerator is built, and accelerate then runs its real FSDP2 code on them.
FSDP_ON_CPU = (
    "from accelerate import PartialState\n"
    "from accelerate.utils import DistributedType\n"
    "PartialState(cpu=True)\n"
    "PartialState._shared_state['distributed_type'] = DistributedType.MULTI_GPU\n"
)

RECIPE = ROOT / "recipes" / "accelerate" / "fsdp.yaml"


def fsdp_config(out: Path) -> Path:
    """The shipped FSDP recipe (FSDP2, full-state checkpoints, activation checkpointing, weights
    read by the first process only) on two CPU processes in float32."""
    config = yaml.safe_load(RECIPE.read_text())
    del config["gpu_ids"]
    out.write_text(yaml.safe_dump({**config, "num_processes": 2, "use_cpu": True, "mixed_precision": "no"}))
    return out


def transplanted(corpus_file: Path, sp_model: Path, root: Path, tied: bool) -> Path:
    """A tiny llama transplanted onto a SentencePiece tokenizer with subword."""
    base = tiny_llama(bpe_tokenizer(corpus_file), root / "base", tied=tied)
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=root / "model"))
    return root / "model"


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def model(request: pytest.FixtureRequest, corpus_file: Path, sp_model: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Path:
    return transplanted(corpus_file, sp_model, tmp_path_factory.mktemp("model"), tied=request.param)


@pytest.fixture(scope="module")
def untied(corpus_file: Path, sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return transplanted(corpus_file, sp_model, tmp_path_factory.mktemp("untied"), tied=False)


def settings(model: Path, texts: Path, out: Path, batch_size: int, objective: str = "lm") -> dict:
    """Two steps of stage 1 on whole matrices, then two of stage 2 on every weight, evaluated at
    the start and the end of each stage; two micro-steps of ``batch_size`` sequences per process
    a step. Adam's eps 1e-3 on every weight: with 1e-8 a weight whose gradient is ~0 steps by
    sign(g) x lr, so float noise between two summation orders would become whole steps."""
    return dict(model=str(model), corpus=[str(texts / "train.txt")], out=str(out), objective=objective, rows="all", steps=2,
                stage2_steps=2, stage2_lr=1e-2, warmup_steps=1, lr=1e-2, batch_size=batch_size, seq_len=32,
                grad_accum=2, mixed_precision="no", log_every=100, save_every=1, shuffle_buffer=0,
                eval_corpus=str(texts / "dev.jsonl"), eval_docs=2, eval_length=64, adam_eps=1e-3)


def launch(script: Path, config: Path, tmp_path: Path) -> str:
    # ACCELERATE_USE_CPU: two CPU processes on gloo (`--cpu` alone would need mpirun)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), str(script)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def log(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / stage / "log.jsonl").read_text().splitlines()]


# The launched run dies in stage 2 (after the checkpoint of its step 1) and is resumed, in the same
# processes: what it exports must still be the uninterrupted one-process run's.
CRASH_AND_RESUME = """\
from transplant.training.continued import ContinuedTask, load_train_config, train
settings = {settings!r}
real_prepare = ContinuedTask.prepare

class Crash(Exception):
    pass

def crashing(self, examples, step, seed):
    if self.stage == 2 and step == 1:
        raise Crash
    return real_prepare(self, examples, step, seed)

ContinuedTask.prepare = crashing
try:
    train(load_train_config(None, None, **settings))
except Crash:
    pass
ContinuedTask.prepare = real_prepare
train(load_train_config(None, None, **settings, resume=True))
"""


@pytest.mark.parametrize("objective", ["lm", "alm"])
def test_two_process_fsdp_trains_evaluates_resumes_and_exports_what_one_process_does(model: Path, texts: Path,
                                                                                     tmp_path: Path, objective: str) -> None:
    """ALM too: each process holds its own frozen teacher beside the sharded student, and a
    micro-step's loss averages the chunks of every process's texts (the tiny texts here share
    2-5 chunks each with the teacher's tokenization, so a per-process mean would weigh them
    differently from one process reading all of them)."""
    train(load_train_config(None, None, **settings(model, texts, tmp_path / "one", 4, objective)))

    config = fsdp_config(tmp_path / "fsdp.yaml")
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_ON_CPU + CRASH_AND_RESUME.format(settings=settings(model, texts, tmp_path / "two", 2, objective)))
    printed = launch(script, config, tmp_path)
    assert "resuming from" in printed and "stage2/checkpoints/step-00000001" in printed

    # accelerate's FSDP checkpoint (the full weights gathered to one file), not DDP's model.safetensors
    checkpoint = tmp_path / "two.run" / "stage2" / "checkpoints" / "step-00000002"
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and not (checkpoint / "model.safetensors").exists()

    one, two, start = (load_file(d / "model.safetensors") for d in (tmp_path / "one", tmp_path / "two", model))
    assert one.keys() == two.keys() == start.keys()  # a tied embedding written once
    for name in one:  # float noise: two half-batches' gradients averaged vs one batch's (measured: 2.4e-7 at most)
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-5, msg=name)
        assert not torch.equal(one[name], start[name]), name  # stage 2 trained every weight
    for stage in ("stage1", "stage2"):
        logs = log(tmp_path / "one.run", stage), log(tmp_path / "two.run", stage)
        steps = [[r for r in run if "loss" in r] for run in logs]
        assert [(r["step"], r["tokens"]) for r in steps[1]] == [(r["step"], r["tokens"]) for r in steps[0]]  # both ranks
        assert [r["loss"] for r in steps[1]] == pytest.approx([r["loss"] for r in steps[0]], rel=1e-5)
        evals = [{r["step"]: r["eval"] for r in run if "eval" in r} for run in logs]
        assert evals[1].keys() == evals[0].keys() == {0, 2}
        assert all(evals[1][step] == pytest.approx(evals[0][step], rel=1e-5) for step in (0, 2))
        assert set(evals[1][0]) >= {"ratio/en", "ratio/de", "ratio/overall"}
    record = json.loads((tmp_path / "two" / "transplant.json").read_text())
    assert [s["steps"] for s in record["training"]["stages"]] == [2, 2]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two")  # a plain checkpoint
    assert loaded.dtype == torch.float32


@pytest.fixture
def fsdp_launch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[bool], None]]:
    """This process as `accelerate launch` with the FSDP recipe starts it (the variables it sets
    from the config); ``sharded(True)`` then makes it a process group of one on gloo, presented
    to accelerate as a GPU process as FSDP_ON_CPU does. accelerate's process state is reset
    before and after, so no other test sees it."""
    for variable, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                            "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}.items():
        monkeypatch.setenv(variable, value)
    AcceleratorState._reset_state(reset_partial_state=True)

    def sharded(on: bool) -> None:
        if on:
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
        PartialState(cpu=True)
        if on:
            PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU

    yield sharded
    AcceleratorState._reset_state(reset_partial_state=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def train_hypernet(untied: Path, texts: Path, out: Path) -> None:
    base = untied.parent / "base"
    zett.train(load_config(zett.HypernetTrainConfig, None, base=str(base), corpus=[str(texts / "train.txt")],
                           out=str(out), steps=1, batch_size=2, seq_len=32, width=32, mixed_precision="no"))


@pytest.mark.parametrize(("sharded", "variable", "value", "run", "fragment"), [
    (False, "FSDP_VERSION", "2", "train", "asks for FSDP, which accelerate runs only on GPUs; here it would run as NO"),
    (True, "FSDP_VERSION", "1", "train", "fsdp_version 1 is not supported"),
    (True, "FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT", "train", "SHARDED_STATE_DICT would write checkpoints"),
    (True, "FSDP_VERSION", "2", "rows: new", "stage 1 with rows: new masks rows that FSDP would shard"),
    (True, "FSDP_VERSION", "2", "hypernet", "hypernetwork training does not shard"),
], ids=["not-sharded", "fsdp1", "sharded-checkpoints", "rows-new", "hypernet"])
def test_fsdp_set_ups_the_loop_cannot_honour_are_refused_before_anything_is_written(
        untied: Path, texts: Path, tmp_path: Path, fsdp_launch: Callable[[bool], None], monkeypatch: pytest.MonkeyPatch,
        sharded: bool, variable: str, value: str, run: str, fragment: str) -> None:
    """An FSDP config that accelerate would not shard (one process as here, or plain data
    parallel under --cpu), FSDP1, sharded checkpoints, stage 1's row mask, a hypernetwork."""
    monkeypatch.setenv(variable, value)
    fsdp_launch(sharded)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=re.escape(fragment)) as refused:
        if run == "hypernet":
            train_hypernet(untied, texts, out)
        else:
            rows = "new" if run == "rows: new" else "all"
            train(load_train_config(None, None, **settings(untied, texts, out, 2) | {"rows": rows}))
    assert "\n" not in str(refused.value)
    assert not out.exists() and not out.with_name("out.run").exists()
