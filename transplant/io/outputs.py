"""Outputs checked before the work that fills them.

Every output is written at the end (atomically, see :mod:`transplant.io.atomic`), so a
place that cannot take it would fail only after all the work, with a traceback. These
checks run first and say what is wrong in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from transplant.errors import UserError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the writer creates the ones between)."""
    path = path.absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def _writable_directory(directory: Path, target: Path) -> None:
    if not directory.is_dir():
        raise UserError(f"cannot write {target}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {target}: {directory} is not writable")


def check_output_dir(target: Path) -> None:
    """An output directory, written in place or next to itself and renamed (atomically): if
    it exists it must be a directory this process can write into, and so must the nearest
    existing one of its parents (the writer creates the missing ones)."""
    target = Path(target)
    if target.exists():
        _writable_directory(target, target)
    _writable_directory(_nearest_existing(target.parent), target)


def check_output_file(target: Path) -> None:
    """An output file (``--json``): its directory must exist and take it, and the file
    itself must not be a directory."""
    target = Path(target)
    if not target.parent.exists():
        raise UserError(f"cannot write {target}: no such directory {target.parent}")
    _writable_directory(target.parent, target)
    if target.is_dir():
        raise UserError(f"cannot write {target}: it is a directory")
