"""The number-tokenization guard (issue 23, item 4): each tokenizer's scheme, the warning on a
pair that splits numbers differently, and the ``digits`` group of evaluation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from typer.testing import CliRunner

from conftest import WORDS, tiny_llama
from transplant.cli import app
from transplant.evaluation.evaluate import EvalConfig, evaluate_model, ppl_ratio, score_documents
from transplant.inputs.corpus import Document
from transplant.io.tokenizer import load_tokenizer
from transplant.pipeline import TransplantConfig, transplant
from transplant.vocab.numbers import Split, classify, compare_numbers, marked_tokens, number_scheme, number_spans

pytestmark = pytest.mark.usefixtures("one_thread")


def number_text(seed: int = 0, lines: int = 800) -> str:
    """Words and numbers of 1 to 6 digits, some after a space and some after punctuation:
    enough repeated digit strings for a tokenizer to learn multi-digit tokens."""
    rng = random.Random(seed)
    common = [str(rng.randrange(10**n)) for n in range(1, 7) for _ in range(6)]

    def number() -> str:
        return rng.choice(common) if rng.random() < 0.7 else str(rng.randrange(10 ** rng.randint(1, 6)))

    def item() -> str:
        return rng.choice([rng.choice(WORDS), number(), f"({number()})", f"x={number()};"])

    return "\n".join(" ".join(item() for _ in range(rng.randint(4, 12))) for _ in range(lines))


@pytest.fixture(scope="module")
def numbers_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("numbers") / "corpus.txt"
    path.write_text(number_text())
    return path


def byte_bpe(corpus: Path, single_digits: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE; with ``single_digits`` every digit is its own pre-token (SmolLM2's way),
    else digits merge as the corpus says (GPT-2's way)."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if single_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(corpus)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")


def unigram(corpus: Path, out: Path, split_digits: bool) -> Path:
    """A SentencePiece unigram model; ``split_digits`` writes digits one by one (Gemma's way),
    else they merge into pieces such as ``▁123`` (the German 16k tokenizer's way)."""
    prefix = out / f"unigram-{'split' if split_digits else 'merged'}"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=600, model_type="unigram", split_digits=split_digits,
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2, hard_vocab_limit=False,
    )
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def tokenizers(numbers_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four tokenizers trained here, saved where ``transplant model`` can read them."""
    out = tmp_path_factory.mktemp("number_tokenizers")
    paths = {}
    for name, single in (("bpe-digits", True), ("bpe-merged", False)):
        paths[name] = out / name
        byte_bpe(numbers_corpus, single).save_pretrained(paths[name])
    paths["unigram-digits"] = unigram(numbers_corpus, out, split_digits=True)
    paths["unigram-merged"] = unigram(numbers_corpus, out, split_digits=False)
    return paths


def scheme(path: Path):
    return number_scheme(load_tokenizer(str(path)))


def test_each_tokenizer_gets_its_scheme(tokenizers: dict[str, Path]) -> None:
    single = scheme(tokenizers["bpe-digits"])
    assert (single.kind, single.longest, single.space) == ("single digits", 1, "separate")
    assert single.example == ("Ġ", "1", "2", "3", "4", "5")
    assert str(single) == "single digits (' 12345' → Ġ 1 2 3 4 5)"
    assert scheme(tokenizers["unigram-digits"]).kind == "single digits"
    for name in ("bpe-merged", "unigram-merged"):
        merged = scheme(tokenizers[name])
        assert merged.kind == "learned merges" and merged.longest >= 2, (name, merged)
        assert str(merged).startswith(f"learned merges of up to {merged.longest} digits")
    assert scheme(tokenizers["unigram-merged"]).example[0].startswith("▁")  # the space joins the digits


def test_fixed_groups_are_told_from_learned_merges() -> None:
    """Pure logic on hand-written splits: fixed groups cut from one end, or anything else."""
    def splits(*groups: tuple[int, ...]) -> list[Split]:
        return [Split(g, None) for g in groups]

    assert classify(splits((1,), (3,), (3, 1), (3, 3, 2)), ["123", "45"]).kind == "groups from the left"
    assert classify(splits((1,), (3,), (1, 3), (2, 3, 3)), ["12", "345"]).kind == "groups from the right"
    assert classify(splits((2,), (3, 1), (1, 3)), ["1", "2345"]).kind == "learned merges"
    spaced = classify([Split((1,), True), Split((1,), False), Split((1,), None)], ["1"])
    assert (spaced.kind, spaced.space) == ("single digits", "mixed")


def test_a_differing_pair_warns_and_a_matching_pair_does_not(tokenizers: dict[str, Path]) -> None:
    base = load_tokenizer(str(tokenizers["bpe-digits"]))
    differing = compare_numbers(base, load_tokenizer(str(tokenizers["unigram-merged"])))
    assert differing.mismatch and differing.agreement < 1
    warning = differing.warning()
    assert "\n" not in warning and "single digits (' 12345' → Ġ 1 2 3 4 5)" in warning and "learned merges" in warning
    matching = compare_numbers(base, load_tokenizer(str(tokenizers["unigram-digits"])))
    assert not matching.mismatch and matching.agreement == 1.0 and matching.warning() is None
    assert compare_numbers(base, base).to_dict()["mismatch"] is False


def test_transplant_warns_and_records_the_schemes(tokenizers: dict[str, Path], tmp_path: Path) -> None:
    base = tiny_llama(load_tokenizer(str(tokenizers["bpe-digits"])), tmp_path / "base", tied=True)
    differing = transplant(TransplantConfig(str(base), str(tokenizers["unigram-merged"]), tmp_path / "differing"))
    (warning,) = differing.warnings
    record = json.loads((tmp_path / "differing" / "transplant.json").read_text())["numbers"]
    assert record["mismatch"] is True and record["base"]["kind"] == "single digits"
    assert record["new"]["kind"] == "learned merges" and record["new"]["scheme"] in warning

    matching = transplant(TransplantConfig(str(base), str(tokenizers["unigram-digits"]), tmp_path / "matching"))
    assert matching.warnings == []
    record = json.loads((tmp_path / "matching" / "transplant.json").read_text())["numbers"]
    assert record["mismatch"] is False and record["agreement"] == 1.0

    shown = CliRunner().invoke(app, ["model", str(base), "-t", str(tokenizers["unigram-merged"]), "-o",
                                     str(tmp_path / "cli")])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "split numbers differently" in lines[0]


def test_number_spans_and_marked_tokens() -> None:
    text = "in 2024, x=7 and 3.14"
    assert [text[a:b] for a, b in number_spans(text)] == [" 2024", "7", " 3", "14"]
    offsets = [(0, 2), (2, 3), (3, 7), (7, 8), (8, 10), (10, 11), (11, 12), (12, 16), (16, 18), (18, 19), (19, 21),
               (21, 21)]
    assert marked_tokens(offsets, number_spans(text)).tolist() == [
        False, True, True, False, False, False, True, False, True, False, True, False]
    assert marked_tokens([], []).shape == (0,) and not marked_tokens([(0, 3)], []).any()


def manual_token_nll(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none").double()


DOCS = ["the house has 12345 windows and (42) doors", "x=7; the garden 2024 tree", "no numbers here at all"]


def test_digits_group_scores_the_tokens_that_write_numbers(tokenizers: dict[str, Path], tmp_path: Path) -> None:
    tok = load_tokenizer(str(tokenizers["unigram-merged"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama(tok, tmp_path / "model", tied=False)).eval()
    docs = [Document(text, "en") for text in DOCS]
    scores = score_documents(model, tok, docs)
    for text, score in zip(DOCS, scores, strict=True):
        encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        nll = manual_token_nll(model, [tok.bos_token_id, *encoded["input_ids"]])
        marked = marked_tokens(encoded["offset_mapping"], number_spans(text))
        assert score.numbers.tokens == int(marked.sum())
        assert score.numbers.nll == pytest.approx(float(nll[marked].sum()), rel=1e-5)
        assert score.numbers.bytes == sum(len(text[a:b].encode()) for a, b in number_spans(text))
        assert score.numbers.docs == int(bool(number_spans(text)))
    assert scores[2].numbers.bytes == scores[2].numbers.tokens == 0

    evaluation = evaluate_model(model, tok, docs)
    assert evaluation.digits.docs == 2 and evaluation.digits.bytes == scores[0].numbers.bytes + scores[1].numbers.bytes
    assert evaluation.to_dict()["digits"]["bytes"] == evaluation.digits.bytes
    assert ppl_ratio(evaluation, evaluate_model(model, tok, docs)) == {"en": 1.0, "overall": 1.0, "digits": 1.0}
    assert "digits" not in ppl_ratio(evaluate_model(model, tok, docs[2:]), evaluate_model(model, tok, docs[2:]))

    # a document longer than piece_chars is tokenized in pieces; its numbers count the same
    long = [Document(" ".join(DOCS * 6), "en")]
    (whole,) = score_documents(model, tok, long)
    (pieces,) = score_documents(model, tok, long, EvalConfig(piece_chars=50, max_length=32, overlap=8))
    assert pieces.numbers.bytes == whole.numbers.bytes and pieces.numbers.docs == 1
    assert pieces.numbers.tokens == whole.numbers.tokens


def test_evaluate_reports_a_digits_row(tokenizers: dict[str, Path], tmp_path: Path) -> None:
    base = tiny_llama(load_tokenizer(str(tokenizers["bpe-digits"])), tmp_path / "base", tied=True)
    transplant(TransplantConfig(str(base), str(tokenizers["unigram-merged"]), tmp_path / "new"))
    corpus = tmp_path / "dev.txt"
    corpus.write_text("\n\n".join(DOCS))
    figures = tmp_path / "figures.json"
    shown = CliRunner().invoke(app, ["evaluate", str(tmp_path / "new"), "--base", str(base), "--corpus", str(corpus),
                                     "--json", str(figures)])
    assert shown.exit_code == 0, shown.output
    assert any(line.split("│")[1].strip() == "digits" for line in shown.output.splitlines() if line.count("│") > 2)
    record = json.loads(figures.read_text())
    assert record["ratio"]["digits"] > 0 and record["new"]["digits"]["bytes"] == record["base"]["digits"]["bytes"]


@pytest.mark.slow
def test_packaged_tokenizers(tokenizers: dict[str, Path]) -> None:
    """SmolLM2 and Gemma-3 both write single digits (no warning); a SentencePiece unigram
    trained as the German 16k recipe trains it (no split_digits) writes ``▁12``-style pieces."""
    smollm2, gemma3 = load_tokenizer("smollm2-135m"), load_tokenizer("gemma3-270m")
    same = compare_numbers(smollm2, gemma3)
    assert not same.mismatch and same.warning() is None and same.agreement == 1.0
    assert same.base.example == ("Ġ", "1", "2", "3", "4", "5") and same.new.example == ("▁", "1", "2", "3", "4", "5")
    differing = compare_numbers(smollm2, load_tokenizer(str(tokenizers["unigram-merged"])))
    assert differing.mismatch and "single digits" in differing.warning()
