"""Evaluation: bits-per-byte accounting, windowing, batching, the ratio and the corpus reader."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import bpe_tokenizer
from transplant.errors import UserError
from transplant.evaluate import (
    Document,
    EvalConfig,
    evaluate_model,
    load_corpus,
    make_windows,
    ppl_ratio,
    score_documents,
)

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly zebras".split()
TEXTS = [
    " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(5 + 4 * i)) + ". Grüße, 東京 ünïcode!"
    for i in range(9)
]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval_text") / "train.txt"
    path.write_text("\n".join(TEXTS * 4), encoding="utf-8")
    return path


def tiny_model(vocab_size: int, seed: int = 0, context: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def small_tok(text_file: Path):
    return bpe_tokenizer(text_file, vocab_size=300)


@pytest.fixture(scope="module")
def large_tok(text_file: Path):
    return bpe_tokenizer(text_file, vocab_size=420)


@pytest.fixture(scope="module")
def model(large_tok):
    return tiny_model(len(large_tok))


def docs_of(texts, group="all"):
    return [Document(t, group) for t in texts]


def manual_nll(model, ids: list[int]) -> float:
    """Plain unbatched forward over the whole sequence; targets are ids[1:]."""
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()


def test_self_ratio_is_exactly_one(model, large_tok):
    docs = docs_of(TEXTS[:4], "en") + docs_of(TEXTS[4:], "de")
    a = evaluate_model(model, large_tok, docs, "a")
    b = evaluate_model(model, large_tok, docs, "b")
    assert ppl_ratio(a, b) == {"en": 1.0, "de": 1.0, "overall": 1.0}


def test_ratio_of_different_models_is_not_one(model, large_tok):
    docs = docs_of(TEXTS)
    ratio = ppl_ratio(evaluate_model(tiny_model(len(large_tok), seed=1), large_tok, docs), evaluate_model(model, large_tok, docs))
    assert ratio["overall"] != pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("tok_name", ["small_tok", "large_tok"])
def test_accounting_matches_a_plain_forward_pass(request, model, tok_name):
    tok = request.getfixturevalue(tok_name)
    scores = score_documents(model, tok, docs_of(TEXTS), EvalConfig(batch_size=4))
    for text, score in zip(TEXTS, scores):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.bos_token_id not in ids
        assert score.tokens == len(ids)  # BOS not counted, not scored
        assert score.bytes == len(text.encode("utf-8"))
        assert score.nll == pytest.approx(manual_nll(model, [tok.bos_token_id, *ids]), rel=1e-5)
        assert score.bits_per_byte == pytest.approx(score.nll / (math.log(2) * score.bytes))


def test_two_tokenizations_count_the_same_bytes(model, small_tok, large_tok):
    docs = docs_of(TEXTS)
    small = evaluate_model(model, small_tok, docs).overall
    large = evaluate_model(model, large_tok, docs).overall
    assert small.bytes == large.bytes == sum(len(t.encode("utf-8")) for t in TEXTS)
    assert small.tokens > large.tokens  # the larger vocabulary merges more
    assert small.bytes_per_token < large.bytes_per_token
    ratio = ppl_ratio(evaluate_model(model, small_tok, docs), evaluate_model(model, large_tok, docs))
    assert ratio["overall"] == pytest.approx(2 ** (small.bits_per_byte - large.bits_per_byte))


def test_eos_stands_in_for_missing_bos(model, text_file):
    tok = bpe_tokenizer(text_file, vocab_size=300)
    tok.bos_token = None
    assert tok.bos_token_id is None
    text = TEXTS[3]
    (score,) = score_documents(model, tok, docs_of([text]))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert score.nll == pytest.approx(manual_nll(model, [tok.eos_token_id, *ids]), rel=1e-5)


def test_windows_cover_every_target_once():
    ids = list(range(23))
    for max_length, overlap in [(5, 0), (5, 2), (5, 4), (8, 3), (23, 5), (40, 10)]:
        windows = make_windows(0, ids, max_length, overlap)
        targets = []
        for w in windows:
            assert 2 <= len(w.ids) <= max_length and w.scored >= 1
            targets += w.ids[len(w.ids) - w.scored :]
            assert w.ids == ids[w.ids[0] : w.ids[-1] + 1]  # contiguous: real context before the scored part
        assert targets == ids[1:]


def test_long_document_is_fully_scored(model, large_tok):
    text = " ".join(TEXTS)
    ids = large_tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 64
    (windowed,) = score_documents(model, large_tok, docs_of([text]), EvalConfig(max_length=32, overlap=16))
    (whole,) = score_documents(model, large_tok, docs_of([text]), EvalConfig(max_length=4096))
    assert windowed.tokens == whole.tokens == len(ids)
    assert whole.nll == pytest.approx(manual_nll(model, [large_tok.bos_token_id, *ids]), rel=1e-5)
    assert windowed.nll != pytest.approx(whole.nll, rel=1e-6)  # less context, different NLL


def test_window_is_capped_by_model_context(large_tok):
    short_context = tiny_model(len(large_tok), context=32)
    text = " ".join(TEXTS)
    ids = large_tok(text, add_special_tokens=False)["input_ids"]
    (capped,) = score_documents(short_context, large_tok, docs_of([text]), EvalConfig(max_length=4096, overlap=8))
    (explicit,) = score_documents(short_context, large_tok, docs_of([text]), EvalConfig(max_length=32, overlap=8))
    assert capped.tokens == len(ids)
    assert capped.nll == explicit.nll


def test_batched_equals_one_at_a_time(model, large_tok):
    docs = docs_of(TEXTS + [" ".join(TEXTS)])
    batched = score_documents(model, large_tok, docs, EvalConfig(batch_size=16, max_length=48, overlap=12))
    single = [score_documents(model, large_tok, [d], EvalConfig(batch_size=1, max_length=48, overlap=12))[0] for d in docs]
    for b, s in zip(batched, single):
        assert b.tokens == s.tokens
        assert b.nll == pytest.approx(s.nll, abs=1e-4)


def test_evaluation_is_deterministic(model, large_tok):
    docs = docs_of(TEXTS)
    first = evaluate_model(model, large_tok, docs, config=EvalConfig(batch_size=3)).to_dict()
    assert evaluate_model(model, large_tok, docs, config=EvalConfig(batch_size=3)).to_dict() == first


def test_groups_add_up_to_overall(model, large_tok):
    docs = docs_of(TEXTS[:3], "en") + docs_of(TEXTS[3:], "code")
    ev = evaluate_model(model, large_tok, docs)
    assert list(ev.groups) == ["en", "code"]
    assert ev.overall.docs == len(docs)
    assert ev.overall.nll == pytest.approx(sum(s.nll for s in ev.groups.values()))
    assert min(s.bits_per_byte for s in ev.groups.values()) <= ev.overall.bits_per_byte
    assert ev.overall.bits_per_byte <= max(s.bits_per_byte for s in ev.groups.values())


def test_load_txt_and_jsonl(tmp_path: Path):
    txt = tmp_path / "c.txt"
    txt.write_text("first para\nline two\n\n\n  second  \n\n", encoding="utf-8")
    assert load_corpus(txt) == [Document("first para\nline two"), Document("second")]
    jsonl = tmp_path / "c.jsonl"
    rows = [{"text": "a", "lang": "en"}, {"text": "b", "lang": "de"}, {"text": "c", "lang": "en"}, {"text": "d"},
            {"text": "e", "lang": "en", "domain": "web"}, {"text": "  "}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert [(d.text, d.group) for d in load_corpus(jsonl)] == [
        ("a", "en"), ("b", "de"), ("c", "en"), ("d", "all"), ("e", "en/web")]
    assert [d.text for d in load_corpus(jsonl, max_docs=1)] == ["a", "b", "d", "e"]


@pytest.mark.parametrize("content,name", [("{\"txt\": 1}\n", "bad.jsonl"), ("x", "c.csv"), ("\n\n", "empty.txt")])
def test_bad_corpus_is_a_user_error(tmp_path: Path, content, name):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError):
        load_corpus(path)


SLOW_MODELS = {"smollm2-135m": os.environ.get("TRANSPLANT_SMOLLM2", "smollm2-135m"),
               "gemma3-270m": os.environ.get("TRANSPLANT_GEMMA3", "gemma3-270m")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_MODELS))
def test_real_model_bits_per_byte(tmp_path: Path, name):
    """Real models land near published figures on English prose (DATA.md: ≈1.25-1.3 bpb)."""
    from transplant.evaluate import load_model

    model, tok = load_model(SLOW_MODELS[name])
    text = (
        "The Debian system needs the proper shutdown procedure before power can safely be turned off. "
        "This is to maintain the integrity of files, by forcing all changes in memory to be written to disk. "
        "If the software power control is available, the shutdown procedure automatically turns off power of "
        "the system. You can shutdown the system under the normal multiuser mode from the command line."
    )
    ev = evaluate_model(model, tok, [Document(text, "en")], name)
    assert 0.5 < ev.overall.bits_per_byte < 2.0
    assert 3.0 < ev.overall.bytes_per_token < 6.0
