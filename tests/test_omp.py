"""OMP: the fast Batch-OMP against mergekit and against a plain reference, then the method."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import bpe_tokenizer, tiny_llama
from transplant.errors import UserError
from transplant.methods.base import Context
from transplant.methods.omp import Omp, OmpOptions
from transplant.maths.omp import batch_omp, candidate_pools
from transplant.pipeline import TransplantConfig, transplant
from transplant.progress import Stages
from transplant.vocab.matching import match_vocabularies


def reference_omp(x: torch.Tensor, atoms: torch.Tensor, k: int) -> tuple[list[int], torch.Tensor]:
    """Textbook OMP for one target in float64: loops, a full lstsq refit every step."""
    x, atoms = x.double(), atoms.double()
    support: list[int] = []
    residual = x.clone()
    coeffs = torch.zeros(0, dtype=torch.float64)
    for _ in range(k):
        scores = (atoms @ residual).abs()
        scores[support] = -1.0
        support.append(int(scores.argmax()))
        coeffs = torch.linalg.lstsq(atoms[support].T, x[:, None]).solution[:, 0]
        residual = x - atoms[support].T @ coeffs
    return support, coeffs


def dictionary(num_atoms: int, dim: int, seed: int) -> torch.Tensor:
    """Random atoms with unequal norms, as embedding rows have (OMP does not normalize)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_atoms, dim, generator=g) * (0.2 + 2 * torch.rand(num_atoms, 1, generator=g))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("num_atoms", "dim", "k"), [(300, 48, 8), (2000, 96, 32), (1500, 256, 64)])
def test_matches_mergekit_batch_omp(num_atoms: int, dim: int, k: int) -> None:
    """Same atoms in the same order and the same coefficients. Kept to k well below dim: once
    the residual is tiny, late picks are near-ties that rounding alone can flip."""
    mergekit_omp = pytest.importorskip("mergekit.tokensurgeon.omp").batch_omp
    atoms = dictionary(num_atoms, dim, seed=num_atoms)
    targets = torch.randn(120, dim, generator=torch.Generator().manual_seed(1))
    indices, coeffs = mergekit_omp(targets, atoms, k)
    ours = batch_omp(targets, atoms, k, batch_size=50)
    assert torch.equal(ours.indices, indices)
    assert relative_error(ours.coeffs, coeffs) < 1e-4


def test_matches_reference_and_reports_residual() -> None:
    atoms = dictionary(400, 40, seed=7)
    targets = torch.randn(30, 40, generator=torch.Generator().manual_seed(2))
    ours = batch_omp(targets, atoms, 12)
    for i, x in enumerate(targets):
        support, coeffs = reference_omp(x, atoms, 12)
        assert ours.indices[i].tolist() == support
        assert relative_error(ours.coeffs[i].double(), coeffs) < 1e-4
        residual = x - ours.coeffs[i] @ atoms[ours.indices[i]]
        assert ours.rel_residual[i] == pytest.approx(float(residual.norm() / x.norm()), rel=1e-4)


def test_exact_recovery_of_sparse_combinations() -> None:
    g = torch.Generator().manual_seed(4)
    atoms = torch.nn.functional.normalize(torch.randn(300, 256, generator=g), dim=1)
    support = torch.stack([torch.randperm(300, generator=g)[:5] for _ in range(20)])
    weights = torch.rand(20, 5, generator=g) + 0.5
    targets = torch.einsum("bk,bkd->bd", weights, atoms[support])
    result = batch_omp(targets, atoms, 5)
    assert (result.rel_residual < 1e-4).all()
    assert torch.equal(result.indices.sort(dim=1).values, support.sort(dim=1).values)


