"""Word alignment of token-id sequences with eflomal, and symmetrization.

eflomal (a Bayesian HMM + fertility aligner, sampled) aligns a whole corpus in one run and
writes both directions: *forward* links give every target token at most one source token,
*reverse* links every source token at most one target token. Either direction alone is
lopsided (one-to-many only one way); symmetrization combines them:

- ``intersect``: links both directions agree on (precise, sparse);
- ``grow-diag-final`` (Koehn et al. 2003): start from the intersection, grow it with
  union links that neighbour an existing link (diagonals included) and align a token that
  is not yet aligned, then add the remaining union links of each direction that align a
  still-unaligned token. Denser; the usual choice for lexical tables.

Token ids are given to eflomal directly (its text format is integer ids), compacted to the
ids that occur so its tables stay small whatever the vocabulary size. eflomal seeds its
sampler from ``/dev/urandom`` and takes no seed, so the same corpus may align slightly
differently run to run; callers that need reproducible results cache the links.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import eflomal.cython as eflomal
import numpy as np

Symmetrization = Literal["grow-diag-final", "intersect"]
Link = tuple[int, int]  # (source position, target position) within one sentence pair
MAX_LENGTH = 1023  # eflomal writes a sentence of 1024 tokens or more as an empty one
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class Links:
    """The links of a corpus as three flat arrays: pair index, source and target position."""

    pair: np.ndarray
    source: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.pair)

    def per_pair(self, pairs: int) -> list[set[Link]]:
        """The links of each pair as a set of (source, target) positions."""
        out: list[set[Link]] = [set() for _ in range(pairs)]
        for p, i, j in zip(self.pair.tolist(), self.source.tolist(), self.target.tolist()):
            out[p].add((i, j))
        return out

    @classmethod
    def from_sets(cls, sets: Sequence[set[Link]]) -> Links:
        rows = sorted((p, i, j) for p, links in enumerate(sets) for i, j in links)
        array = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return cls(array[:, 0], array[:, 1], array[:, 2])


def _compact(sentences: Sequence[np.ndarray]) -> tuple[tuple[np.ndarray, ...], int]:
    """The sentences with ids renumbered 0..n-1 over the ids that occur, and n."""
    lengths = np.array([len(s) for s in sentences])
    used, flat = np.unique(np.concatenate(sentences), return_inverse=True)
    return tuple(np.split(flat.astype(np.uint32), np.cumsum(lengths)[:-1])), len(used)


def read_links(path: Path) -> Links:
    """eflomal's ``i-j i-j …`` lines (one per sentence pair) as :class:`Links`."""
    lines = path.read_text().split("\n")[:-1]
    numbers = np.array(" ".join(lines).replace("-", " ").split(), dtype=np.int64).reshape(-1, 2)
    pair = np.repeat(np.arange(len(lines)), [line.count("-") for line in lines])
    return Links(pair, numbers[:, 0], numbers[:, 1])


def eflomal_links(source: Sequence[np.ndarray], target: Sequence[np.ndarray], null_prior: float = 0.2,
                  n_samplers: int = 3) -> tuple[Links, Links]:
    """Forward and reverse links of every pair (both sides non-empty, at most MAX_LENGTH ids).

    ``null_prior`` is eflomal's prior weight of aligning a token to nothing (its default 0.2).
    Lower it when every token should have a counterpart: a word split into two target
    tokens is otherwise often explained as one aligned token and one unaligned."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} source sentences but {len(target)} target sentences")
    if any(not 0 < len(s) <= MAX_LENGTH for s in (*source, *target)):
        raise ValueError(f"eflomal needs sentences of 1 to {MAX_LENGTH} tokens")
    with tempfile.TemporaryDirectory(prefix="eflomal-") as tmp:
        paths = {name: Path(tmp) / name for name in ("source", "target", "forward", "reverse")}
        for name, sentences in (("source", source), ("target", target)):
            compact, vocab_size = _compact(sentences)
            with paths[name].open("wb") as f:
                eflomal.write_text(f, compact, vocab_size)
        eflomal.align(str(paths["source"]), str(paths["target"]), links_filename_fwd=str(paths["forward"]),
                      links_filename_rev=str(paths["reverse"]), model=3, n_samplers=n_samplers,
                      null_prior=null_prior, quiet=True)
        return read_links(paths["forward"]), read_links(paths["reverse"])


def intersect(forward: set[Link], reverse: set[Link]) -> set[Link]:
    """Links both directions agree on."""
    return forward & reverse


def grow_diag_final(forward: set[Link], reverse: set[Link]) -> set[Link]:
    """Koehn's grow-diag-final of one sentence pair's two directional alignments."""
    union = forward | reverse
    links = forward & reverse
    source_done = {i for i, _ in links}
    target_done = {j for _, j in links}

    def adds(link: Link) -> bool:
        """A union link not taken yet that aligns a token nothing aligns yet."""
        return link in union and link not in links and (link[0] not in source_done or link[1] not in target_done)

    def add(link: Link) -> None:
        links.add(link)
        source_done.add(link[0])
        target_done.add(link[1])

    frontier = sorted(links)
    while frontier:  # grow-diag: a link once refused stays refused, so only new links' neighbours need a look
        grown = []
        for i, j in frontier:
            for di, dj in _NEIGHBOURS:
                if adds(neighbour := (i + di, j + dj)):
                    add(neighbour)
                    grown.append(neighbour)
        frontier = grown
    for link in (*sorted(forward), *sorted(reverse)):  # final
        if adds(link):
            add(link)
    return links


def symmetrize(forward: Links, reverse: Links, pairs: int, how: Symmetrization) -> Links:
    """One symmetrized alignment of a corpus of ``pairs`` sentence pairs."""
    if how == "intersect":  # whole corpus at once: a link is one integer key
        width = 1 + max((int(a.max()) for links in (forward, reverse) if len(links)
                         for a in (links.source, links.target)), default=0)
        keys = [(links.pair * width + links.source) * width + links.target for links in (forward, reverse)]
        pair, rest = np.divmod(np.intersect1d(*keys), width * width)
        return Links(pair, *np.divmod(rest, width))
    return Links.from_sets([grow_diag_final(f, r) for f, r in zip(forward.per_pair(pairs), reverse.per_pair(pairs))])
