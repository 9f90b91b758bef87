"""WECHSEL (Minixhofer et al., NAACL 2022): new rows from aligned bilingual word vectors.

Word-level fastText is trained on text in each language: the source language (the one the
base model knows, e.g. English) and the target language (the new tokenizer's, e.g.
German). A bilingual dictionary aligns the two spaces by orthogonal Procrustes, fitted on
the pairs whose both words have a vector. Every token, base and new, is then embedded by
its surface: the fastText vector of the text it writes (character n-grams compose a vector
for pieces that are not words), base tokens in the source space rotated into the target
space. A missing token's row mixes the base rows of its k nearest base tokens by cosine
(FAISS), weighted softmax(sim / temperature). Unlike the reference, exact matches keep their
own rows (the pipeline copies them before any method runs).

Word-start and continuation pieces: a surface is embedded without its word-start marker
(``▁Haus`` and ``Haus`` are both the string ``Haus``), as the reference does, so fastText
cannot tell them apart. The base model does: ``Ġthe`` and ``the`` have different rows, and a
row for a continuation piece built from word-start rows predicts a word break that is not
there. So with ``--same-kind`` (the default) a word-start token looks for neighbours only
among word-start base tokens and a continuation piece only among continuation pieces;
``--no-same-kind`` searches all, as the reference does.

Dictionary formats: see :mod:`transplant.inputs.dictionary` (dictd headwords are the target
language; ``--reverse-dictionary`` flips a dictionary written the other way round).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from gensim.models import KeyedVectors

from transplant.inputs.dictionary import Pair, read_dictionary
from transplant.errors import UserError
from transplant.inputs.fasttext import CorpusVectorOptions, check_text, train_vectors
from transplant.methods.base import Context, MethodBase, Which
from transplant.methods.baselines import mix_rows
from transplant.methods.focus import NoVector, check_no_vector, fallback_rows
from transplant.methods.registry import register
from transplant.maths.neighbors import Index
from transplant.maths.procrustes import procrustes

_WORD = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks
WORD_SPLIT_KEY = "regex-words-v1"  # names _WORD in the fastText cache key: change both together


def split_words(lines: list[str]) -> list[list[str]]:
    return [_WORD.findall(line) for line in lines]


@lru_cache(maxsize=4)
def _dictionary(path: str, mtime_ns: int, size: int) -> tuple[Pair, ...]:
    """Parsed once per process (the options are checked more than once: ``compare``)."""
    return tuple(read_dictionary(path))


def dictionary_pairs(path: str, reverse: bool) -> tuple[Pair, ...]:
    stat = Path(path).stat()
    pairs = _dictionary(path, stat.st_mtime_ns, stat.st_size)
    return tuple((t, s) for s, t in pairs) if reverse else pairs


@dataclass(frozen=True)
class WechselOptions(CorpusVectorOptions):
    source_corpus: list[str] = field(default_factory=list)
    dictionary: str | None = None
    reverse_dictionary: bool = False
    ft_epochs: int = 5
    ft_min_count: int = 5
    k: int = 10
    temperature: float = 0.1
    same_kind: bool = True
    no_vector: NoVector = "subword"  # as focus: a random row in a tied model is a random output row

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.corpus or not self.source_corpus or self.dictionary is None:
            raise UserError("wechsel: needs target-language text (--corpus), source-language text (--source-corpus) "
                            "and a bilingual dictionary (--dictionary)")
        check_text(self.source_corpus)
        if not Path(self.dictionary).is_file():
            raise UserError(f"wechsel: dictionary not found: {self.dictionary}")
        dictionary_pairs(self.dictionary, self.reverse_dictionary)  # a broken line fails here, before the model
        if self.k < 1:
            raise UserError(f"wechsel: --k must be at least 1, not {self.k}")
        if self.temperature <= 0:
            raise UserError(f"wechsel: --temperature must be positive, not {self.temperature}")
        check_no_vector("wechsel", self.no_vector)


def _variants(word: str) -> list[str]:
    """The word as written, lowercased and capitalized: dictionaries and text disagree on
    case (German nouns, sentence starts)."""
    return list(dict.fromkeys((word, word.lower(), word.title())))


def alignment(source: KeyedVectors, target: KeyedVectors, pairs: tuple[Pair, ...]) -> tuple[torch.Tensor, int]:
    """The rotation W with source @ W ≈ target, fitted on the dictionary pairs whose both
    words (in some casing) are in the vocabularies; and how many pairs that was."""
    found = sorted({(s, t) for src, tgt in pairs for s in _variants(src) if s in source.key_to_index
                    for t in _variants(tgt) if t in target.key_to_index})
    if not found:
        raise UserError("wechsel: no dictionary pair has both words in the fastText vocabularies "
                        "(wrong --dictionary, or the dictionary's languages swapped: --reverse-dictionary)")
    x = torch.from_numpy(np.stack([source.get_vector(s) for s, _ in found]))
    y = torch.from_numpy(np.stack([target.get_vector(t) for _, t in found]))
    return procrustes(x, y), len(found)


def surface_vectors(vectors: KeyedVectors, surfaces: list[bytes], usable: list[bool]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vectors, has-vector mask, word-start mask) of token surfaces, markers stripped.

    A token has no vector when it is not ``usable`` (special), is not valid UTF-8 (a lone
    byte), is only whitespace, or has no known word or n-gram (a zero vector)."""
    out = np.zeros((len(surfaces), vectors.vector_size), dtype=np.float32)
    word_start = torch.tensor([s[:1].isspace() for s in surfaces])
    for i, (surface, ok) in enumerate(zip(surfaces, usable)):
        try:
            word = surface.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if ok and word:
            out[i] = vectors.get_vector(word)
    vecs = torch.from_numpy(out)
    return vecs, vecs.norm(dim=1) > 0, word_start


