"""What ties a trained hypernetwork to its base model, shared by every hypernetwork here.

A hypernetwork predicts rows *in one base model's embedding space*: applied to another
base it writes plausible-looking nonsense, but applied to a fine-tuned variant of its base
(an instruct or domain fine-tune, which barely moves the embeddings) it works as on the
base itself (ZeTT, Minixhofer et al. 2024). So its directory records the base's hidden size,
whether it is tied, a hash of its vocabulary and embedding matrices, and a seeded sample of
its embedding rows (``base.safetensors``, :class:`BaseSample`). A base is accepted when it is
the same (the hash) or a variant: the same vocabulary and hidden size, and sampled rows within
``VARIANT_DISTANCE`` of the recorded ones in relative Frobenius distance. Anything else is
refused with one line. Directories written before the sample existed accept their exact base
only.

Both kinds store a directory the same way: ``config.json`` (the tool, a format tag, the
network's config, whatever the trainer measured), ``model.safetensors`` and
``base.safetensors``; the tool's name in ``config.json`` is what lets ``--force`` replace it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from transplant.errors import UserError
from transplant.io.atomic import TOOL


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SAMPLE_FILE = "base.safetensors"
SAMPLE_ROWS = 1024
# Relative Frobenius distance of the sampled rows up to which a base is a variant of the one a
# hypernetwork was trained for. Measured on SmolLM2-135M (benchmarks/variant_distance.py,
# docs/results.md): variants at or below 0.111 (every weight moved by 1 % of its tensor's std
# 0.010, 20 steps of a full fine-tune at lr 1e-4 0.007, the model re-quantized to Q4_0 0.111),
# models of the same shape that are not variants at or above 1.01 (the rows shuffled 1.045, a
# fresh initialization 1.011). 0.3 is near the middle of the gap on a log scale (0.33).
VARIANT_DISTANCE = 0.3
STATISTIC = f"relative Frobenius distance of {SAMPLE_ROWS} sampled embedding rows"
C = TypeVar("C")


@dataclass(frozen=True)
class BaseSample:
    """What a hypernetwork keeps of its base to tell a variant of it from another model: a hash
    of the vocabulary and the base's rows (float32) at ``ids``, a seeded sample of its
    vocabulary (input rows, and output rows when untied)."""

    vocab: str
    ids: torch.Tensor
    input: torch.Tensor
    output: torch.Tensor | None

    @classmethod
    def of(cls, tokens: Sequence[str | None], base_input: torch.Tensor, base_output: torch.Tensor | None,
           rows: int = SAMPLE_ROWS, seed: int = 0) -> BaseSample:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randperm(base_input.shape[0], generator=generator)[:rows].sort().values
        return cls(vocab_hash(tokens), ids, *(None if m is None else m.detach()[ids].to("cpu", torch.float32).clone()
                                              for m in (base_input, base_output)))

    def save(self, out: Path) -> None:
        tensors = {"ids": self.ids, "input": self.input} | ({} if self.output is None else {"output": self.output})
        save_file({k: v.contiguous() for k, v in tensors.items()}, out / SAMPLE_FILE, metadata={"vocab": self.vocab})

    @classmethod
    def read(cls, directory: Path) -> BaseSample | None:
        """The sample in ``directory``, None for a directory written before samples were kept."""
        path = Path(directory) / SAMPLE_FILE
        if not path.is_file():
            return None
        try:
            with safe_open(path, "pt") as f:
                vocab = (f.metadata() or {})["vocab"]
            tensors = load_file(path)
            return cls(vocab, tensors["ids"], tensors["input"], tensors.get("output"))
        except (OSError, SafetensorError, KeyError) as e:
            raise UserError(f"{path} is not a readable base sample ({type(e).__name__}: {e})") from e

    def distance(self, base_input: torch.Tensor, base_output: torch.Tensor | None) -> float:
        """‖rows of this base − recorded rows‖_F / ‖recorded rows‖_F over the sampled ids, both
        matrices together: 0 for the same base, ~1.4 for independent rows of equal norm."""
        ids = self.ids.to(base_input.device)
        now = [base_input[ids].float().cpu()] + ([] if base_output is None else [base_output[ids].float().cpu()])
        then = [self.input] + ([] if self.output is None else [self.output])
        moved = sum(float((a - b).square().sum()) for a, b in zip(now, then, strict=True))
        return (moved / sum(float(b.square().sum()) for b in then)) ** 0.5


def save_directory(model: torch.nn.Module, config: Any, fmt: str, out: Path, base: BaseSample,
                   extra: dict | None = None) -> None:
    """Write ``out/model.safetensors``, ``out/base.safetensors`` (``base``) and ``out/config.json``
    (``fmt``, ``config``, ``extra``)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    base.save(out)
    record = {"tool": TOOL, "format": fmt, "config": asdict(config), **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")


def read_directory_config(directory: Path, fmt: str, config_cls: type[C], kind: str) -> C:
    """The config of a ``kind`` hypernetwork directory, refused with one line if it is not one."""
    try:
        record = json.loads((Path(directory) / CONFIG_FILE).read_text())
        if record.get("format") != fmt:
            raise ValueError(record.get("format"))
        return config_cls(**record["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{directory} is not a {kind} hypernetwork directory ({type(e).__name__}: {e})") from e


def vocab_hash(tokens: Sequence[str | None]) -> str:
    """A fingerprint of a vocabulary: its tokens in id order."""
    return hashlib.blake2b(json.dumps(list(tokens), ensure_ascii=False).encode(), digest_size=16).hexdigest()


def base_hash(tokens: Sequence[str | None], base_input: torch.Tensor, base_output: torch.Tensor | None) -> str:
    """A fingerprint of a base model: its vocabulary and its embedding matrices (float32)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(list(tokens), ensure_ascii=False).encode())
    for matrix in (base_input, base_output):
        if matrix is not None:
            digest.update(matrix.detach().to("cpu", torch.float32).contiguous().numpy())
    return digest.hexdigest()


def check_base(directory: Path, hidden_size: int, tied: bool, expected_hash: str, tokens: Sequence[str | None],
               base_input: torch.Tensor, base_output: torch.Tensor | None) -> dict[str, Any]:
    """How this base relates to the one the hypernetwork in ``directory`` was trained for
    (``same`` or ``variant``, with the measured distance, for ``transplant.json``); any other
    base is refused with one line."""
    if base_input.shape[1] != hidden_size:
        raise UserError(f"hypernetwork {directory} was trained for a base of hidden size {hidden_size}, "
                        f"this base has {base_input.shape[1]}")
    if tied != (base_output is None):
        raise UserError(f"hypernetwork {directory} was trained for another base model "
                        f"({'tied' if tied else 'untied'} embeddings, this base's are {'untied' if tied else 'tied'})")
    decision = {"statistic": STATISTIC, "threshold": VARIANT_DISTANCE}
    if base_hash(tokens, base_input, base_output) == expected_hash:
        return {"relation": "same", "distance": 0.0, **decision}
    sample = BaseSample.read(directory)
    if sample is None:
        raise UserError(f"hypernetwork {directory} was trained for another base model (its vocabulary and embedding "
                        "hash differ from this one's; it predates variant checks: retrain it to serve fine-tuned variants)")
    if sample.vocab != vocab_hash(tokens) or int(sample.ids.max()) >= base_input.shape[0]:
        raise UserError(f"hypernetwork {directory} was trained for another base model (the vocabularies differ)")
    distance = sample.distance(base_input, base_output)
    if distance > VARIANT_DISTANCE:
        raise UserError(f"hypernetwork {directory} was trained for another base model: its embedding rows are "
                        f"{distance:.3f} away ({STATISTIC}), a fine-tuned variant is within {VARIANT_DISTANCE}")
    return {"relation": "variant", "distance": round(distance, 6), **decision}
