"""Continued pretraining: stage 1 moves only the initialized rows, training learns, resumes
exactly, runs on two processes, and bad settings are one line before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from transplant.cli import app
from conftest import bpe_tokenizer, long_documents, micro_loss, tiny_llama
from transplant.training.continued import ContinuedConfig, ContinuedTask, Transplanted, load_train_config, load_transplanted, train
from transplant.errors import UserError
from transplant.evaluation.evaluate import evaluate_model
from transplant.pipeline import TransplantConfig, transplant
from transplant.recipe import load_recipe
from transplant.training.loop import make_accelerator, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def transplanted(base_model: Path, sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base (tied or untied) transplanted onto a SentencePiece tokenizer with subword."""
    out = tmp_path_factory.mktemp("transplanted") / "model"
    result = transplant(TransplantConfig(base=str(base_model), tokenizer=str(sp_model), out=out, method="subword"))
    initialized = load_file(out / "initialized.safetensors")["initialized"]
    assert initialized.dtype == torch.bool and int(initialized.sum()) == result.counts["initialized"] > 0
    return out


def config(model: Path, texts: Path, out: Path, **overrides) -> ContinuedConfig:
    values = dict(model=str(model), corpus=[str(texts / "train.txt")], out=str(out), objective="lm", stage2_steps=0,
                  steps=5, warmup_steps=1, lr=1e-2,
                  batch_size=2, seq_len=32, mixed_precision="no", log_every=100, save_every=2, shuffle_buffer=0,
                  eval_corpus=str(texts / "dev.jsonl"), eval_docs=2, eval_length=64)
    return load_train_config(None, None, **(values | overrides))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


OBJECTIVES = pytest.mark.parametrize("objective", ["lm", "alm"])


@OBJECTIVES
def test_stage_one_changes_only_the_initialized_rows(transplanted: Path, texts: Path, tmp_path: Path,
                                                     objective: str) -> None:
    cfg = config(transplanted, texts, tmp_path / "trained", objective=objective)
    train(cfg)
    before, after = weights(transplanted), weights(tmp_path / "trained")
    assert before.keys() == after.keys()
    initialized = load_file(transplanted / "initialized.safetensors")["initialized"]
    for name in before:
        if name in (EMBED, HEAD):
            assert torch.equal(before[name][~initialized], after[name][~initialized]), name  # copied rows, bit for bit
            moved = (before[name][initialized] != after[name][initialized]).any(1)
            assert moved.any(), name
            if name == HEAD or HEAD not in before:  # the softmax reaches every output row
                assert moved.all(), name
        else:
            assert torch.equal(before[name], after[name]), name
    record = json.loads((tmp_path / "trained" / "transplant.json").read_text())
    assert record["method"] == "subword" and record["training"]["config"]["rows"] == "new"
    [stage] = record["training"]["stages"]
    assert stage["steps"] == 5 and stage["tokens"] == 5 * 2 * 31
    assert set(stage["eval_start"]) >= {"ratio/en", "ratio/de", "ratio/overall"}
    assert stage["eval_start"] != stage["eval_end"]
    assert (tmp_path / "trained" / "generation_config.json").is_file()
    assert (tmp_path / "trained" / "initialized.safetensors").is_file()