@pytest.mark.parametrize("pool", [0, 280, 120])
def test_k_beyond_dimension_and_dependent_atoms_stay_finite(pool: int) -> None:
    """k > dim: after dim atoms the residual is ~0 and any further atom is dependent. Those
    picks must get coefficient 0 (not NaN, not a blown-up fit), as must duplicate atoms."""
    atoms = dictionary(280, 40, seed=3)
    atoms[0] *= 10  # the longest atom, so a multiple of it is picked first
    atoms[1::7] = atoms[::7][: len(atoms[1::7])]  # exact duplicates, atoms[1] of atoms[0] too
    targets = torch.randn(50, 40, generator=torch.Generator().manual_seed(8))
    targets[0] = 0.0
    targets[1] = 3 * atoms[0]
    result = batch_omp(targets, atoms, 64, pool=pool)
    assert torch.isfinite(result.coeffs).all() and torch.isfinite(result.rel_residual).all()
    assert ((result.coeffs != 0).sum(dim=1) <= 40).all()
    assert (result.coeffs[0] == 0).all()
    assert result.indices[1, 0] in (0, 1) and result.coeffs[1, 0] == pytest.approx(3.0)
    assert (result.coeffs[1, 1:] == 0).all()
    fit = torch.einsum("bk,bkd->bd", result.coeffs, atoms[result.indices])
    torch.testing.assert_close(fit, targets, rtol=0, atol=1e-3)
    float32_gram = 0 < pool < len(atoms)  # per-target pools: residual norms good to ~1e-3 only
    assert (result.rel_residual[1:] < (1e-3 if float32_gram else 1e-4)).all()
    assert result.coeffs.abs().max() < 100


@pytest.mark.parametrize(("num_atoms", "dim", "k"), [(300, 48, 8), (1500, 256, 64)])
def test_pool_covering_every_atom_is_exact(num_atoms: int, dim: int, k: int) -> None:
    """The Gram-form path with every atom as candidate is mergekit's OMP too."""
    mergekit_omp = pytest.importorskip("mergekit.tokensurgeon.omp").batch_omp
    atoms = dictionary(num_atoms, dim, seed=num_atoms + 1)
    targets = torch.randn(60, dim, generator=torch.Generator().manual_seed(3))
    indices, coeffs = mergekit_omp(targets, atoms, k)
    ours = batch_omp(targets, atoms, k, pool=num_atoms, batch_size=25)
    assert torch.equal(ours.indices, indices)
    assert relative_error(ours.coeffs, coeffs) < 1e-4


def test_pool_is_omp_over_each_targets_nearest_atoms() -> None:
    """Pooled OMP = the reference OMP run on the target's candidates: the atoms nearest by
    cosine around the atoms' mean."""
    atoms = dictionary(600, 32, seed=9)
    targets = torch.randn(25, 32, generator=torch.Generator().manual_seed(10))
    pools = candidate_pools(targets, atoms, 40)
    centered = torch.nn.functional.normalize(atoms - atoms.mean(0), dim=1)
    queries = torch.nn.functional.normalize(targets - atoms.mean(0), dim=1)
    assert torch.equal(pools.sort(dim=1).values, (queries @ centered.T).topk(40, dim=1).indices.sort(dim=1).values)
    ours = batch_omp(targets, atoms, 10, pool=40, batch_size=7)
    for i, x in enumerate(targets):
        support, coeffs = reference_omp(x, atoms[pools[i]], 10)
        assert ours.indices[i].tolist() == pools[i][support].tolist()
        assert relative_error(ours.coeffs[i].double(), coeffs) < 1e-4
        residual = x - ours.coeffs[i] @ atoms[ours.indices[i]]
        assert ours.rel_residual[i] == pytest.approx(float(residual.norm() / x.norm()), rel=1e-4)


