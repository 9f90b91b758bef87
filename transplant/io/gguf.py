"""GGUF -> a safetensors Hugging Face directory, once, one tensor at a time.

Dequantizing a GGUF takes tens of seconds and gives the same floats every time, so the
result is cached and everything downstream reads one format (safetensors).

transformers can load a GGUF, but it holds the whole dequantized model (and refuses to save
it): converting a 7B model that way needs two float32 copies, ~56 GB. Here every tensor is
read from the file, dequantized by the ``gguf`` package and un-permuted by transformers' own
per-architecture processor, then written before the next is read, so peak memory follows
the largest tensor. The names, the config and the tokenizer come from transformers' GGUF
support as well, so the result is the model ``from_pretrained(gguf_file=...)`` would load.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor, dequantize
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.integrations.gguf.utils import is_gguf_arch_supported
from transformers.modeling_gguf_pytorch_utils import (
    TENSOR_PROCESSORS,
    TensorProcessor,
    get_gguf_hf_weights_map,
    load_gguf_checkpoint,
    read_field,
)

from transplant.io.atomic import atomic_path
from transplant.errors import UserError
from transplant.io.shards import ShardTensor, write_shards

SHARD_BYTES = 500 * 10**6  # what transformers' max_shard_size="500MB" means
_MERGING = ("qwen2moe", "qwen3moe", "gpt-oss", "minimax-m2")  # processors that merge several tensors into one


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into a safetensors HF directory (atomically; kept if another process wrote it first)."""
    if out.exists():
        return out
    try:
        parsed = load_gguf_checkpoint(str(gguf), return_tensors=False)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        reader = GGUFReader(gguf)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"{gguf}: not a readable GGUF model ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors = _tensors(gguf, reader, parsed["config"], model)
    config.architectures, config.dtype = [type(model).__name__], torch.float32  # as save_pretrained records them
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_shards(tmp, _by_size(tensors))
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _tensors(path: Path, reader: GGUFReader, gguf_config: dict[str, Any], model: PreTrainedModel) -> list[ShardTensor]:
    """Every tensor of ``model`` (built on the meta device) in the file's order, as float32."""
    architecture = read_field(reader, "general.architecture")[0]
    if is_gguf_arch_supported(architecture) or architecture in _MERGING:
        raise UserError(f"{path}: converting {architecture} GGUFs tensor by tensor is not supported")
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=gguf_config)
    names = get_gguf_hf_weights_map(model, processor)
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}  # a tied lm_head is not listed
    tensors = []
    for t in reader.tensors:
        name = names.get(t.name)
        if name in shapes:  # GGUF-only tensors (rope_freqs) are skipped, as transformers does
            shape = shapes[name]
            tensors.append(ShardTensor(name, "F32", shape, 4 * math.prod(shape), _reader(path, t, shape, processor, names)))
    missing = sorted(set(shapes) - {t.name for t in tensors})
    if missing:
        raise UserError(f"{path}: the GGUF has no tensor for {', '.join(missing[:3])} (of {len(missing)})")
    return tensors


def _reader(path: Path, tensor: ReaderTensor, shape: list[int], processor: TensorProcessor,
            names: dict[str, str]) -> Callable[[], memoryview]:
    """Read, dequantize and un-permute one tensor when it is written.

    The bytes are read from the file rather than through the reader's memory map: pages of a
    map stay in the process (its RSS) until it exits, so walking the map would hold the whole
    file by the end.
    """

    def read() -> memoryview:
        raw = np.fromfile(path, dtype=tensor.data.dtype, count=tensor.data.size, offset=tensor.data_offset)
        weights = dequantize(raw.reshape(tensor.data.shape), tensor.tensor_type)
        result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=names, parsed_parameters={})
        if result.name != tensor.name or list(result.weights.shape) != shape:
            raise UserError(f"{path}: tensor {tensor.name} does not load as {names[tensor.name]} {shape}")
        return memoryview(np.ascontiguousarray(result.weights, dtype=np.float32).reshape(-1).view(np.uint8))

    return read


def _by_size(tensors: list[ShardTensor]) -> list[list[ShardTensor]]:
    """Consecutive tensors grouped into shards of at most SHARD_BYTES (or one tensor, if larger)."""
    shards: list[list[ShardTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards
