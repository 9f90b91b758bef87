"""Every registered method through the same contract, plus the baselines' own formulas."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from conftest import RANDOM_HYPERNETS, WORDS, bpe_tokenizer, make_text
from transplant.methods import registry
from transplant.methods.base import Context
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies


@pytest.fixture(scope="module")
def match(corpus_file: Path, sp_model: Path):
    return match_vocabularies(bpe_tokenizer(corpus_file), load_tokenizer(str(sp_model)))


def make_context(match, options=None, tied: bool = False, seed: int = 0) -> Context:
    g = torch.Generator().manual_seed(0)
    rows, new_rows = len(match.base_vocab), match.num_rows
    return Context(
        match=match,
        base_input=torch.randn(rows, 24, generator=g),
        base_output=None if tied else torch.randn(rows, 24, generator=g),
        options=options,
        seed=seed,
        donor_input=torch.randn(new_rows, 40, generator=g),
        donor_output=None if tied else torch.randn(new_rows, 40, generator=g),
    )


def spelled_out(seed: int, lines: int = 300) -> str:
    """Made-up words, which the tiny tokenizers spell letter by letter: text in which the
    single-letter tokens both vocabularies share occur (FOCUS needs them to have vectors)."""
    rng = random.Random(seed)
    return "\n".join(" ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 5)))
                                for _ in range(8)) for _ in range(lines))


def identity_parallel(path: Path, lines: int = 300) -> Path:
    """A parallel TSV whose target is its source (the test text): enough to align end to end."""
    path.write_text("".join(f"{line}\t{line}\n" for line in make_text(lines=lines).splitlines()))
    return path


def with_options(cls, ctx: Context, encoder_dir: Path, scratch: Path) -> Context:
    """``ctx`` with the method's default options plus what a unit test supplies offline: the
    local tiny encoder for a method that embeds text (its default model is downloaded), a
    hypernetwork for this base for a method that applies one (randomly initialized heads, so
    its rows are not simply the subword rows); text, a word-for-word dictionary and few
    fastText n-gram buckets (gensim's 2M take 800 MB) for a method that trains word vectors;
    a parallel corpus for one that aligns text."""
    names = {f.name for f in dataclasses.fields(cls.Options)}
    given = {}
    if "aux_model" in names:
        given["aux_model"] = str(encoder_dir)
    if "hypernet" in names:
        given["hypernet"] = str(RANDOM_HYPERNETS[cls.name](ctx, scratch / "hypernet"))
    if "corpus" in names:
        for name, seed in (("corpus", 0), ("source_corpus", 1)):
            (scratch / f"{name}.txt").write_text(make_text(seed) + "\n" + spelled_out(seed))
            if name in names:
                given[name] = [str(scratch / f"{name}.txt")]
        given["ft_bucket"] = 10_000
    if "dictionary" in names:
        (scratch / "dictionary.tsv").write_text("".join(f"{w}\t{w}\n" for w in WORDS))
        given["dictionary"] = str(scratch / "dictionary.tsv")
    if "parallel" in names:
        given["parallel"] = str(identity_parallel(scratch / "parallel.tsv"))
    ctx.options = cls.Options(**given)
    return ctx


# mergekit runs on checkpoint directories, not on matrices: tests/test_mergekit.py checks it
# through the pipeline against mergekit-tokensurgeon's own output.
@pytest.mark.parametrize("name", sorted(set(registry.available()) - {"mergekit"}))
@pytest.mark.parametrize("which", ["input", "output"])
def test_method_contract(match, encoder_dir: Path, tmp_path: Path, name: str, which: str) -> None:
    cls = registry.get(name)
    ctx = with_options(cls, make_context(match), encoder_dir, tmp_path)
    before = ctx.base(which).clone()
    rows = cls().init_rows(ctx, which, match.missing)
    assert rows.shape == (len(match.missing), 24) and rows.dtype == torch.float32
    assert torch.isfinite(rows).all()
    assert torch.equal(ctx.base(which), before)  # methods never write into the base
    again = cls().init_rows(with_options(cls, make_context(match), encoder_dir, tmp_path), which, match.missing)
    assert torch.equal(rows, again)


def test_mean_and_zero(match) -> None:
    ctx = make_context(match)
    mean = registry.get("mean")().init_rows(ctx, "input", match.missing)
    assert torch.allclose(mean, ctx.base_input.mean(0).expand_as(mean))
    assert registry.get("zero")().init_rows(ctx, "input", match.missing).abs().sum() == 0


def test_random_uses_per_dimension_statistics(match) -> None:
    ctx = make_context(match)
    scale = torch.linspace(0.1, 5.0, 24)
    ctx.base_input = ctx.base_input * scale + torch.arange(24.0)
    many = torch.arange(20000) % len(match.missing)
    rows = registry.get("random")().init_rows(ctx, "input", many)
    std, mean = torch.std_mean(ctx.base_input, dim=0)
    assert torch.allclose(rows.mean(0), mean, atol=0.1)
    assert torch.allclose(rows.std(0), std, rtol=0.05)
    other = registry.get("random")().init_rows(make_context(match, seed=1), "input", match.missing)
    assert not torch.equal(other, registry.get("random")().init_rows(make_context(match), "input", match.missing))


@pytest.mark.parametrize("weighting", ["mean", "length", "first"])
def test_subword_by_hand(match, weighting: str) -> None:
    cls = registry.get("subword")
    ctx = make_context(match, cls.Options(subword_weighting=weighting))
    rows = cls().init_rows(ctx, "input", match.missing)
    checked = 0
    for i, new_id in enumerate(match.missing.tolist()):
        pieces = match.decompose(new_id)
        if not pieces:
            expected = ctx.base_input.mean(0)
        elif weighting == "first":
            expected = ctx.base_input[pieces[0]]
        else:
            w = torch.tensor([float(max(1, len(match.base_vocab.surfaces[p]))) if weighting == "length" else 1.0 for p in pieces])
            expected = (w[:, None] * ctx.base_input[pieces]).sum(0) / w.sum()
        assert torch.allclose(rows[i], expected, atol=1e-5), (new_id, pieces)
        checked += len(pieces) > 1
    assert checked > 5
