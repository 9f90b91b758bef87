"""A new vocabulary's embedding matrices, built in the base dtype a part at a time.

Copied rows are the base's, bit for bit; a method's rows are cast to the base dtype and
written into the new matrix as they come. A method that may be called on parts of the
missing ids (``chunkable``, see :mod:`transplant.methods.base`) gets them about
:data:`CHUNK_BYTES` of float32 rows at a time, both matrices of a part before the next part,
so its float32 working set stays small whatever the vocabulary: at once, an 8B model's
~230k new rows of width 4,096 would be 3.8 GB per matrix beside the bfloat16 matrices.
Any other method gets every missing id in one call per matrix, as before.
"""

from __future__ import annotations

import torch

from transplant.methods.base import Context, Method, Which
from transplant.vocab.matching import VocabMatch

CHUNK_BYTES = 1 << 28  # float32 rows a chunkable method makes per call (256 MB)


def chunk_rows(width: int, budget: int = CHUNK_BYTES) -> int:
    """Rows of ``width`` float32 values that fit ``budget`` bytes (at least one)."""
    return max(1, budget // (4 * width))


def _copied(match: VocabMatch, base: torch.Tensor) -> torch.Tensor:
    """The new matrix with the copied rows in place: zeros elsewhere (padding rows, and byte
    tokens the tokenizer never writes, ``match.unreachable``, stay zero)."""
    rows = torch.zeros(match.num_rows, base.shape[1], dtype=base.dtype)
    rows[match.copy_new] = base[match.copy_base]
    return rows


def build_matrices(method: Method, ctx: Context, match: VocabMatch, bases: dict[Which, torch.Tensor],
                   chunk: int | None = None) -> dict[Which, torch.Tensor]:
    """The new matrix for each base matrix in ``bases`` ("input", and "output" when untied),
    in its dtype: copied rows, then the method's rows for ``match.missing``. ``chunk`` sets
    the rows per call of a chunkable method (default: :func:`chunk_rows` of the width)."""
    new = {which: _copied(match, base) for which, base in bases.items()}
    missing = match.missing
    size = len(missing)
    if method.chunkable:
        ctx.planned = missing
        size = chunk or chunk_rows(next(iter(bases.values())).shape[1])
    for part in missing.split(max(size, 1)):
        for which, matrix in new.items():
            rows = method.init_rows(ctx, which, part)
            if rows.shape != (len(part), matrix.shape[1]) or not torch.isfinite(rows).all():
                raise RuntimeError(f"method {method.name!r} returned bad rows {tuple(rows.shape)} for {which}")
            matrix[part] = rows.to("cpu", matrix.dtype)
    return new