def test_large_problems_search_candidates_approximately_but_deterministically() -> None:
    """Above the exact-search budget candidates come from a seeded IVF index: same seed, same
    pools; and, on clustered vectors as embeddings are, mostly the exact nearest ones."""
    import transplant.maths.omp as omp

    g = torch.Generator().manual_seed(11)
    centers = 3 * torch.randn(40, 24, generator=g)
    atoms = centers[torch.randint(40, (3000,), generator=g)] + torch.randn(3000, 24, generator=g)
    targets = centers[torch.randint(40, (400,), generator=g)] + torch.randn(400, 24, generator=g)
    exact = candidate_pools(targets, atoms, 32)
    budget, omp._EXACT_SEARCH_PAIRS = omp._EXACT_SEARCH_PAIRS, 0
    try:
        first, second = candidate_pools(targets, atoms, 32, seed=1), candidate_pools(targets, atoms, 32, seed=1)
    finally:
        omp._EXACT_SEARCH_PAIRS = budget
    assert torch.equal(first, second)
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(first, exact)) / exact.numel()
    assert overlap > 0.8


def test_ridge_keeps_near_duplicate_candidates_from_cancelling() -> None:
    """A pool of near-copies of one direction: plain least squares splits the target into
    huge opposite coefficients on copies (they cancel here, not in the base space); the ridge
    keeps the total weight near the one it needs."""
    g = torch.Generator().manual_seed(13)
    direction = torch.randn(32, generator=g)
    atoms = torch.cat([direction + 0.01 * torch.randn(64, 32, generator=g), torch.randn(200, 32, generator=g)])
    targets = direction + 0.05 * torch.randn(20, 32, generator=g)
    plain = batch_omp(targets, atoms, 16, pool=64)
    ridged = batch_omp(targets, atoms, 16, pool=64, ridge=0.03)
    assert plain.coeffs.abs().sum(dim=1).median() > 5
    assert (ridged.coeffs.abs().sum(dim=1) < 2).all()
    fit = torch.einsum("bk,bkd->bd", ridged.coeffs, atoms[ridged.indices])
    torch.testing.assert_close(ridged.rel_residual, (targets - fit).norm(dim=1) / targets.norm(dim=1), rtol=1e-4, atol=1e-5)


def test_bad_arguments() -> None:
    atoms = dictionary(10, 8, seed=0)
    with pytest.raises(ValueError):
        batch_omp(torch.randn(2, 8), atoms, 11)
    with pytest.raises(ValueError):
        batch_omp(torch.randn(2, 8), atoms, 4, pool=3)
    with pytest.raises(ValueError):
        batch_omp(torch.randn(2, 8), atoms, 4, ridge=0.1)  # ridge needs a pool
    assert batch_omp(torch.randn(0, 8), atoms, 4).indices.shape == (0, 4)


# --- the method, through a Context on tiny trained tokenizers ------------------------------

TEXT = (
    "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. "
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)\n"
    "tokenizers split words into pieces; pieces that two vocabularies share are anchors. "
)


