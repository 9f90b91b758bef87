"""`transplant evaluate MODEL --draft-for TARGET`: a draft's agreement and accepted runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from conftest import assert_refused, bpe_tokenizer, tiny_llama
from transplant.cli import app
from transplant.evaluation.draft import (DraftConfig, agreement_counts, continuation_matches, evaluate_draft,
                                         replay_rounds)
from transplant.evaluation.evaluate import make_windows
from transplant.inputs.corpus import Document

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def pair(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A target, a draft on the same tokenizer (its weights with noise), and a model on another tokenizer."""
    tokenizer = bpe_tokenizer(corpus_file)
    root = tmp_path_factory.mktemp("draft")
    target = tiny_llama(tokenizer, root / "target", tied=False, seed=0)
    draft = AutoModelForCausalLM.from_pretrained(target)
    torch.manual_seed(1)
    with torch.no_grad():  # a model like the target but not it: the two agree often, not always
        for weight in draft.parameters():
            weight.add_(torch.randn_like(weight) * weight.std() * 0.2)
    draft.save_pretrained(root / "draft")
    tokenizer.save_pretrained(root / "draft")
    return {"target": target, "draft": root / "draft",
            "other": tiny_llama(bpe_tokenizer(corpus_file, vocab_size=280), root / "other", tied=True, seed=2)}


def load(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def docs(corpus_file: Path) -> list[Document]:
    paragraphs = [p for p in corpus_file.read_text().split("\n") if len(p) > 80]
    return [Document(p, "a" if i % 2 else "b") for i, p in enumerate(paragraphs[:6])]


@pytest.mark.parametrize(("matches", "window", "expected"), [
    ([True, True, False, True, True, True, True, True, False], 4, (3, 6)),  # 2 kept | 4 kept, bonus | 0 kept
    ([True] * 10, 4, (2, 8)),  # 4 + bonus, 4 + bonus
    ([False] * 3, 4, (3, 0)),  # the target writes every token itself
    ([True, True, True], 1, (2, 2)),  # k = 1: one kept, then the target's own token
])
def test_rounds_replayed_by_hand(matches: list[bool], window: int, expected: tuple[int, int]) -> None:
    assert replay_rounds(matches, window) == expected


def test_a_model_drafting_for_itself_agrees_everywhere_and_keeps_whole_windows(pair, docs) -> None:
    model = load(pair["target"])
    tokenizer = AutoTokenizer.from_pretrained(pair["target"])
    config = DraftConfig(window=4, new_tokens=32, timed_prompts=2)
    result = evaluate_draft(model, model, tokenizer, docs, config=config)
    overall = result.overall
    assert overall.positions > 0 and overall.agreed == overall.positions
    lengths = [len(continuation_matches(model, model, [tokenizer.bos_token_id, *tokenizer(d.text)["input_ids"][:48]],
                                        32, tokenizer.pad_token_id, len(tokenizer))) for d in docs]
    assert overall.rounds == sum(replay_rounds([True] * n, 4)[0] for n in lengths)
    assert overall.accepted == sum(replay_rounds([True] * n, 4)[1] for n in lengths)
    assert result.speed is not None and result.speed.same_output and result.speed.tokens > 0


def test_agreement_counts_equal_position_by_position_argmax(pair, docs) -> None:
    """Padded, windowed batches give exactly the counts of one unpadded pass per document."""
    target, draft = load(pair["target"]), load(pair["draft"])
    tokenizer = AutoTokenizer.from_pretrained(pair["target"])
    expected_positions = expected_agreed = 0
    windows = []
    for number, doc in enumerate(docs):
        ids = [tokenizer.bos_token_id, *tokenizer(doc.text)["input_ids"]][:100]
        with torch.inference_mode():
            t = target(torch.tensor([ids])).logits[0, :-1].argmax(-1)
            d = draft(torch.tensor([ids])).logits[0, :-1].argmax(-1)
        expected_positions += len(ids) - 1
        expected_agreed += int((t == d).sum())
        windows += make_windows(number, ids, 40, 20)
    assert agreement_counts(draft, target, windows, tokenizer.pad_token_id, len(tokenizer), 3) == \
        (expected_positions, expected_agreed)
    assert 0 < expected_agreed < expected_positions  # a noisy copy agrees often, not always


def test_continuation_matches_predict_what_assisted_generation_keeps(pair, docs) -> None:
    """The matches are the draft's greedy tokens on the target's own greedy text, and
    transformers' assisted decoding with this draft returns that same text."""
    target, draft = load(pair["target"]), load(pair["draft"])
    tokenizer = AutoTokenizer.from_pretrained(pair["target"])
    prompt = [tokenizer.bos_token_id, *tokenizer(docs[0].text)["input_ids"][:20]]
    matches = continuation_matches(draft, target, prompt, 24, tokenizer.pad_token_id, len(tokenizer))
    ids = torch.tensor([prompt])
    alone = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
    with torch.inference_mode():
        drafted = draft(alone.new_tensor([prompt + alone.tolist()])).logits[0, len(prompt) - 1:-1].argmax(-1)
    assert matches == (drafted == alone).tolist() and len(matches) == len(alone)
    result = evaluate_draft(draft, target, tokenizer, docs[:2], config=DraftConfig(new_tokens=24, timed_prompts=2))
    assert result.speed is not None and result.speed.same_output


def test_cli_reports_groups_and_writes_json(pair, docs, tmp_path: Path) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d.text, "lang": d.group}) + "\n" for d in docs))
    record = tmp_path / "draft.json"
    result = runner.invoke(app, ["evaluate", str(pair["draft"]), "--draft-for", str(pair["target"]),
                                 "--corpus", str(corpus), "--timed-prompts", "1", "--json", str(record)])
    assert result.exit_code == 0, result.output
    figures = json.loads(record.read_text())
    assert set(figures["groups"]) == {"a", "b"} and figures["window"] == 4
    assert 0 < figures["overall"]["agreement"] < 1 and figures["speed"]["tokens"] > 0
    assert "agreement" in result.output and "drafting for" in result.output


def test_a_draft_on_another_tokenizer_is_refused_in_one_line(pair, docs, tmp_path: Path) -> None:
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n\n".join(d.text for d in docs))
    result = runner.invoke(app, ["evaluate", str(pair["other"]), "--draft-for", str(pair["target"]),
                                 "--corpus", str(corpus)])
    assert_refused(result, "does not use the target's tokenizer")


def test_chat_markers_the_target_lacks_are_named_with_the_fix(corpus_file: Path, pair, docs, tmp_path: Path) -> None:
    tokenizer = bpe_tokenizer(corpus_file)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    marked = tiny_llama(tokenizer, tmp_path / "marked", tied=True, seed=3)
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n\n".join(d.text for d in docs))
    result = runner.invoke(app, ["evaluate", str(marked), "--draft-for", str(pair["target"]), "--corpus", str(corpus)])
    assert_refused(result, "--chat-template new")
    assert "<|tool|>" in result.output


@pytest.mark.parametrize("flags", [[], ["--base", "B", "--draft-for", "T"]])
def test_evaluate_needs_exactly_one_of_base_and_draft_for(pair, flags: list[str], tmp_path: Path) -> None:
    corpus = tmp_path / "docs.txt"
    corpus.write_text("some text\n")
    result = runner.invoke(app, ["evaluate", str(pair["draft"]), "--corpus", str(corpus), *flags])
    assert_refused(result, "exactly one of --base")
