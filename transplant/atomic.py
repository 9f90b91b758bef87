"""Write a file or directory so that readers see the old version or the new one, never half.

Every output of the tool (exported checkpoints, converted models, downloaded GGUFs, cached
vectors) is written to a temporary sibling and renamed into place at the end. One helper,
so that the cleanup rules are the same everywhere: the temporary is removed on any failure,
and an existing target that was moved aside to be replaced is put back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file of a directory tree, to disk before it is renamed."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with file.open("rb") as f:
            os.fsync(f.fileno())


@contextmanager
def atomic_path(target: Path, replace: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; when the block succeeds, rename it to ``target``.

    The block creates the file or directory at the yielded path. With ``replace`` an existing
    target is moved aside first and deleted only once the new one is in place; if anything
    fails (the block, or the final rename), the old target is restored and the temporary
    removed. ``suffix`` is kept at the end of the temporary name (e.g. ``.npy``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}{suffix}")
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    _remove(tmp)
    moved_aside = False
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        fsync_tree(tmp)
        if replace and target.exists():
            os.replace(target, old)
            moved_aside = True
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        if moved_aside and not target.exists():
            os.replace(old, target)
        raise
    if moved_aside:
        _remove(old)
