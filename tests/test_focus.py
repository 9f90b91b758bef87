"""FOCUS: exact sparsemax on a FAISS preselection, token vectors of the new tokenizer, the
method's rows by hand, and the command line (happy path and bad corpora)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from entmax import sparsemax

from conftest import bpe_tokenizer, make_text, sentencepiece_model, tiny_llama
from test_cli import assert_user_error, run
from test_methods import make_context, spelled_out
from transplant.errors import UserError
from transplant.inputs.fasttext import train_vectors
from transplant.methods import registry
from transplant.methods.focus import FocusOptions, token_splitter
from transplant.maths.sparsemax import sparsemax_topm, threshold
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies


def dense(result, columns: int) -> torch.Tensor:
    out = torch.zeros(len(result.ids), columns)
    return out.scatter_add_(1, result.ids.clamp(min=0), torch.where(result.ids >= 0, result.weights, 0.0))


def full_sparsemax(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return sparsemax(F.normalize(queries, dim=1) @ F.normalize(candidates, dim=1).T, dim=-1)


def test_sparsemax_by_hand() -> None:
    """Cosines 0.9, 0.8, 0.1 to three candidates: τ = (0.9 + 0.8 − 1)/2 = 0.35, so the
    weights are 0.55, 0.45 and 0 (the third lies below τ)."""
    cosines = torch.tensor([0.9, 0.8, 0.1])
    candidates = torch.stack([cosines, (1 - cosines**2).sqrt()], dim=1) * torch.tensor([[2.0], [0.5], [3.0]])
    result = sparsemax_topm(torch.tensor([[1.0, 0.0]]), candidates, m=3)
    assert result.ids.tolist() == [[0, 1]]
    assert torch.allclose(result.weights, torch.tensor([[0.55, 0.45]]), atol=1e-6)
    assert torch.allclose(threshold(cosines[None], torch.tensor([[0.55, 0.45, 0.0]])), torch.tensor([0.35]))


def test_preselection_equals_full_sparsemax_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    queries, candidates = torch.randn(300, 16, generator=g), torch.randn(3000, 16, generator=g)
    result = sparsemax_topm(queries, candidates, m=256)
    assert torch.allclose(dense(result, 3000), full_sparsemax(queries, candidates), atol=1e-6)
    assert result.widest == 256  # random directions: supports are small, nothing widened


def test_preselection_widens_until_exact() -> None:
    """Candidates in a tight cluster around some queries: sparsemax spreads its weight over
    dozens of them, more than M = 4, so those rows must be searched again, wider."""
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(16, generator=g)
    cluster = centre + 0.02 * torch.randn(60, 16, generator=g)
    candidates = torch.cat([cluster, torch.randn(500, 16, generator=g)])
    queries = torch.cat([centre + 0.01 * torch.randn(5, 16, generator=g), torch.randn(20, 16, generator=g)])
    expected = full_sparsemax(queries, candidates)
    assert (expected[:5] > 0).sum(1).min() > 4  # the premise: a support wider than M
    result = sparsemax_topm(queries, candidates, m=4)
    assert result.widest > 4
    assert torch.allclose(dense(result, len(candidates)), expected, atol=1e-6)
    naive = sparsemax(torch.topk(F.normalize(queries[:5], dim=1) @ F.normalize(candidates, dim=1).T, 4).values, dim=-1)
    assert not torch.allclose(naive, expected[:5].topk(4).values, atol=1e-3)  # without widening it would be wrong


@pytest.fixture(scope="module")
def match(corpus_file: Path, sp_model: Path):
    return match_vocabularies(bpe_tokenizer(corpus_file), load_tokenizer(str(sp_model)))


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("focus") / "target.txt"
    path.write_text(make_text(0) + "\n" + spelled_out(0))
    return path


def test_token_split_is_the_new_tokenizer_and_its_key_names_it(corpus_file: Path, sp_model: Path,
                                                                tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(sp_model))
    split, key = token_splitter(tokenizer)
    lines = ["the house over the lazy dog", "qzx straße"]
    assert split(lines) == [tokenizer.tokenize(line) for line in lines]
    assert key == token_splitter(load_tokenizer(str(sp_model)))[1]  # the same tokenizer, loaded again
    other = load_tokenizer(str(sentencepiece_model(corpus_file, tmp_path, model_type="bpe")))
    assert token_splitter(other)[1] != key


def test_rows_by_hand(match, text: Path) -> None:
    """Each placed token's row is the full-sparsemax mix of the overlap rows (computed here
    without FAISS); tokens without a vector get subword rows, or the random baseline's."""
    options = FocusOptions(corpus=[str(text)], ft_bucket=10_000, preselect=2, no_vector="random")
    ctx = make_context(match, options)
    rows = registry.get("focus")().init_rows(ctx, "input", match.missing)

    split, key = token_splitter(match.new_tokenizer)
    vectors = train_vectors([text], split, key, options.fasttext_options(0))
    tokens = match.new_vocab.tokens
    anchor_new, anchor_base = match.anchors
    keep = [tokens[i] in vectors.key_to_index for i in anchor_new.tolist()]
    anchor_vecs = torch.tensor(vectors.vectors[[vectors.key_to_index[tokens[i]] for i, k in
                                                zip(anchor_new.tolist(), keep) if k]])
    anchor_rows = ctx.base_input[anchor_base[torch.tensor(keep)]]
    placed = [i for i, t in enumerate(match.missing.tolist()) if tokens[t] in vectors.key_to_index]
    assert 0 < len(placed) < len(match.missing)
    for i in placed:
        query = torch.tensor(vectors[tokens[match.missing[i]]])[None]
        expected = full_sparsemax(query, anchor_vecs) @ anchor_rows
        assert torch.allclose(rows[i], expected[0], atol=1e-5)
    unplaced = torch.tensor([i for i in range(len(match.missing)) if i not in placed])
    random_rows = registry.get("random")().init_rows(ctx, "input", match.missing[unplaced])
    assert torch.equal(rows[unplaced], random_rows)
    subword = registry.get("focus")().init_rows(make_context(match, FocusOptions(  # the default
        corpus=[str(text)], ft_bucket=10_000)), "input", match.missing)
    assert torch.allclose(subword[unplaced], registry.get("subword")().init_rows(
        make_context(match, registry.get("subword").Options()), "input", match.missing[unplaced]))


