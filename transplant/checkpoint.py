"""Read embedding matrices from a checkpoint and write the patched checkpoint.

Only the embedding and lm_head tensors are ever held in memory whole; every other tensor is
streamed shard by shard, so a transplant needs about (base embeddings + new embeddings +
one shard) of RAM whatever the model size. Which tensors are the embeddings is asked of the
model class itself (built on the meta device, no weights) rather than guessed from names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from transplant.atomic import atomic_path
from transplant.chat import end_of_turn_ids
from transplant.errors import UserError


# One bool per embedding row, True where a method initialized it. A side file, not a list
# in transplant.json: a 262k vocabulary has ~200k such ids (1 byte a row here, exact, and
# no re-run of the matching, whose rules may change between versions).
INITIALIZED_FILE = "initialized.safetensors"


@dataclass
class Embeddings:
    """The base model's embedding tensors, by checkpoint name."""

    input_name: str
    output_name: str | None
    input: torch.Tensor
    output: torch.Tensor | None

    @property
    def tied(self) -> bool:
        return self.output is None


def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> file holding it, for single-file and sharded checkpoints alike."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: directory / file for name, file in weight_map.items()}
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).exists():
            return {name: directory / single for name in _tensor_names(directory / single)}
    raise UserError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _tensor_names(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, "pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: corrupt safetensors file ({e})") from e
    return list(_load_pickle(path))


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load raises many types on a bad file
        raise UserError(f"{path}: unreadable pickle checkpoint ({type(e).__name__})") from e


def _read_tensor(path: Path, name: str) -> torch.Tensor:
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, "pt") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: corrupt safetensors file ({e})") from e
    return _load_pickle(path)[name].clone()


def embedding_names(directory: Path) -> tuple[str, str | None]:
    """(input name, output name or None when tied) from the model class itself."""
    config = AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)  # a tied weight keeps its first (embedding) name
    input_weight = model.get_input_embeddings().weight
    output_module = model.get_output_embeddings()
    input_name = names[id(input_weight)]
    tied_by_config = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    tied = tied_by_config or output_module is None or output_module.weight is input_weight
    return input_name, None if tied else names[id(output_module.weight)]


def read_embeddings(directory: Path) -> Embeddings:
    """Load just the embedding (and untied lm_head) tensors of a checkpoint."""
    files = weight_files(directory)
    input_name, output_name = embedding_names(directory)
    if input_name not in files:
        raise UserError(f"{directory}: checkpoint has no tensor {input_name!r}")
    if output_name is not None and output_name not in files:
        raise UserError(f"{directory}: checkpoint has no tensor {output_name!r}")
    return Embeddings(
        input_name=input_name,
        output_name=output_name,
        input=_read_tensor(files[input_name], input_name),
        output=None if output_name is None else _read_tensor(files[output_name], output_name),
    )


def _shards(directory: Path) -> dict[Path, list[str]]:
    shards: dict[Path, list[str]] = {}
    for name, path in weight_files(directory).items():
        shards.setdefault(path, []).append(name)
    return shards


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_TORCH_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


def _shard_tensors(path: Path, names: list[str], replace: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one base shard, one at a time, with replacements swapped in."""
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            for name in names:
                yield name, replace[name] if name in replace else f.get_tensor(name)
    else:
        state = _load_pickle(path)
        for name in names:
            yield name, replace.get(name, state[name])


def _shapes(path: Path, names: list[str], replace: dict[str, torch.Tensor]) -> list[tuple[str, str, list[int]]]:
    """(name, safetensors dtype, shape) of every tensor of a shard, without reading data."""
    out = []
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            for name in names:
                if name in replace:
                    out.append((name, _SAFETENSORS_DTYPES[replace[name].dtype], list(replace[name].shape)))
                else:
                    piece = f.get_slice(name)
                    out.append((name, piece.get_dtype(), list(piece.get_shape())))
    else:
        for name, tensor in _shard_tensors(path, names, replace):
            out.append((name, _SAFETENSORS_DTYPES[tensor.dtype], list(tensor.shape)))
    return out


def write_shard(out: Path, layout: list[tuple[str, str, list[int]]], tensors: Iterator[tuple[str, torch.Tensor]]) -> int:
    """Write a safetensors file one tensor at a time; returns the bytes of tensor data.

    ``safetensors.torch.save_file`` serializes a whole dict into one buffer (two copies of
    a shard in RAM); the header only needs shapes and dtypes, so it is written first and
    each tensor's bytes follow as they are read.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in layout:
        size = _TORCH_DTYPES[dtype].itemsize * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with out.open("wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for (name, dtype, _), (got, tensor) in zip(layout, tensors):
            assert name == got and _SAFETENSORS_DTYPES[tensor.dtype] == dtype
            f.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return offset


def write_weights(base_dir: Path, out_dir: Path, replace: dict[str, torch.Tensor]) -> None:
    """Copy every tensor of the base, swapping in ``replace``; one tensor in memory at a time."""
    shards = _shards(base_dir)
    weight_map: dict[str, str] = {}
    total = 0
    for number, (path, names) in enumerate(shards.items(), start=1):
        shard_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        total += write_shard(out_dir / shard_name, _shapes(path, names, replace), _shard_tensors(path, names, replace))
        weight_map.update({name: shard_name for name in names})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "pad")}


def write_config(base_dir: Path, out_dir: Path, vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> None:
    """config.json and generation_config.json with the new vocabulary size and special ids.

    The generation config keeps every id the base stopped on, carried over to the new ids
    (see :func:`transplant.chat.end_of_turn_ids`), not just the one eos of config.json.
    """
    config = AutoConfig.from_pretrained(base_dir)
    try:
        generation = GenerationConfig.from_pretrained(base_dir)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    stop = end_of_turn_ids(AutoTokenizer.from_pretrained(base_dir), tokenizer, generation.eos_token_id)
    ids = special_ids(tokenizer)
    for target in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        target.vocab_size = vocab_size
        for key, value in ids.items():
            setattr(target, key, value)
    config.save_pretrained(out_dir)
    eos = stop[0] if len(stop) == 1 else stop or None  # a single id stays an int, as transformers writes it
    for key, value in {**ids, "eos_token_id": eos}.items():
        setattr(generation, key, value)
    generation.save_pretrained(out_dir)


def export(
    base_dir: Path,
    out: Path,
    replace: dict[str, torch.Tensor],
    vocab_size: int,
    tokenizer: PreTrainedTokenizerBase,
    record: Callable[[], dict[str, Any]],
    force: bool = False,
    initialized: torch.Tensor | None = None,
) -> Path:
    """Write the patched checkpoint to ``out`` atomically (see :mod:`transplant.atomic`):
    an interrupted run never leaves a half-written OUT, and never destroys an existing one.
    ``record()`` is called after everything else is written, so transplant.json can time the writing.
    ``initialized`` (a bool per row: rows a method made, neither copied nor padding) goes to
    :data:`INITIALIZED_FILE`, which continued pretraining reads to train only those rows."""
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    with atomic_path(out, replace=force) as tmp:
        tmp.mkdir()
        write_weights(base_dir, tmp, replace)
        write_config(base_dir, tmp, vocab_size, tokenizer)
        tokenizer.save_pretrained(tmp)
        if initialized is not None:
            save_file({"initialized": initialized.contiguous()}, tmp / INITIALIZED_FILE)
        (tmp / "transplant.json").write_text(json.dumps(record(), indent=2, default=str))
    return out
