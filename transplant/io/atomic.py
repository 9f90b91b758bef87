"""Write a file or directory so that readers see the old version or the new one, never half.

Every output of the tool (exported checkpoints, converted models, downloaded GGUFs, cached
vectors) is written to a temporary sibling and renamed into place at the end. One helper,
so that the cleanup rules are the same everywhere: the temporary is removed on any failure,
and an existing target that was moved aside to be replaced is put back.

Before any of that, :func:`check_output` decides whether a target may be written at all: an
existing one is replaced only when it carries the tool's own record (``--force`` must not
delete a directory of the user's), and never when it is, holds or lies inside something the
same command reads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from transplant.errors import UserError
from transplant.io.outputs import check_output_dir

Existing = Literal["keep", "replace", "refuse"]
TOOL = "transplant"  # the "tool" of every record the tool writes (transplant.json, run.json, hypernetwork config.json)


def is_ours(path: Path, record: str) -> bool:
    """Whether ``path`` is a directory this tool wrote: its ``record`` file says ``"tool": "transplant"``.
    An empty directory counts too: replacing it loses nothing."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / record).read_text()).get("tool") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


def local_paths(refs: Iterable[str | Path | None]) -> list[Path]:
    """The references that name existing local paths (hub ids and packaged names do not)."""
    return [Path(ref) for ref in refs if ref is not None and str(ref) and Path(ref).exists()]


def refuse_overlap(target: Path, paths: Iterable[Path], role: str = "input") -> None:
    """Refuse a ``target`` that is, holds or lies inside one of ``paths`` (the command's ``role``s)."""
    where = Path(target).resolve()
    for path in paths:
        other = Path(path).resolve()
        if where == other:
            relation = "is"
        elif other.is_relative_to(where):
            relation = "holds"
        elif where.is_relative_to(other):
            relation = "lies inside"
        else:
            continue
        raise UserError(f"{target} {relation} the {role} {path}: choose another path")


def check_output(target: Path, record: str, inputs: Iterable[str | Path | None] = (), replace: bool = False,
                 exists: str = "exists; pass --force to replace it") -> None:
    """Refuse, in one line and before any work, to write ``target`` where that could destroy what
    the tool does not own: an input of the same command (``inputs``: references, of which only
    local paths can overlap), or an existing path that does not carry the tool's ``record`` (see
    :func:`is_ours`), or a place this process cannot write (:func:`check_output_dir`). An
    existing target of ours needs ``replace`` (``--force``, or ``--resume``
    for a run directory); ``exists`` says what to pass."""
    refuse_overlap(target, local_paths(inputs))
    target = Path(target)
    check_output_dir(target)
    if not target.exists() and not target.is_symlink():
        return
    if not replace:
        raise UserError(f"{target} {exists}")
    if not is_ours(target, record):
        raise UserError(f"{target} was not written by transplant (no {record} of its own): it is never replaced; "
                        "move it away or choose another path")


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


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a rename is a change to the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(target: Path, suffix: str) -> None:
    """Remove the temporaries of ``target`` whose writer is gone: a SIGKILL or a power cut
    leaves ``OUT.tmp-<pid>`` (gigabytes for a real model) that nothing else would remove."""
    stale = re.compile(re.escape(target.name) + r"\.tmp-(\d+)" + re.escape(suffix))
    for path in target.parent.iterdir():
        found = stale.fullmatch(path.name)
        if found and not _running(int(found.group(1))):
            _remove(path)


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM (kill, a timeout, a batch scheduler, torchrun stopping its workers) unwind
    the program as Ctrl-C does, exit status 143, instead of ending it on the spot: the
    temporaries of :func:`atomic_path` and a run directory that holds nothing yet are removed
    on the way out. Signal handlers belong to the main thread; elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def _publish(tmp: Path, target: Path, existing: Existing) -> None:
    """Rename ``tmp`` to ``target``, unless a ``target`` that appeared meanwhile wins.

    A directory cannot be renamed onto a non-empty one, so a concurrent writer's result shows
    up either in the check or as the rename's error. (A file would be silently overwritten in
    the instant between the two, which for a cache means equal content.)
    """
    if not target.exists():
        try:
            os.replace(tmp, target)
            return
        except OSError:
            if not target.exists():
                raise
    if existing != "keep":
        raise UserError(f"{target} appeared while it was being written; it was left as it is")


@contextmanager
def atomic_path(target: Path, existing: Existing = "keep", suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; when the block succeeds, rename it to ``target``.

    The block creates the file or directory at the yielded path. What happens to a ``target``
    that exists when the block is done (callers check before starting, so unless they replace
    it on purpose, another process wrote it meanwhile):

    - ``"keep"`` (caches): the other process wrote the same thing; keep theirs, drop ours.
    - ``"replace"`` (``--force``): move it aside, rename ours into place, then delete it; if
      anything fails (the block, or the final rename), it is put back.
    - ``"refuse"`` (an output the user did not ask to replace): a UserError; theirs is kept.

    The temporary is removed whatever happens (and those of writers that are gone, first).
    ``suffix`` is kept at the end of the temporary name (e.g. ``.npy``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}{suffix}")
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    _remove_stale(target, suffix)
    _remove(tmp)
    moved_aside = False
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        fsync_tree(tmp)
        if existing == "replace" and target.exists():
            os.replace(target, old)
            moved_aside = True
        _publish(tmp, target, existing)
        fsync_dir(target.parent)
    except BaseException:
        if moved_aside and not target.exists():
            os.replace(old, target)
        raise
    finally:
        _remove(tmp)  # already renamed on success; ours after a failure or when theirs was kept
    if moved_aside:
        _remove(old)
