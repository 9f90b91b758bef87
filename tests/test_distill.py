"""Self-distillation from the base in ``transplant train --objective alm``: both models read
the same text, the loss is zero when the student is the base, and it sees one moved row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_text, micro_loss
from transplant.pipeline import TransplantConfig, transplant
from transplant.training.continued import ContinuedTask, load_train_config, load_transplanted
from transplant.training.distill import hf_encoder, read_pair
from transplant.training.loop import make_accelerator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "train.txt"
    path.write_text(make_text(seed=1, lines=200).replace("\n", "\n\n", 30))
    return path


def alm_task(model: Path, corpus: Path, out: Path, **overrides) -> ContinuedTask:
    cfg = load_train_config(None, None, **{
        "model": str(model), "corpus": [str(corpus)], "out": str(out), "steps": 2, "stage2_steps": 0, "batch_size": 2, "seq_len": 32,
        "mixed_precision": "no", "shuffle_buffer": 0, "objective": "alm", "rows": "all", **overrides})
    return ContinuedTask(cfg, 1, load_transplanted(cfg), [], make_accelerator(cfg))


@pytest.mark.parametrize("debias", [False, True], ids=["plain", "debiased"])
def test_alm_is_zero_for_the_base_on_its_own_tokenizer_and_not_after_one_row_moves(
        base_model: Path, texts: Path, tmp_path: Path, debias: bool) -> None:
    """Transplanted onto its own tokenizer the model is its base, bit for bit: every chunk has
    the teacher's likelihood. Moving the row of one token that the text uses breaks that.
    (Debiasing merges chunks until the teacher expects a word boundary: a random tiny teacher
    rarely does, so few chunks remain.)"""
    same = tmp_path / "same"
    result = transplant(TransplantConfig(base=str(base_model), tokenizer=str(base_model), out=same))
    assert result.counts["initialized"] == 0
    task = alm_task(same, texts, tmp_path / "out", alm_debias=debias)
    batch = task.examples(0).__next__(), task.examples(0).__next__()
    step = micro_loss(task, batch, step=0, seed=0)
    assert step.metrics["chunks"] > (1 if debias else 20)
    assert step.metrics["alm"] == 0.0 and step.metrics["chunk_gap"] == 0.0
    used = task.tokenizer(batch[0], add_special_tokens=False)["input_ids"][3]
    with torch.no_grad():
        task.model.get_input_embeddings().weight[used] += 0.5
    assert micro_loss(task, batch, step=0, seed=0).metrics["alm"] > 0.0


def test_both_models_read_exactly_the_text_the_student_keeps(bpe_dir: Path, sp_model: Path) -> None:
    """The student keeps seq_len - 1 tokens; the teacher reads the text those cover, and the
    shared chunks spell the same bytes on both sides."""
    from transformers import AutoTokenizer
    from transplant.io.tokenizer import load_tokenizer
    from transplant.training.distill import Reader

    teacher_tok, student_tok = AutoTokenizer.from_pretrained(bpe_dir), load_tokenizer(str(sp_model))
    student = Reader(hf_encoder(student_tok), student_tok.bos_token_id, student_tok.pad_token_id, None)
    teacher = Reader(hf_encoder(teacher_tok), teacher_tok.bos_token_id, teacher_tok.pad_token_id, None)
    texts = [make_text(seed=4, lines=30).replace("\n", " "), "Grüße aus Köln, straße"]
    pair = read_pair(texts, student, teacher, seq_len=24, teacher_len=200)
    assert pair.student.ids.shape[1] == 24 and pair.student.attention[0].sum() == 24
    for row, text in enumerate(texts):
        data = text.encode()
        for side, ids in ((pair.student, pair.alignment.student_chunk_ids), (pair.teacher, pair.alignment.teacher_chunk_ids)):
            assert side.ids[row, 0] in (student.prefix, teacher.prefix) and ids[row, 0] == -1  # the prefix is context
        spelled = []
        for side, ids in ((pair.student, pair.alignment.student_chunk_ids), (pair.teacher, pair.alignment.teacher_chunk_ids)):
            chunks = {}
            for position in range(ids.shape[1]):
                if ids[row, position] >= 0:
                    start, end = side.offsets[row, position].tolist()
                    chunks.setdefault(int(ids[row, position]), []).append((start, end))
            spelled.append({c: data[spans[0][0]:spans[-1][1]] for c, spans in chunks.items()})
        assert spelled[0].keys() == spelled[1].keys() and len(spelled[0]) >= 3
        student_end = int(pair.student.offsets[row, :, 1].max())
        assert int(pair.teacher.offsets[row, :, 1].max()) == student_end  # the teacher read no further
        assert spelled[0] == spelled[1]
