"""Evaluation: bits-per-byte accounting, windowing, batching, the ratio and the corpus reader."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from transplant.cli import app
from conftest import bpe_tokenizer, tiny_llama
from transplant.evaluation.compare import CompareConfig, compare, variant_dir
from transplant.errors import UserError
from transplant.inputs.corpus import Document
from transplant.evaluation.evaluate import (
    EvalConfig,
    evaluate_model,
    make_windows,
    pieces,
    ppl_ratio,
    score_documents,
    score_windows,
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


def test_windows_score_every_target_once_with_real_context():
    """Each target ids[p] (p >= 1) is scored by exactly one window, predicted from what that
    window feeds before it: the document's own preceding tokens, or (overlap 0, where a later
    window has no earlier token) the prefix token ids[0] followed by them; never from nothing."""
    ids = list(range(100, 123))  # distinct values, so a token names its document position
    for max_length, overlap in [(5, 0), (2, 0), (5, 1), (5, 2), (5, 4), (8, 3), (23, 5), (40, 10), (23, 0)]:
        positions = []
        for w in make_windows(0, ids, max_length, overlap):
            assert 2 <= len(w.ids) <= max_length and w.scored >= 1
            for j in range(len(w.ids) - w.scored, len(w.ids)):
                p, context = ids.index(w.ids[j]), w.ids[:j]
                assert context, (max_length, overlap, w)  # a target needs at least one token before it
                assert context == ids[p - j : p] or context == [ids[0], *ids[p - j + 1 : p]], (max_length, overlap, w)
                positions.append(p)
        assert positions == list(range(1, len(ids))), (max_length, overlap)


def test_overlap_zero_scores_each_chunk_as_a_document(model, large_tok):
    """With no overlap the text is cut into chunks of max_length - 1 tokens, each predicted
    from the prefix token alone, as if it were its own document."""
    text = " ".join(TEXTS)
    ids = large_tok(text, add_special_tokens=False)["input_ids"]
    (score,) = score_documents(model, large_tok, docs_of([text]), EvalConfig(max_length=32, overlap=0))
    chunks = [ids[i : i + 31] for i in range(0, len(ids), 31)]
    assert len(chunks) > 2 and score.tokens == len(ids)
    assert score.nll == pytest.approx(sum(manual_nll(model, [large_tok.bos_token_id, *c]) for c in chunks), rel=1e-5)


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


REAL_TEXT = [
    Document("The Debian system needs the proper shutdown procedure before power can safely be turned off. "
             "This is to maintain the integrity of files, by forcing all changes in memory to be written to disk.", "en"),
    Document("Das Debian-System benötigt die richtige Prozedur zum Herunterfahren, bevor der Strom sicher "
             "ausgeschaltet werden kann. Dadurch wird die Integrität der Dateien gewahrt.", "de"),
]


@pytest.mark.slow
def test_real_models_bits_per_byte():
    """Both packaged models land near published figures (≈1.2-1.5 bpb on English prose), and
    Gemma-3's large multilingual vocabulary packs more German bytes into a token than SmolLM2's."""
    from transplant.evaluation.evaluate import load_model

    results = {}
    for name in ("smollm2-135m", "gemma3-270m"):
        model, tok = load_model(name)
        results[name] = evaluate_model(model, tok, REAL_TEXT, name)
        del model
    for ev in results.values():
        assert 0.7 < ev.groups["en"].bits_per_byte < 2.0
        assert 0.7 < ev.groups["de"].bits_per_byte < 3.0
    assert results["gemma3-270m"].groups["de"].bytes_per_token > results["smollm2-135m"].groups["de"].bytes_per_token


@pytest.fixture(scope="module")
def tiny_base(text_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(bpe_tokenizer(text_file, vocab_size=300), tmp_path_factory.mktemp("eval_base"), tied=True)


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval_corpus") / "dev.jsonl"
    rows = [{"text": t, "lang": "en" if i % 2 else "de"} for i, t in enumerate(TEXTS)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_evaluate_command_against_itself(tiny_base: Path, jsonl_corpus: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", str(tiny_base), "--base", str(tiny_base), "--corpus", str(jsonl_corpus),
                                      "--batch-size", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["ratio"] == {"de": 1.0, "en": 1.0, "overall": 1.0}
    assert record["base"]["overall"]["bytes"] == sum(len(t.encode()) for t in TEXTS)


def test_compare_ranks_methods_and_writes_report(tiny_base: Path, sp_model: Path, jsonl_corpus: Path, tmp_path: Path):
    methods = ("zero", "subword", "subword:subword-weighting=first")  # a variant with options
    config = CompareConfig(base=str(tiny_base), tokenizer=str(sp_model), methods=methods,
                           corpus=jsonl_corpus, out=tmp_path / "cmp", scoring=EvalConfig(batch_size=4))
    logs: list[str] = []
    first = compare(config, log=logs.append)
    assert {p.name for p in first.report} == {"report.md", "report.json", "ratio.png"}
    record = json.loads((tmp_path / "cmp" / "report.json").read_text())
    base_ppl = record["base"]["overall"]["byte_ppl"]  # the ranking recomputed from the scores it reports
    ratios = {name: m["overall"]["byte_ppl"] / base_ppl for name, m in record["methods"].items()}
    assert [r["method"] for r in record["ranking"]] == sorted(methods, key=ratios.get)
    assert [r["ratio"]["overall"] for r in record["ranking"]] == pytest.approx(sorted(ratios.values()))
    assert '"subword_weighting": "first"' in (variant_dir(tmp_path / "cmp", methods[2]) / "transplant.json").read_text()
    for name in methods:
        assert (variant_dir(tmp_path / "cmp", name) / "transplant.json").is_file()
        assert record["methods"][name]["overall"]["bytes"] == record["base"]["overall"]["bytes"]
        assert set(record["ranking"][0]["ratio"]) == {"de", "en", "overall"}
        assert "counts" in record["transplants"][name]
    assert "| 1 | " in (tmp_path / "cmp" / "report.md").read_text()
    again = compare(config, log=logs.append)  # finished transplants are reused, scores are deterministic
    assert any("reusing" in line for line in logs)
    assert {k: v.to_dict() for k, v in again.results.items()} == {k: v.to_dict() for k, v in first.results.items()}


def test_compare_rejects_unknown_method_before_work(tiny_base: Path, sp_model: Path, jsonl_corpus: Path, tmp_path: Path):
    config = CompareConfig(base=str(tiny_base), tokenizer=str(sp_model), methods=("subword", "nope"),
                           corpus=jsonl_corpus, out=tmp_path / "cmp")
    with pytest.raises(UserError, match="nope"):
        compare(config)
    for bad, message in (("subword:oops", "key=value"), ("subword:k=8", "unknown option")):
        with pytest.raises(UserError, match=message):
            compare(dataclasses.replace(config, methods=("zero", bad)))
    assert not (tmp_path / "cmp").exists()


def _corpus_builder():
    import importlib.util

    path = Path(__file__).parents[1] / "recipes" / "corpora" / "build_eval_corpus.py"
    spec = importlib.util.spec_from_file_location("build_eval_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_builder_keeps_prose_only():
    build = _corpus_builder()
    prose_lines = ["    Just like any other modern OS where the file operation involves",
                   "    caching data in memory, the Debian system needs the proper shutdown."]
    assert build.prose(prose_lines, cjk=False) == (
        "Just like any other modern OS where the file operation involves caching data in memory, "
        "the Debian system needs the proper shutdown.")
    assert build.prose(["    ラップトップ PC 上のデスクトップの Debian システム等のような典型",
                        "    的単一ユーザーワークステーションでは設定をします。"], cjk=True) == (
        "ラップトップ PC 上のデスクトップの Debian システム等のような典型的単一ユーザーワークステーションでは設定をします。")
    table = ["    +----------+", "    | package  | a long enough cell to pass the length filter, really. |"]
    heading = ["1.1.8. How to shutdown the system and many more words to make this long enough."]
    toc = ["    1.2.3. Filesystem permissions"]
    command = ["    # shutdown -h now and a long comment to pass the minimum length filter of prose."]
    for block in (table, heading, toc, command, ["    Table 1.1. List of interesting text-mode program packages"]):
        assert build.prose(block, cjk=False) is None


def test_corpus_builder_split_is_disjoint_and_stable():
    build = _corpus_builder()
    texts = [f"paragraph number {i} with some words." for i in range(400)] * 2
    first = build.split(texts, test_fraction=0.5, cap=1000)
    assert not set(first["dev"]) & set(first["test"])
    assert len(first["dev"]) + len(first["test"]) == 400 and 150 < len(first["test"]) < 250
    assert build.split(list(reversed(texts)), 0.5, 1000) == first
    capped = build.split(texts, 0.5, 50)
    assert capped["dev"] == first["dev"][:50] and capped["test"] == first["test"][:50]


# --- very long documents: cut at whitespace, windows made as they are scored ------------------


def long_text(words: int, seed: int = 0) -> str:
    """One line of ``words`` words (no blank line: one document)."""
    return " ".join(WORDS[(seed + i * 7 + i // 5) % len(WORDS)] for i in range(words))


def test_pieces_join_back_and_are_cut_before_whitespace():
    text = long_text(400) + " " + "x" * 300 + "\nend"
    cut = list(pieces(text, 100))
    assert "".join(cut) == text
    assert all(1 <= len(p) <= 100 for p in cut)
    assert all(p[0].isspace() for p in cut[1:] if not p.startswith("x"))  # a cut leaves the space to the next word
    assert list(pieces("short", 100)) == ["short"]


def eager_scores(model, tok, texts: list[str], config: EvalConfig) -> list[tuple[float, int]]:
    """(NLL, tokens) per text as evaluation has always defined them for documents that are not
    cut: all texts tokenized at once, all windows made, sorted and scored together."""
    max_length = min(config.max_length, model.config.max_position_embeddings)
    overlap = max_length // 2 if config.overlap is None else config.overlap
    encoded = tok(texts, add_special_tokens=False)["input_ids"]
    windows = [w for i, ids in enumerate(encoded) for w in make_windows(i, [tok.bos_token_id, *ids], max_length, overlap)]
    nll = [0.0] * len(texts)
    for window, value in zip(windows, score_windows(model, windows, tok.pad_token_id, config)):
        nll[window.doc] += value
    return [(value, len(ids)) for value, ids in zip(nll, encoded)]


def test_normal_documents_score_exactly_as_before(model, large_tok):
    """Documents under piece_chars are scored bit for bit as before, a long one beside them or not."""
    config = EvalConfig(batch_size=4, max_length=48, piece_chars=2000)
    expected = eager_scores(model, large_tok, TEXTS, config)
    for docs in (docs_of(TEXTS), docs_of([long_text(3000), *TEXTS])[1:], docs_of([*TEXTS, long_text(3000)])):
        scores = score_documents(model, large_tok, docs, config)[: len(TEXTS)]
        assert [(s.nll, s.tokens) for s in scores] == expected


def test_long_document_is_scored_as_the_joined_tokens_of_its_pieces(model, large_tok):
    """A document over piece_chars: its tokens are those of its pieces one after another, and
    windows run over them as over any document's tokens (context crosses the cuts)."""
    text = long_text(3000)
    config = EvalConfig(batch_size=4, max_length=48, piece_chars=500)
    (score,) = score_documents(model, large_tok, docs_of([text]), config)
    ids = [i for p in pieces(text, 500) for i in large_tok(p, add_special_tokens=False)["input_ids"]]
    windows = make_windows(0, [large_tok.bos_token_id, *ids], 48, 24)
    assert len(list(pieces(text, 500))) > 20 and len(windows) > 50
    assert score.tokens == len(ids) and score.bytes == len(text.encode("utf-8"))
    assert score.nll == pytest.approx(sum(score_windows(model, windows, large_tok.pad_token_id, config)), rel=1e-6)


def test_peak_memory_does_not_grow_with_document_length(model, large_tok):
    """Python-side peak (tracemalloc: token lists, windows) while scoring one document of 270k
    characters and one 8 times as long: cut into pieces and windowed lazily, both peak alike."""
    import tracemalloc

    config = EvalConfig(batch_size=64, overlap=0)
    peaks = []
    for words in (50_000, 400_000):
        docs = docs_of([long_text(words)])
        tracemalloc.start()
        score_documents(model, large_tok, docs, config)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert len(docs[0].text) > 16 * EvalConfig().piece_chars
    assert peaks[1] < 1.5 * peaks[0], [f"{p / 2**20:.1f} MiB" for p in peaks]