def nearest(queries: torch.Tensor, query_start: torch.Tensor, candidates: torch.Tensor, candidate_start: torch.Tensor,
            k: int, same_kind: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) candidate indices and cosine similarities, best first; with ``same_kind``
    word-start queries search word-start candidates and continuations continuations (a
    kind without candidates searches all)."""
    ids = torch.full((len(queries), k), -1, dtype=torch.long)
    sims = torch.full((len(queries), k), float("-inf"))
    kinds = ((query_start, candidate_start), (~query_start, ~candidate_start)) if same_kind else (
        (torch.ones_like(query_start), torch.ones_like(candidate_start)),)
    for query_mask, candidate_mask in kinds:
        if not query_mask.any():
            continue
        pool = candidate_mask.nonzero().squeeze(1) if candidate_mask.any() else torch.arange(len(candidates))
        scores, hits = Index(candidates[pool], "ip", normalize=True, seed=seed).search(queries[query_mask], k, "cpu")
        width = hits.shape[1]
        ids[query_mask, :width] = torch.where(hits >= 0, pool[hits.clamp(min=0)], -1)
        sims[query_mask, :width] = torch.where(hits >= 0, scores, float("-inf"))
    return ids, sims


@dataclass
class Plan:
    ids: torch.Tensor  # (n, k) base ids, -1 = none
    weights: torch.Tensor  # (n, k)
    placed: torch.Tensor  # (n,) tokens that had a vector
    pairs: int  # dictionary pairs the alignment was fitted on


def build_plan(ctx: Context, missing: torch.Tensor) -> Plan:
    options: WechselOptions = ctx.options
    ft = options.fasttext_options(ctx.seed)
    source = train_vectors(options.source_corpus, split_words, WORD_SPLIT_KEY, ft)
    target = train_vectors(options.corpus, split_words, WORD_SPLIT_KEY, ft)
    rotation, pairs = alignment(source, target, dictionary_pairs(options.dictionary, options.reverse_dictionary))

    base, new = ctx.match.base_vocab, ctx.match.new_vocab
    base_vecs, base_has, base_start = surface_vectors(source, base.surfaces, [not s for s in base.special])
    wanted = missing.tolist()
    new_vecs, placed, new_start = surface_vectors(target, [new.surfaces[i] for i in wanted],
                                                  [not new.special[i] for i in wanted])
    candidates = base_has.nonzero().squeeze(1)
    ids, sims = nearest(new_vecs[placed], new_start[placed], base_vecs[candidates] @ rotation,
                        base_start[candidates], options.k, options.same_kind, ctx.seed)
    all_ids = torch.full((len(missing), options.k), -1, dtype=torch.long)
    all_weights = torch.zeros(len(missing), options.k)
    all_ids[placed] = torch.where(ids >= 0, candidates[ids.clamp(min=0)], -1)
    all_weights[placed] = torch.softmax(sims / options.temperature, dim=1).nan_to_num(0.0)
    return Plan(all_ids, all_weights, placed, pairs)


@register
class Wechsel(MethodBase):
    name: ClassVar[str] = "wechsel"
    description: ClassVar[str] = "softmax mix of the k nearest base rows in aligned bilingual fastText spaces"
    Options: ClassVar[type] = WechselOptions

    def init_rows(self, ctx: Context, which: Which, missing: torch.Tensor) -> torch.Tensor:
        plan: Plan = ctx.plan(self.name, missing, lambda: build_plan(ctx, missing))
        ctx.report.update(placed=int(plan.placed.sum()), no_vector=int((~plan.placed).sum()),
                          dictionary_pairs=plan.pairs)
        rows = mix_rows(ctx.base(which), plan.ids.to(ctx.device), plan.weights.to(ctx.device))  # gathers, then casts
        if not plan.placed.all():
            rows[~plan.placed.to(ctx.device)] = fallback_rows(ctx, which, missing[~plan.placed], ctx.options.no_vector)
        return rows
