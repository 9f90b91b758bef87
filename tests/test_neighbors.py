"""The FAISS wrapper against brute-force torch search, and IVF recall against exact."""

import pytest
import torch

from transplant.maths.neighbors import Index


def _brute_force(vectors: torch.Tensor, queries: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    if metric == "ip":
        return (queries @ vectors.T).topk(k, dim=1).indices
    return torch.cdist(queries, vectors).topk(k, dim=1, largest=False).indices


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("normalize", [False, True])
def test_exact_search_matches_brute_force(metric: str, normalize: bool) -> None:
    g = torch.Generator().manual_seed(0)
    vectors, queries = torch.randn(500, 12, generator=g), torch.randn(40, 12, generator=g)
    scores, ids = Index(vectors, metric, normalize=normalize).search(queries, 5)
    if normalize:
        vectors, queries = torch.nn.functional.normalize(vectors, dim=1), torch.nn.functional.normalize(queries, dim=1)
    assert torch.equal(ids, _brute_force(vectors, queries, 5, metric))
    expected = (queries @ vectors.T) if metric == "ip" else torch.cdist(queries, vectors) ** 2
    assert torch.allclose(scores, expected.gather(1, ids), atol=1e-4)


def test_normalize_does_not_modify_inputs_and_gives_cosines() -> None:
    vectors = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    queries = torch.tensor([[0.0, 5.0]])
    scores, ids = Index(vectors.numpy(), "ip", normalize=True).search(queries.numpy(), 2)
    assert ids.tolist() == [[1, 0]]
    assert torch.allclose(scores, torch.tensor([[1.0, 0.8]]))
    assert vectors.tolist() == [[3.0, 4.0], [0.0, 2.0]] and queries.tolist() == [[0.0, 5.0]]


def test_k_is_capped_at_index_size_and_bad_arguments_raise() -> None:
    index = Index(torch.eye(3), "ip")
    assert index.exact and len(index) == 3
    assert index.search(torch.eye(3), 10)[1].shape == (3, 3)
    with pytest.raises(ValueError):
        index.search(torch.eye(3), 0)
    with pytest.raises(ValueError):
        index.search(torch.ones(2, 4), 1)
    with pytest.raises(ValueError):
        Index(torch.eye(3), "cosine")  # type: ignore[arg-type]


def test_approximate_index_recall_and_determinism() -> None:
    """300k vectors take the IVF path; its top-10 must overlap exact search by >= 95%."""
    g = torch.Generator().manual_seed(0)
    vectors, queries = torch.randn(300_000, 16, generator=g), torch.randn(1000, 16, generator=g)
    approx = Index(vectors, "ip", normalize=True)
    assert not approx.exact
    exact_ids = Index(vectors, "ip", normalize=True, exact_limit=len(vectors)).search(queries, 10)[1]
    ids = approx.search(queries, 10)[1]
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact_ids))
    assert hits / exact_ids.numel() >= 0.95
    assert torch.equal(Index(vectors, "ip", normalize=True, seed=0).search(queries, 10)[1], ids)


def test_results_come_back_on_the_requested_device() -> None:
    """FAISS searches on the CPU; callers combine the ids with matrices on ``--device``, so
    the results are moved there (meta stands in for a GPU here)."""
    index = Index(torch.eye(3), "ip")
    scores, ids = index.search(torch.eye(3), 2, device=torch.device("meta"))
    assert scores.device.type == ids.device.type == "meta" and ids.shape == (3, 2)
    assert index.search(torch.eye(3).numpy(), 2)[1].device.type == "cpu"
