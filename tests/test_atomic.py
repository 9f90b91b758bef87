"""atomic_path: readers see the old target or the new one, never half, and never lose the old one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from transplant.io.atomic import atomic_path
from transplant.errors import UserError


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f"{name}.tmp-") or p.name.startswith(f"{name}.old-"))


def _fail_rename_into(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Make the final temporary -> target rename fail (a full disk, a lost NFS lock...)."""
    real = os.replace

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        if Path(dst) == target and ".tmp-" in Path(src).name:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _write_dir(path: Path, text: str) -> None:
    path.mkdir()
    (path / "weights").write_text(text)


def test_failed_final_rename_restores_the_replaced_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    _write_dir(target, "old")
    _fail_rename_into(monkeypatch, target)
    with pytest.raises(OSError, match="No space"):
        with atomic_path(target, existing="replace") as tmp:
            _write_dir(tmp, "new")
    assert (target / "weights").read_text() == "old"
    assert _leftovers(tmp_path, "out") == []


def test_failure_inside_the_block_keeps_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write_dir(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, existing="replace") as tmp:
            _write_dir(tmp, "half")
            raise KeyboardInterrupt
    assert (target / "weights").read_text() == "old"
    assert _leftovers(tmp_path, "out") == []


def test_success_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write_dir(target, "old")
    with atomic_path(target, existing="replace") as tmp:
        _write_dir(tmp, "new")
    assert (target / "weights").read_text() == "new"
    assert _leftovers(tmp_path, "out") == []


def test_block_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out"):
            pass
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_cache_written_meanwhile_by_another_process_is_kept(tmp_path: Path, kind: str) -> None:
    """Two processes converting the same GGUF: the second to finish keeps the first's result."""
    target = tmp_path / "cache"
    with atomic_path(target) as tmp:
        if kind == "dir":
            _write_dir(tmp, "mine")
            _write_dir(target, "theirs")
        else:
            tmp.write_text("mine")
            target.write_text("theirs")
    assert (target / "weights" if kind == "dir" else target).read_text() == "theirs"
    assert _leftovers(tmp_path, "cache") == []


def test_output_created_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(UserError, match="appeared"):
        with atomic_path(target, existing="refuse") as tmp:
            _write_dir(tmp, "mine")
            _write_dir(target, "theirs")
    assert (target / "weights").read_text() == "theirs"
    assert _leftovers(tmp_path, "out") == []