def test_cli_tiny_model(corpus_file: Path, sp_model: Path, text: Path, tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=False)
    out = tmp_path / "out"
    result = run("model", str(base), "-t", str(sp_model), "-o", str(out), "--method", "focus", "--corpus", str(text),
                 "--corpus", str(corpus_file), "--ft-bucket", "10000", "--ft-min-count", "3", "--ft-ngrams")
    assert result.exit_code == 0, result.output
    record = (out / "transplant.json").read_text()
    assert str(text) in record and str(corpus_file) in record and '"ft_ngrams": true' in record
    report = json.loads(record)["method_report"]  # what the method did, for an audit
    assert report["placed"] + report["no_vector"] == json.loads(record)["counts"]["initialized"]
    assert report["placed"] > 0 and report["mean_support"] >= 1 and report["anchors"] > 0


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\n  \n\n", "empty.txt: the corpus is empty"),
        ("Grüße aus Köln\nÄrger\n".encode("latin-1"), "latin1.txt:1: not UTF-8"),
    ],
    ids=["empty", "latin-1"],
)
def test_bad_corpus_is_one_line_naming_the_file(corpus_file: Path, sp_model: Path, tmp_path: Path,
                                                content: bytes, fragment: str) -> None:
    corpus = tmp_path / ("empty.txt" if "empty" in fragment else "latin1.txt")
    corpus.write_bytes(content)
    out = tmp_path / "out"
    result = run("model", str(tmp_path / "not-read"), "-t", str(sp_model), "-o", str(out), "--method", "focus",
                 "--corpus", str(corpus))
    assert_user_error(result, out, fragment)


def test_options_need_text_or_vectors_and_a_known_fallback() -> None:
    with pytest.raises(UserError, match="--corpus"):
        FocusOptions()
    with pytest.raises(UserError, match="--no-vector"):
        FocusOptions(fasttext_model=__file__, no_vector="zero")
    with pytest.raises(UserError, match="--preselect"):
        FocusOptions(fasttext_model=__file__, preselect=0)
