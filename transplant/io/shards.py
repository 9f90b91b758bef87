"""safetensors files one tensor at a time: read a header, copy a tensor's bytes, write shards.

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte
range) and the tensor bytes. ``safetensors.torch.save_file`` serializes a whole dict into
one buffer (two copies of a shard in RAM), and going through torch limits a copy to the
dtypes torch and the installed safetensors share. Here the header is written first and
each tensor's bytes follow as they are produced; a tensor that is not changed is copied as
its byte range, bit for bit, whatever its dtype.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from transplant.errors import UserError
from transplant.io.links import link_or_copy


@dataclass(frozen=True)
class ShardTensor:
    """One tensor to write: its header entry, and its bytes, produced only when written."""

    name: str
    dtype: str  # safetensors' name: "F32", "U16", "F8_E8M0", ...
    shape: list[int]
    nbytes: int
    read: Callable[[], bytes | memoryview]


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """(name -> {dtype, shape, data_offsets}, file offset where the tensor bytes start)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def _read_range(path: Path, start: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(size)
    if len(data) != size:
        raise UserError(f"{path}: truncated safetensors file")
    return data


def file_tensors(path: Path, names: list[str]) -> list[ShardTensor]:
    """The named tensors of a safetensors file, to be copied as bytes."""
    header, data_start = read_header(path)
    tensors = []
    for name in names:
        entry = header[name]
        start, end = entry["data_offsets"]
        read = functools.partial(_read_range, path, data_start + start, end - start)
        tensors.append(ShardTensor(name, entry["dtype"], entry["shape"], end - start, read))
    return tensors


@functools.cache
def safetensors_dtype(dtype: torch.dtype) -> str:
    """safetensors' name for a torch dtype, asked of safetensors itself (its table grows by version)."""
    try:
        with warnings.catch_warnings():  # creating some dtypes (complex32, quint8) warns
            warnings.simplefilter("ignore")
            encoded = save({"t": torch.empty(1, dtype=dtype)})
    except (KeyError, ValueError, TypeError, RuntimeError):
        raise UserError(f"safetensors cannot store tensors of dtype {dtype}") from None
    entry = json.loads(encoded[8 : 8 + int.from_bytes(encoded[:8], "little")])["t"]
    if entry["shape"] != [1]:  # packed sub-byte types are written with another shape
        raise UserError(f"tensors of the packed dtype {dtype} are not supported here")
    return entry["dtype"]


@functools.cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype name -> torch dtype, for every dtype both know."""
    known: dict[str, torch.dtype] = {}
    for dtype in {v for v in vars(torch).values() if isinstance(v, torch.dtype)}:
        try:
            known[safetensors_dtype(dtype)] = dtype
        except UserError:
            continue
    return known


def torch_tensor(name: str, tensor: torch.Tensor) -> ShardTensor:
    """A torch tensor to write, in its own dtype."""

    def read() -> memoryview:
        return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())

    nbytes = tensor.dtype.itemsize * math.prod(tensor.shape)
    return ShardTensor(name, safetensors_dtype(tensor.dtype), list(tensor.shape), nbytes, read)


def write_shard(out: Path, tensors: list[ShardTensor]) -> int:
    """Write one safetensors file, one tensor in memory at a time; returns the bytes of tensor data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    encoded = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    encoded += b" " * (-len(encoded) % 8)
    with out.open("wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for t in tensors:
            data = t.read()
            if len(data) != t.nbytes:
                raise RuntimeError(f"{t.name}: {len(data)} bytes where its header says {t.nbytes}")
            f.write(data)
    return offset


def _linked_shard(source: Path, out: Path) -> tuple[list[str], int]:
    """``source`` as the shard ``out``, hard-linked (:func:`transplant.io.links.link_or_copy`):
    its tensor names and bytes of tensor data, from its header."""
    link_or_copy(source, out)
    header, _ = read_header(source)
    return list(header), sum(entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values())


def write_shards(out_dir: Path, shards: list[list[ShardTensor] | Path]) -> None:
    """``model.safetensors``, or numbered shards and their index, as transformers writes them.
    A shard given as a path is a safetensors file that goes into the output unchanged: linked."""
    weight_map: dict[str, str] = {}
    total = 0
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        if isinstance(shard, Path):
            names, size = _linked_shard(shard, out_dir / name)
        else:
            names, size = [t.name for t in shard], write_shard(out_dir / name, shard)
        total += size
        weight_map.update({tensor: name for tensor in names})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, allow_nan=False))
