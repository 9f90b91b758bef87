"""Trans-tokenization (Remy et al., COLM 2024): new rows from a word-aligned parallel corpus.

The source side of the corpus is in a language the base model knows, the target side in the
language the new tokenizer is for. Both sides are tokenized (base tokenizer on the source,
new tokenizer on the target), the token sequences aligned with eflomal in both directions and
symmetrized (:mod:`transplant.maths.alignment`). Counting the aligned pairs gives a translation
table: p(b|t) = count(t, b) / Σ_b' count(t, b'), pairs seen fewer than ``min_count`` times
dropped as noise, and one extra count for a base token of the same text (word start aside),
which aligners miss for names and loanwords that need no translation. A new token's row is
Σ_b p(b|t)·E[b]: the table is one sparse matrix, so all rows are one sparse·dense product,
and the same table fills the input and the output matrix.

Tokens the alignment never reaches are smoothed from tokens it does reach: the mean table
row of the known tokens that share their longest prefix (at least ``MIN_SHARED``
characters), else of those that contain them; copied tokens count as known, with all their
weight on the base token they copy. Digits and special tokens are not aligned at all: they
are spelled out exactly by the base tokenizer (``subword``), as are tokens left over.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, get_args

import numpy as np
import scipy.sparse as sp
import torch
from transformers import PreTrainedTokenizerBase

from transplant.maths.alignment import MAX_LENGTH, Links, Symmetrization, eflomal_links, symmetrize
from transplant.io.atomic import atomic_path
from transplant.io.cache import cache_dir
from transplant.errors import UserError
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import subword_rows
from transplant.methods.registry import register
from transplant.inputs.parallel import ParallelCorpus, check_parallel, read_parallel
from transplant.progress import Advance
from transplant.vocab.matching import VocabMatch

MIN_SHARED = 3  # characters a smoothing donor must share with the token (shorter says nothing)
_BATCH = 10_000  # sentences per encode_batch call (each call runs on all cores)


@dataclass(frozen=True)
class TransTokOptions:
    parallel: str | None = None  # TSV: source<TAB>target per line
    parallel_src: str | None = None  # or two line-aligned files
    parallel_tgt: str | None = None
    symmetrize: Symmetrization = "grow-diag-final"
    min_count: int = 2
    null_prior: float = 0.2  # eflomal's; lower aligns more tokens to something
    max_tokens: int = 128  # longer pairs are left out: HMM alignment costs length² per pair

    def __post_init__(self) -> None:
        """Reads the corpus once (a cheap pass) so damage shows before any model is loaded."""
        two_files = self.parallel_src is not None or self.parallel_tgt is not None
        if (self.parallel is None) == (not two_files):
            raise UserError("transtok needs a parallel corpus: --parallel FILE.tsv, or --parallel-src A "
                            "--parallel-tgt B (not both)")
        if two_files and (self.parallel_src is None or self.parallel_tgt is None):
            raise UserError("transtok: --parallel-src and --parallel-tgt go together")
        if self.symmetrize not in get_args(Symmetrization):
            raise UserError(f"transtok: --symmetrize must be one of {', '.join(get_args(Symmetrization))}, "
                            f"not {self.symmetrize!r}")
        if self.min_count < 1:
            raise UserError(f"transtok: --min-count must be at least 1, not {self.min_count}")
        if not 1 <= self.max_tokens <= MAX_LENGTH:
            raise UserError(f"transtok: --max-tokens must be between 1 and {MAX_LENGTH}, not {self.max_tokens}")
        if not 0 < self.null_prior < 1:
            raise UserError(f"transtok: --null-prior must be between 0 and 1, not {self.null_prior}")
        if check_parallel(self.parallel, self.parallel_src, self.parallel_tgt) == 0:
            raise UserError(f"{self.parallel or self.parallel_src}: no pair has text on both sides")

    def corpus(self) -> ParallelCorpus:
        return read_parallel(self.parallel, self.parallel_src, self.parallel_tgt)


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], advance: Advance) -> list[np.ndarray]:
    """Token ids of each text without special tokens, batch-encoded by the Rust tokenizer."""
    ids: list[np.ndarray] = []
    for start in range(0, len(texts), _BATCH):
        batch = tokenizer.backend_tokenizer.encode_batch(list(texts[start : start + _BATCH]), add_special_tokens=False)
        ids.extend(np.array(e.ids, dtype=np.int64) for e in batch)
        advance(len(batch))
    return ids


def cached_links(source: Sequence[np.ndarray], target: Sequence[np.ndarray], null_prior: float
                 ) -> tuple[Links, Links]:
    """eflomal's forward and reverse links, cached by the token ids they align: eflomal takes
    no seed, so only a cache makes a second run on the same corpus give the same rows (and
    changing ``--symmetrize`` or ``--min-count`` does not align again)."""
    digest = hashlib.sha256(f"eflomal-2 model=3 samplers=3 null_prior={null_prior}".encode())
    for side in (source, target):
        digest.update(np.array([len(s) for s in side], dtype=np.int64).tobytes())
        digest.update(np.concatenate(side).astype(np.int64).tobytes())
    path = cache_dir() / "alignments" / f"{digest.hexdigest()[:24]}.npz"
    if not path.is_file():
        forward, reverse = eflomal_links(source, target, null_prior)
        with atomic_path(path, existing="keep") as tmp, tmp.open("wb") as f:
            np.savez(f, **{f"{name}_{part}": getattr(links, part)
                           for name, links in (("fwd", forward), ("rev", reverse)) for part in ("pair", "source", "target")})
    with np.load(path) as saved:
        return tuple(Links(*(saved[f"{name}_{part}"] for part in ("pair", "source", "target")))
                     for name in ("fwd", "rev"))  # type: ignore[return-value]


def count_pairs(links: Links, source: Sequence[np.ndarray], target: Sequence[np.ndarray], shape: tuple[int, int]
                ) -> sp.csr_matrix:
    """(new vocabulary × base vocabulary) counts of aligned token pairs."""
    source_start = np.concatenate([[0], np.cumsum([len(s) for s in source])[:-1]])
    target_start = np.concatenate([[0], np.cumsum([len(t) for t in target])[:-1]])
    b = np.concatenate(source)[source_start[links.pair] + links.source]
    t = np.concatenate(target)[target_start[links.pair] + links.target]
    return sp.csr_matrix((np.ones(len(t), dtype=np.float64), (t, b)), shape=shape)  # duplicates add up


def translation_table(counts: sp.csr_matrix, exact: sp.csr_matrix, min_count: int) -> sp.csr_matrix:
    """p(b|t): counts under ``min_count`` dropped, the exact-match counts added, rows normalized
    (rows with nothing left stay zero)."""
    kept = counts.copy()
    kept.data[kept.data < min_count] = 0
    kept.eliminate_zeros()
    kept = kept + exact
    totals = np.asarray(kept.sum(axis=1)).ravel()
    return (sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)) @ kept).tocsr()


def _text(match: VocabMatch, new_id: int) -> str:
    return match.new_vocab.surfaces[new_id].decode("utf-8", errors="replace")


def exact_matches(match: VocabMatch, ids: Sequence[int]) -> sp.csr_matrix:
    """One count from each of ``ids`` to every base token of the same text, word start aside."""
    base = defaultdict(list)
    for b, surface in enumerate(match.base_vocab.surfaces):
        if surface.strip(b" ") and not match.base_vocab.special[b]:
            base[surface.removeprefix(b" ")].append(b)
    pairs = [(t, b) for t in ids for b in base.get(match.new_vocab.surfaces[t].removeprefix(b" "), ())]
    t, b = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    return sp.csr_matrix((np.ones(len(t)), (t, b)), shape=(len(match.new_vocab), len(match.base_vocab)))


def is_exact(match: VocabMatch, new_id: int) -> bool:
    """Special tokens and numbers: spelled out exactly, never aligned."""
    return match.new_vocab.special[new_id] or _text(match, new_id).strip().isdecimal()


def donors(texts: dict[int, str], known: dict[int, str]) -> dict[int, list[int]]:
    """For each token of ``texts`` (id -> surface), the ``known`` tokens it is smoothed from:
    those sharing its longest prefix of at least MIN_SHARED characters (a word start must
    match too: surfaces keep their leading space), else those that contain its text. Tokens
    with neither are left out."""
    def prefixes(text: str) -> range:  # prefix lengths worth a look, a word-start space not counted
        return range(text.startswith(" ") + MIN_SHARED, len(text) + 1)

    by_prefix = defaultdict(list)
    for i, text in known.items():
        for end in prefixes(text):
            by_prefix[text[:end]].append(i)
    found = {}
    for i, text in texts.items():
        longest = next((text[:end] for end in reversed(prefixes(text)) if text[:end] in by_prefix), None)
        if longest is not None:
            found[i] = by_prefix[longest]
    wanted = {text.strip(): i for i, text in texts.items() if i not in found and len(text.strip()) >= MIN_SHARED}
    by_part = defaultdict(list)
    for i, text in known.items():  # every piece of a known word that is a wanted text
        word = text.strip()
        pieces = {word[a:b] for a in range(len(word)) for b in range(a + MIN_SHARED, len(word) + 1)}
        for piece in pieces & wanted.keys():
            by_part[piece].append(i)
    found.update({i: by_part[text.strip()] for i, text in texts.items() if i not in found and text.strip() in by_part})
    return found


@dataclass
class Plan:
    """p(b|t) for the missing tokens (one sparse matrix) and which of them fall back to subword."""

    table: torch.Tensor  # sparse (len(missing), base vocabulary)
    fallback: torch.Tensor  # bool (len(missing),)
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _tokenized(ctx: Context, corpus: ParallelCorpus) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Both sides tokenized; pairs with a side empty or over ``max_tokens`` left out. The
    cap matters: in the man-page corpus the 7% of pairs over 128 tokens are 83% of the
    alignment's work (an HMM pass costs source × target length per pair)."""
    advance = ctx.progress(2 * len(corpus), "tokenizing the parallel corpus")
    source = encode(ctx.match.base_tokenizer, corpus.source, advance)
    target = encode(ctx.match.new_tokenizer, corpus.target, advance)
    longest = ctx.options.max_tokens
    keep = [0 < len(s) <= longest and 0 < len(t) <= longest for s, t in zip(source, target)]
    if not any(keep):
        raise UserError(f"transtok: no pair of the parallel corpus has 1 to {longest} tokens (--max-tokens) "
                        "on both sides")
    return [s for s, k in zip(source, keep) if k], [t for t, k in zip(target, keep) if k]