def train_tokenizer(vocab_size: int, text: str) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([text] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def match():
    base = train_tokenizer(300, TEXT)
    new = train_tokenizer(340, TEXT.upper() + TEXT[::2])
    return match_vocabularies(base, new)


def make_context(match, d_base: int = 24, d_donor: int = 16, donor_rows: int | None = None, **options) -> Context:
    g = torch.Generator().manual_seed(0)
    donor_rows = donor_rows or match.num_rows
    options.setdefault("fallback", "none")  # test OMP itself unless a test asks for the fallback
    return Context(
        match=match,
        base_input=torch.randn(len(match.base_vocab), d_base, generator=g),
        base_output=torch.randn(len(match.base_vocab), d_base, generator=g),
        options=OmpOptions(**options),
        donor_input=torch.randn(donor_rows, d_donor, generator=g),
        donor_output=torch.randn(donor_rows, d_donor, generator=g),
    )


def test_method_shapes_determinism_and_transfer(match) -> None:
    assert len(match.missing) > 0 and len(match.anchors[0]) > 20
    ctx = make_context(match, k=8)
    rows = Omp().init_rows(ctx, "input", match.missing)
    assert rows.shape == (len(match.missing), 24) and torch.isfinite(rows).all()
    assert torch.equal(rows, Omp().init_rows(make_context(match, k=8), "input", match.missing))
    assert not torch.equal(rows, Omp().init_rows(ctx, "output", match.missing))
    # A missing token whose donor row *is* a (dominant) anchor's row gets that anchor's base row
    # (exactly without ridge; the ridge shrinks the coefficient below 1).
    new_ids, base_ids = match.anchors
    ctx = make_context(match, k=8, ridge=0.0)
    ctx.donor_input[new_ids[3]] *= 100
    ctx.donor_input[match.missing[0]] = ctx.donor_input[new_ids[3]]
    rows = Omp().init_rows(ctx, "input", match.missing)
    torch.testing.assert_close(rows[0], ctx.base_input[base_ids[3]], rtol=1e-3, atol=1e-3)


def test_center_adds_base_mean_back(match) -> None:
    ctx = make_context(match, k=1, center=True)
    new_ids, base_ids = match.anchors
    donor_mean = ctx.donor_input[new_ids].mean(dim=0)
    ctx.donor_input[match.missing[0]] = donor_mean
    rows = Omp().init_rows(ctx, "input", match.missing[:1])
    torch.testing.assert_close(rows[0], ctx.base_input[base_ids].mean(dim=0), rtol=1e-4, atol=1e-4)


def test_tokens_beyond_donor_and_bad_fits_fall_back_to_subword(match) -> None:
    from transplant.methods.baselines import subword_rows

    donor_rows = int(match.missing[len(match.missing) // 2])
    ctx = make_context(match, donor_rows=donor_rows, k=4)
    rows = Omp().init_rows(ctx, "input", match.missing)
    beyond = match.missing >= donor_rows
    torch.testing.assert_close(rows[beyond], subword_rows(ctx, "input", match.missing[beyond]))
    everything = make_context(match, donor_rows=donor_rows, k=4, fallback="subword", fallback_threshold=0.0)
    torch.testing.assert_close(Omp().init_rows(everything, "input", match.missing), subword_rows(ctx, "input", match.missing))


def test_user_errors(match) -> None:
    anchors = len(match.anchors[0])
    with pytest.raises(UserError, match="between 1 and"):
        Omp().init_rows(make_context(match, k=anchors + 1), "input", match.missing)
    for pool in (4, -1):
        with pytest.raises(UserError, match="pool"):
            Omp().init_rows(make_context(match, k=8, pool=pool), "input", match.missing)
    for bad in ({"ridge": -1.0}, {"ridge": 0.1, "pool": 0}):
        with pytest.raises(UserError, match="ridge"):
            Omp().init_rows(make_context(match, k=8, **bad), "input", match.missing)
    no_anchors = dataclasses.replace(match, copy_new=match.copy_new[:0], copy_base=match.copy_base[:0])
    with pytest.raises(UserError, match="share no tokens"):
        Omp().init_rows(make_context(no_anchors), "input", match.missing)


class RecordingStages(Stages):
    """Stages that keep every progress callback's advances, by label."""

    def __init__(self) -> None:
        super().__init__()
        self.advances: dict[str, tuple[int, list[int]]] = {}

    def progress(self, total: int, label: str):
        steps: list[int] = []
        self.advances[label] = (total, steps)
        return steps.append


def test_transplant_reports_omp_progress_up_to_every_row(corpus_file: Path, tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=False)
    donor = tiny_llama(bpe_tokenizer(corpus_file, vocab_size=420), tmp_path / "donor", tied=False, hidden=48)
    stages = RecordingStages()
    config = TransplantConfig(base=str(base), tokenizer=str(donor), out=tmp_path / "out", method="omp",
                              options={"k": "8", "batch_size": "16"})
    result = transplant(config, stages)
    assert set(stages.advances) == {"omp input rows", "omp output rows"}
    for total, steps in stages.advances.values():
        assert total == result.counts["initialized"] > 16  # the donor has a row for every new token
        assert len(steps) > 1 and min(steps) > 0 and sum(steps) == total
