"""ALM self-distillation for the ZeTT hypernetwork (``transplant hypernet train`` with
``objective: alm``): the loss from a sampled softmax's token log-probs is the loss from full
logits, it is zero when the predicted rows are the base's own, its gradient reaches only the
hypernetwork, and a run trains, resumes exactly and exports a hypernetwork ``zett`` applies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import micro_loss
from test_hypernet import tiny, tiny_config, train_tiny  # noqa: F401  (tiny: the module's fixture)
from transplant.cli import app
from transplant.hypernet.zett_train import HypernetTask
from transplant.pipeline import TransplantConfig, transplant
from transplant.training.alm import (
    align_chunks, alm_distill_loss, alm_distill_loss_from_logprobs, next_token_logprobs,
)
from transplant.training.loop import config_dict, make_accelerator

pytestmark = pytest.mark.usefixtures("one_thread")


def spans(ends: list[int]) -> list[tuple[int, int]]:
    """(start, end) byte offsets of tokens that follow each other; a leading 0 is the prefix."""
    return [(0, 0) if end == 0 else (before, end) for before, end in zip([0, *ends], ends)]


@pytest.mark.parametrize("debias", [False, True], ids=["plain", "debiased"])
def test_token_logprobs_give_the_loss_and_gradients_of_full_logits(debias: bool) -> None:
    """The hypernetwork's student scores its candidates in its own order (positives first):
    log-probs taken from the permuted logits must give what the logits themselves give."""
    torch.manual_seed(0)
    teacher_ends = [[0, 2, 4, 6, 9, 10, 12], [0, 3, 4, 7, 8, 11, 12]]
    student_ends = [[0, 1, 4, 6, 8, 10, 12], [0, 3, 5, 7, 8, 12, 0]]
    alignment = align_chunks([spans(e) for e in teacher_ends], [spans(e) for e in student_ends])
    assert int(alignment.num_chunks.sum()) >= 4
    vocab = 11
    logits = (3 * torch.randn(2, 7, vocab)).requires_grad_()
    teacher_logits = 3 * torch.randn(2, 7, 13)
    targets, teacher_targets = torch.randint(0, vocab, (2, 7)), torch.randint(0, 13, (2, 7))
    boundary, teacher_boundary = torch.rand(vocab) < 0.4, torch.arange(13) == 5  # rare: some chunks merge
    kwargs = {"temperature": 2.0, "teacher_boundary_tokens": teacher_boundary if debias else None}

    full = alm_distill_loss(logits, targets, teacher_logits, teacher_targets, alignment,
                            student_boundary_tokens=boundary if debias else None, **kwargs)
    (expected,) = torch.autograd.grad(full.loss, logits)

    order = torch.randperm(vocab)  # candidate k is token order[k]
    candidates = logits[..., order]
    local = torch.argsort(order)[targets]
    logp = next_token_logprobs(candidates, local, boundary[order] if debias else None)
    sampled = alm_distill_loss_from_logprobs(logp.token, teacher_logits, teacher_targets,
                                             alignment, student_boundary_logp=logp.boundary, **kwargs)
    (got,) = torch.autograd.grad(sampled.loss, logits)

    assert full.loss.item() > 0 and int(sampled.num_chunks) == int(full.num_chunks)
    assert (int(full.num_chunks) < 8) == debias  # debiasing merged some of the 8 chunks
    assert sampled.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-9) and got.abs().sum() > 0


def alm_task(tiny: dict[str, Path], out: Path, **overrides) -> tuple[HypernetTask, list[str]]:
    """A hypernetwork task under ``objective: alm`` and two texts of its corpus."""
    task = HypernetTask(cfg := tiny_config(tiny, out, objective="alm", **overrides), make_accelerator(cfg))
    examples = task.examples(0)
    return task, [next(examples), next(examples)]


@pytest.mark.parametrize("debias", [False, True], ids=["plain", "debiased"])
def test_alm_is_zero_when_the_rows_are_the_base_rows_and_not_after_one_moves(tiny: dict[str, Path], tmp_path: Path,
                                                                            debias: bool) -> None:
    """During the warm-up every token is one base piece and an untrained hypernetwork predicts
    exactly its base row; with the whole vocabulary as candidates the student is the teacher
    (up to float rounding). Moving the predicted row of one token the text uses breaks that."""
    task, texts = alm_task(tiny, tmp_path / "hn", vocab_mode="full", alm_debias=debias)
    same = micro_loss(task, texts, step=0, seed=0)
    assert same.metrics["chunks"] > (1 if debias else 20)
    assert same.metrics["alm"] == pytest.approx(0.0, abs=1e-9) and same.metrics["chunk_gap"] < 1e-5

    used = task.base_tokenizer(texts[0], add_special_tokens=False)["input_ids"][3]

    def move_one_row(module, inputs, rows):
        (pieces,), (rows_in, rows_out) = inputs, rows
        return rows_in + 0.5 * (pieces[:, :1] == used), rows_out

    task.model.register_forward_hook(move_one_row)
    moved = micro_loss(task, texts, step=0, seed=0)
    assert moved.metrics["alm"] > 1e-6 and moved.metrics["chunk_gap"] > 1e-2


def test_alm_gradients_reach_the_hypernetwork_not_the_lm(tiny: dict[str, Path], tmp_path: Path) -> None:
    task, texts = alm_task(tiny, tmp_path / "hn", lm_weight=0.0, lexical_weight=0.0)
    step = micro_loss(task, texts, step=5, seed=7)  # past the warm-up: a sampled tokenizer
    step.loss.backward()
    assert step.metrics["alm"] > 0 and step.loss.item() == pytest.approx(100 * step.metrics["alm"], rel=1e-5)
    assert all(p.grad is None for p in task.lm.parameters())
    grad = task.model.heads["input"].weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_cli_trains_under_alm_and_zett_applies_the_result(tiny: dict[str, Path], sp_model: Path, tmp_path: Path) -> None:
    settings = tmp_path / "hn.yaml"
    settings.write_text(yaml.safe_dump(config_dict(tiny_config(tiny, tmp_path / "unused"))))  # objective: lm there
    hn = tmp_path / "hn"
    runner = CliRunner()
    trained = runner.invoke(app, ["hypernet", "train", "--config", str(settings), "--base", str(tiny["base"]),
                                  "--corpus", str(tiny["corpus"]), "-o", str(hn), "--steps", "3", "--objective", "alm"])
    assert trained.exit_code == 0, trained.output
    assert json.loads((hn / "config.json").read_text())["training"]["objective"] == "alm"
    log = [json.loads(line) for line in (hn / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["alm"] > 0 and r["chunks"] > 0 for r in log)

    out = tmp_path / "zett"
    applied = runner.invoke(app, ["model", str(tiny["base"]), "-t", str(sp_model), "-o", str(out), "--method", "zett",
                                  "--hypernet", str(hn)])
    assert applied.exit_code == 0, applied.output
    subword = transplant(TransplantConfig(base=str(tiny["base"]), tokenizer=str(sp_model), out=tmp_path / "subword",
                                         method="subword"))
    rows = [load_file(d / "model.safetensors")["model.embed_tokens.weight"] for d in (out, tmp_path / "subword")]
    assert subword.counts["initialized"] > 0 and not torch.equal(rows[0], rows[1])  # trained heads moved the rows


def test_alm_resume_continues_step_count_and_loss_curve(tiny: dict[str, Path], tmp_path: Path) -> None:
    whole = train_tiny(tiny_config(tiny, tmp_path / "whole", objective="alm"))
    train_tiny(tiny_config(tiny, tmp_path / "cut", objective="alm"), crash_at=3)  # checkpoint at step 2, dies in step 4
    resumed = train_tiny(tiny_config(tiny, tmp_path / "cut", objective="alm", resume=True))
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], rel=1e-6)
    assert [r["alm"] for r in resumed] == pytest.approx([r["alm"] for r in whole], rel=1e-6)
    weights = [load_file(tmp_path / d / "model.safetensors") for d in ("whole", "cut")]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-7) for k in weights[0])
    assert weights[0]["heads.input.weight"].abs().sum() > 0  # it did train