def aligned_table(match: VocabMatch, links: Links, source: Sequence[np.ndarray], target: Sequence[np.ndarray],
                  aligned_ids: Sequence[int], min_count: int) -> sp.csr_matrix:
    """(new × base) p(b|t): rows of ``aligned_ids`` from the alignment (and exact matches),
    rows of copied tokens all on the base token they copy, every other row empty."""
    shape = (len(match.new_vocab), len(match.base_vocab))
    table = translation_table(count_pairs(links, source, target, shape), exact_matches(match, aligned_ids), min_count)
    keep = np.zeros(shape[0])
    keep[aligned_ids] = 1.0
    copies = sp.csr_matrix((np.ones(len(match.copy_new)), (match.copy_new.numpy(), match.copy_base.numpy())),
                           shape=shape)
    return (sp.diags(keep) @ table + copies).tocsr()


def smoothed(match: VocabMatch, table: sp.csr_matrix, aligned_ids: Sequence[int]) -> tuple[sp.csr_matrix, int]:
    """The table with the empty rows of ``aligned_ids`` filled from their :func:`donors`' rows
    (one sparse product), and how many were filled."""
    reached = table.getnnz(axis=1) > 0
    unreached = {i: _text(match, i) for i in aligned_ids if not reached[i]}
    known = {i: _text(match, i) for i in np.flatnonzero(reached).tolist() if not match.new_vocab.special[i]}
    found = donors(unreached, known)
    rows = [i for i, ds in found.items() for _ in ds]
    cols = [d for ds in found.values() for d in ds]
    weights = [1.0 / len(ds) for ds in found.values() for _ in ds]
    mean_of_donors = sp.csr_matrix((weights, (rows, cols)), shape=(table.shape[0], table.shape[0]))
    return (table + mean_of_donors @ table).tocsr(), len(found)