def test_loss_falls_on_a_fixed_batch(transplanted: Path, texts: Path, tmp_path: Path) -> None:
    cfg = config(transplanted, texts, tmp_path / "trained", rows="all")
    loaded = load_transplanted(cfg)
    task = ContinuedTask(cfg, 1, loaded, [], make_accelerator(cfg))
    batch = list(task.examples(0))[:2]
    optimizer = torch.optim.AdamW([p for p in task.model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        result = micro_loss(task, batch, step=0, seed=0)
        losses.append(result.loss.item())
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    task.close()
    assert losses[-1] < losses[0] and result.tokens == 2 * 31


def absent_to_present_movement(transplanted: Path, texts: Path, tmp_path: Path, **overrides) -> float:
    """How far the output rows of new tokens absent from a fixed batch move, relative to those
    of new tokens in it (medians), after a few optimizer steps of the real optimizer."""
    cfg = config(transplanted, texts, tmp_path / "trained", lr=1e-3, warmup_steps=0, **overrides)
    loaded = load_transplanted(cfg)
    task = ContinuedTask(cfg, 1, loaded, [], make_accelerator(cfg))
    batch = list(task.examples(0))[:2]
    output = task.model.get_output_embeddings().weight
    before = output.detach().clone()
    optimizer, _ = make_optimizer(task.model, cfg, task.adam_eps())
    for _ in range(3):
        micro_loss(task, batch, step=0, seed=0).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    task.close()
    moved = (output.detach() - before).norm(dim=1)
    present = torch.zeros(len(moved), dtype=torch.bool)
    present[torch.stack(batch).flatten()] = True
    new = loaded.initialized
    assert (new & present).sum() > 3 and (new & ~present).sum() > 3
    return (moved[new & ~present].median() / moved[new & present].median()).item()


def test_default_embedding_eps_keeps_rows_of_absent_tokens_nearly_still(transplanted: Path, texts: Path,
                                                                        tmp_path: Path) -> None:
    """Why ``transplant train`` defaults to ``embedding_eps`` 1e-3: with Adam's usual eps a row whose only
    gradient is the softmax's small push-down (its token is not in the batch) moves about as far
    as a row with a real gradient, so every new row drifts each step; on SmolLM2 -> German 16k
    that made German worse while the training loss fell. The rest of the network's eps
    (``adam_eps``) does not reach the embedding matrices."""
    assert absent_to_present_movement(transplanted, texts, tmp_path / "usual", embedding_eps=1e-8) > 0.5
    assert absent_to_present_movement(transplanted, texts, tmp_path / "default") < 0.1
    assert absent_to_present_movement(transplanted, texts, tmp_path / "network", adam_eps=1e-8) < 0.1


class Crash(Exception):
    pass


@OBJECTIVES
def test_resume_continues_the_count_and_ends_with_the_same_weights(transplanted: Path, texts: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, objective: str) -> None:
    two_stages = dict(steps=4, stage2_steps=2, eval_corpus=None, objective=objective)
    train(config(transplanted, texts, tmp_path / "whole", **two_stages))

    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_in_stage_one(patch, at_step=2)  # step 3 dies; the checkpoint of step 2 survives
        train(config(transplanted, texts, tmp_path / "cut", **two_stages))
    assert not (tmp_path / "cut").exists()
    with pytest.raises(UserError, match="--resume"):
        config(transplanted, texts, tmp_path / "cut", **two_stages)
    train(config(transplanted, texts, tmp_path / "cut", resume=True, **two_stages))

    logs = {run: {stage: [json.loads(line) for line in (tmp_path / f"{run}.run" / stage / "log.jsonl").read_text().splitlines()]
                  for stage in ("stage1", "stage2")} for run in ("whole", "cut")}
    assert [r["step"] for r in logs["cut"]["stage1"]] == [1, 2, 3, 4]
    assert [r["loss"] for r in logs["cut"]["stage1"]] == [r["loss"] for r in logs["whole"]["stage1"]]
    assert [r["loss"] for r in logs["cut"]["stage2"]] == [r["loss"] for r in logs["whole"]["stage2"]]
    whole, cut, start = weights(tmp_path / "whole"), weights(tmp_path / "cut"), weights(transplanted)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    layer = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(whole[layer], start[layer])  # stage 2 trained the network too


@pytest.fixture(scope="module")
def untied(corpus_file: Path, sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One untied transplant (two masked matrices) for the one two-process launch (~25 s)."""
    root = tmp_path_factory.mktemp("untied")
    base = tiny_llama(bpe_tokenizer(corpus_file), root / "base", tied=False)
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=root / "model", method="subword"))
    return root / "model"


def test_micro_steps_of_one_step_train_what_one_batch_of_them_does(transplanted: Path, texts: Path,
                                                                   tmp_path: Path) -> None:
    """ALM's chunks per text vary, so two micro-steps of 2 texts must weigh each term by their
    share of the step's chunks and tokens: then they take the steps one micro-step of the same
    4 texts takes (the mean of the two micro-steps' means missed by more than 1/1000 of the move).
    Adam's eps 1e-3 on every weight: with 1e-8 a weight whose gradient is ~0 steps by sign(g) x lr,
    and the float noise of two padding layouts would become whole steps."""
    runs = {"whole": dict(batch_size=4), "split": dict(batch_size=2, grad_accum=2)}
    for name, batching in runs.items():
        train(config(transplanted, texts, tmp_path / name, objective="alm", steps=2, stage2_steps=2, eval_corpus=None,
                     adam_eps=1e-3, **batching))
    whole, split = weights(tmp_path / "whole"), weights(tmp_path / "split")
    start = weights(transplanted)
    for name in whole:
        moved = (whole[name] - start[name]).abs().max()
        assert torch.allclose(split[name], whole[name], rtol=0, atol=1e-3 * float(moved) + 1e-7), name


@OBJECTIVES
def test_two_process_accelerate_launch_agrees(untied: Path, texts: Path, tmp_path: Path, objective: str) -> None:
    transplanted = untied
    cfg = config(transplanted, texts, tmp_path / "trained", steps=3, eval_corpus=None, objective=objective)
    script = tmp_path / "ddp.py"
    script.write_text(
        "from pathlib import Path\n"
        "from accelerate import PartialState\n"
        "from safetensors.torch import save_file\n"
        "from transplant.training.continued import load_train_config, train\n"
        f"model = train(load_train_config(None, None, **{vars(cfg)!r}))\n"
        "state = {k: v.contiguous() for k, v in model.state_dict().items() if k != 'lm_head.weight' or "
        "not model.config.tie_word_embeddings}\n"
        f"save_file(state, Path({str(tmp_path)!r}) / f'rank{{PartialState().process_index}}.safetensors')\n"
    )
    # `--cpu` alone would need mpirun for two processes; torchrun's launcher (`--multi_gpu`) with
    # ACCELERATE_USE_CPU gives two CPU processes on gloo
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    exported, start = weights(tmp_path / "trained"), weights(transplanted)
    assert all(torch.equal(exported[k], ranks[0][k]) for k in exported)
    assert not torch.equal(exported[EMBED], start[EMBED])
    log = [json.loads(line) for line in (tmp_path / "trained.run" / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["tokens"] == 3 * 2 * 2 * 31  # both ranks counted


def assert_one_line(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output


def test_bad_settings_fail_in_one_line_before_any_model_loads(transplanted: Path, texts: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args, **kwargs) -> Transplanted:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("transplant.training.continued.load_transplanted", no_loading)
    runner = CliRunner()
    good = ["--corpus", str(texts / "train.txt"), "-o", str(tmp_path / "trained")]
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("steps: 5\nlearning_rate: 0.1\n")
    assert_one_line(runner.invoke(app, ["train", str(transplanted), *good, "--config", str(bad_config)]),
                    "unknown config key 'learning_rate'")
    assert_one_line(runner.invoke(app, ["train", str(transplanted), "--corpus", str(tmp_path / "none.txt"),
                                        "-o", str(tmp_path / "trained")]), "corpus not found")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: smollm2-135m\nout: {transplanted}\ntrain:\n  corpus: {texts / 'train.txt'}\n"
                      f"  out: {tmp_path / 'trained'}\n  stage_2_steps: 10\n")
    assert_one_line(runner.invoke(app, ["train", "--recipe", str(recipe)]), "unknown config key 'stage_2_steps'")
    recipe.write_text(f"out: {transplanted}\ntrain:\n  corpus: {tmp_path / 'gone.jsonl'}\n  out: {tmp_path / 't'}\n")
    assert_one_line(runner.invoke(app, ["train", "--recipe", str(recipe)]), "corpus not found")
    weight_decay = tmp_path / "decay.yaml"
    weight_decay.write_text("weight_decay: 0.1\n")
    assert_one_line(runner.invoke(app, ["train", str(transplanted), *good, "--config", str(weight_decay)]),
                    "weight decay would shrink the copied rows")
    assert_one_line(runner.invoke(app, ["train", str(transplanted), *good, "--objective", "kl"]),
                    "--objective must be one of lm, alm")
    negative = tmp_path / "negative.yaml"
    negative.write_text("objective: alm\nalm_weight: -1\n")
    assert_one_line(runner.invoke(app, ["train", str(transplanted), *good, "--config", str(negative)]),
                    "need alm_weight >= 0")
    assert not (tmp_path / "trained").exists()


@pytest.mark.parametrize("recipe", [p for p in sorted((ROOT / "recipes").glob("*.yaml")) if load_recipe(p).train],
                         ids=lambda p: p.stem)
def test_recipes_hold_known_training_keys(recipe: Path) -> None:
    spec = load_recipe(recipe)
    assert set(spec.train) <= {f.name for f in fields(ContinuedConfig)} and spec.out
    assert not any("debian-reference" in str(c) for c in spec.train["corpus"])  # the evaluation book


SCHEDULE = ("objective", "steps", "warmup_steps", "lr", "stage2_steps", "stage2_lr", "embedding_eps", "adam_eps",
            "batch_size", "seq_len")


def test_the_defaults_are_the_schedule_measured_in_the_german_recipe() -> None:
    """`transplant train MODEL --corpus F -o OUT` with no settings runs the schedule that
    docs/results.md measured best (the German recipe's: ALM, 20 steps of new rows, 300 of every
    weight), not stage 1 alone."""
    measured = load_recipe(ROOT / "recipes" / "smollm2-german-tokenadapt.yaml").train
    defaults = {f.name: f.default for f in fields(ContinuedConfig)}
    assert {key: defaults[key] for key in SCHEDULE} == {key: measured[key] for key in SCHEDULE}
    assert defaults["stage2_steps"] > 0 and defaults["objective"] == "alm"


def crash_in_stage_one(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    real_prepare = ContinuedTask.prepare

    def crashing(self, examples, step, seed):
        if self.stage == 1 and step == at_step:
            raise Crash
        return real_prepare(self, examples, step, seed)

    monkeypatch.setattr(ContinuedTask, "prepare", crashing)


def test_a_run_that_fails_before_its_first_checkpoint_does_not_block_the_rerun(transplanted: Path, texts: Path,
                                                                                tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        crash_in_stage_one(patch, at_step=0)
        with pytest.raises(Crash):
            train(config(transplanted, texts, tmp_path / "trained", eval_corpus=None))
    assert not (tmp_path / "trained.run").exists()
    train(config(transplanted, texts, tmp_path / "trained", eval_corpus=None, steps=2))  # no --force needed
    assert (tmp_path / "trained" / "transplant.json").is_file()


def test_resume_with_other_data_or_optimizer_settings_is_refused(transplanted: Path, texts: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        crash_in_stage_one(patch, at_step=2)  # the checkpoint of step 2 survives
        with pytest.raises(Crash):
            train(config(transplanted, texts, tmp_path / "cut", eval_corpus=None))
    other = tmp_path / "other.txt"
    other.write_text((texts / "train.txt").read_text())
    for changed, fields in [({"lr": 5e-3, "seq_len": 16}, "lr 0.01 -> 0.005, seq_len 32 -> 16"),
                            ({"corpus": [str(other)]}, "corpus")]:
        with pytest.raises(UserError, match="other settings") as refused:
            config(transplanted, texts, tmp_path / "cut", eval_corpus=None, resume=True, **changed)
        assert fields in str(refused.value) and "\n" not in str(refused.value)
    train(config(transplanted, texts, tmp_path / "cut", eval_corpus=None, resume=True, log_every=1))  # same run: fine


def test_a_corpus_line_that_is_not_utf8_stops_the_run_before_training(transplanted: Path, texts: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "late.txt"
    lines = (texts / "train.txt").read_bytes().splitlines(keepends=True)
    corpus.write_bytes(b"".join(lines[:-1]) + "caf\u00e9\n".encode("latin-1") + lines[-1])

    def no_loading(*args, **kwargs) -> Transplanted:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("transplant.training.continued.load_transplanted", no_loading)
    with pytest.raises(UserError, match=f"late.txt:{len(lines)}: not UTF-8"):
        train(config(transplanted, texts, tmp_path / "trained", corpus=[str(corpus)], eval_corpus=None))
    assert not (tmp_path / "trained.run").exists()



@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_trained_checkpoint_keeps_the_transplant_dtype(corpus_file: Path, sp_model: Path, texts: Path,
                                                           tmp_path: Path, tied: bool) -> None:
    """Training runs in float32; a bfloat16 transplant comes back bfloat16, weights and config,
    and a tied embedding is written once."""
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base32", tied=tied)
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(tmp_path / "base16")
    bpe_tokenizer(corpus_file).save_pretrained(tmp_path / "base16")
    transplant(TransplantConfig(base=str(tmp_path / "base16"), tokenizer=str(sp_model), out=tmp_path / "model"))
    train(config(tmp_path / "model", texts, tmp_path / "trained", rows="all", steps=1, eval_corpus=None))
    assert {w.dtype for w in weights(tmp_path / "trained").values()} == {torch.bfloat16}
    assert weights(tmp_path / "trained").keys() == weights(tmp_path / "model").keys()  # no lm_head when tied
    assert json.loads((tmp_path / "trained" / "config.json").read_text())["dtype"] == "bfloat16"
    assert not torch.equal(weights(tmp_path / "trained")[EMBED], weights(tmp_path / "model")[EMBED])


def test_alm_scores_the_base_with_its_teacher_not_a_second_copy(transplanted: Path, texts: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ALM the base is in memory as the teacher; evaluation used to load it again (an 8B
    model twice). The ratios are the same either way."""
    import transplant.training.continued as continued

    lm = config(transplanted, texts, tmp_path / "lm", steps=1)
    train(lm)
    expected = json.loads((tmp_path / "lm.run" / "base-eval.json").read_text())["groups"]

    def no_second_copy(*args, **kwargs):
        raise AssertionError("the base was loaded again for evaluation")

    monkeypatch.setattr(continued, "load_model", no_second_copy)
    train(config(transplanted, texts, tmp_path / "alm", steps=1, objective="alm"))
    assert json.loads((tmp_path / "alm.run" / "base-eval.json").read_text())["groups"] == expected


def test_stage_two_starts_from_stage_ones_last_evaluation_without_scoring_again(
        transplanted: Path, texts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 2 starts from the weights stage 1's last evaluation scored: its first point is
    that evaluation, logged again, not a second pass over the evaluation text."""
    import transplant.training.continued as continued

    scored = []  # the evaluations of the model being trained (the base is scored once besides)
    monkeypatch.setattr(continued, "evaluate_model",
                        lambda model, tokenizer, docs, name, config: scored.extend([name] if name == "trained" else [])
                        or evaluate_model(model, tokenizer, docs, name, config))
    train(config(transplanted, texts, tmp_path / "trained", steps=2, stage2_steps=2))
    evals = {stage: [json.loads(line) for line in (tmp_path / f"trained.run/stage{stage}/log.jsonl").read_text().splitlines()
                     if "eval" in line] for stage in (1, 2)}
    assert [r["step"] for r in evals[1]] == [0, 2] and [r["step"] for r in evals[2]] == [0, 2]
    assert evals[2][0]["eval"] == evals[1][-1]["eval"] and evals[2][-1]["eval"] != evals[1][-1]["eval"]
    assert len(scored) == 3  # stage 1 start and end, stage 2 end


@OBJECTIVES
def test_a_long_document_does_not_fill_the_first_batches(transplanted: Path, texts: Path, tmp_path: Path,
                                                         objective: str) -> None:
    """A long document is cut into many examples in a row (a 60 kB handbook page: 80 of them, 20
    steps of 4): unless the examples are shuffled too, a batch, and many steps in a row, is one
    document in one language (on the Gemma-3 run: 20 steps of Spanish, then 10 of code)."""
    corpus = long_documents(tmp_path / "long.jsonl")
    cfg = config(transplanted, texts, tmp_path / "trained", objective=objective, corpus=[str(corpus)],
                 shuffle_buffer=200)
    task = ContinuedTask(cfg, 1, load_transplanted(cfg), [], make_accelerator(cfg))
    stream = task.examples(0)
    first = [next(stream) for _ in range(12)]
    decoded = first if objective == "alm" else [task.tokenizer.decode(ids) for ids in first]
    seen = {f"doc{d}" for d in range(6) if any(f"doc{d}" in text for text in decoded)}
    assert len(seen) >= 3, seen