def build_plan(ctx: Context, missing: torch.Tensor) -> Plan:
    """Tokenize, align, symmetrize, count, smooth: the table of every missing token."""
    options: TransTokOptions = ctx.options
    match = ctx.match
    timings, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name], clock = round(time.perf_counter() - clock, 3), time.perf_counter()

    corpus = options.corpus()
    source, target = _tokenized(ctx, corpus)
    lap("tokenize")
    forward, reverse = cached_links(source, target, options.null_prior)
    lap("align")
    links = symmetrize(forward, reverse, len(source), options.symmetrize)
    lap("symmetrize")
    ids = missing.tolist()
    exact = [is_exact(match, i) for i in ids]
    aligned_ids = [i for i, e in zip(ids, exact) if not e]
    table = aligned_table(match, links, source, target, aligned_ids, options.min_count)
    aligned = int((table[aligned_ids].getnnz(axis=1) > 0).sum())
    lap("count")
    table, filled = smoothed(match, table, aligned_ids)
    lap("smooth")

    table = table[ids].tocoo()
    fallback = table.getnnz(axis=1) == 0
    counts = {"pairs": len(corpus), "pairs_aligned": len(source), "links": len(links), "aligned": aligned,
              "smoothed": filled, "exact": sum(exact), "subword": int(fallback.sum()) - sum(exact)}
    indices = torch.from_numpy(np.stack([table.row, table.col]).astype(np.int64))
    sparse = torch.sparse_coo_tensor(indices, torch.from_numpy(table.data).float(), table.shape, check_invariants=True)
    return Plan(sparse, torch.from_numpy(fallback), counts, timings)


@register
class TransTok(MethodBase):
    name: ClassVar[str] = "transtok"
    description: ClassVar[str] = "trans-tokenization: rows from eflomal word alignments of a parallel corpus"
    Options: ClassVar[type] = TransTokOptions

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        plan: Plan = ctx.plan(self.name, missing, lambda: build_plan(ctx, missing))
        ctx.report.update(counts=plan.counts, seconds=plan.timings)
        base = ctx.base(which).to(ctx.device, torch.float32)
        rows = torch.sparse.mm(plan.table.to(ctx.device), base)
        fallback = plan.fallback.to(ctx.device)
        if fallback.any():
            rows[fallback] = subword_rows(ctx, which, missing[plan.fallback])
        return rows
