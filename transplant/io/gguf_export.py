"""A checkpoint directory -> ``OUT/model-<type>.gguf`` that llama.cpp runs, one tensor at a time.

The file is laid out before any weight is read: hyperparameters from ``config.json``, the
vocabulary from the checkpoint's own tokenizer (:mod:`transplant.io.gguf_vocab`), and the
name, shape and type of every tensor from the safetensors headers. Then each tensor is read,
converted to llama.cpp's convention for its architecture, cast or quantized, and written
before the next is read, so memory follows the largest tensor (the embedding), not the model.
Tensor names come from gguf-py's own map (``gguf.get_tensor_name_map``), not a list here.

Only architectures whose conventions are written out below are exported; anything else, and
any setting of theirs llama.cpp would silently run differently (rope scaling, soft-capping,
another sliding-window pattern), is refused in one line before the file is started.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PretrainedConfig

from transplant.errors import UserError
from transplant.io.atomic import atomic_path
from transplant.io.checkpoint import model_config, weight_files
from transplant.io.gguf_vocab import GGUFVocab, gguf_vocab
from transplant.io.outputs import check_output_file
from transplant.io.shards import file_tensors, read_header, torch_dtypes
from transplant.io.trust import Trust

GGUFType = Literal["f16", "bf16", "q8_0"]
GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)
_FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
               "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_QUANT_ROWS = 4096  # rows quantized at a time: the Q8_0 temporaries stay small


@dataclass(frozen=True)
class Architecture:
    """How one transformers model type becomes a llama.cpp architecture."""

    arch: gguf.MODEL_ARCH
    check: Callable[[PretrainedConfig], None]  # raises UserError for settings llama.cpp would run differently
    hparams: Callable[[gguf.GGUFWriter, PretrainedConfig], None]
    convert: Callable[[str, torch.Tensor, PretrainedConfig], torch.Tensor]  # HF tensor -> llama.cpp's layout


def _rope(config: PretrainedConfig, layer_type: str | None = None) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    return params[layer_type] if layer_type else params


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _refuse_unless(ok: bool, config: PretrainedConfig, why: str) -> None:
    if not ok:
        raise UserError(f"GGUF export of this {config.model_type} model refused: {why}")


def _common_hparams(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _check_llama(config: PretrainedConfig) -> None:
    rope = _rope(config)
    _refuse_unless(rope.get("rope_type", "default") == "default", config,
                   f"rope scaling {rope.get('rope_type')!r} is not exported")
    _refuse_unless(not getattr(config, "attention_bias", False) and not getattr(config, "mlp_bias", False), config,
                   "biases in attention or MLP are not exported")
    _refuse_unless(config.hidden_act == "silu", config, f"llama.cpp's llama runs silu, not {config.hidden_act}")


def _llama_hparams(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    _common_hparams(writer, config)
    writer.add_rope_freq_base(_rope(config)["rope_theta"])
    writer.add_rope_dimension_count(_head_dim(config))
    if _head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))


def _llama_convert(name: str, tensor: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """llama.cpp rotates q and k by adjacent pairs, transformers by halves: permute their rows."""
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
        shape = tensor.shape
        return tensor.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    return tensor


_GEMMA3_PATTERN = 6  # llama.cpp's gemma3: every 6th layer global, the others sliding-window


def _check_gemma3(config: PretrainedConfig) -> None:
    layers = config.layer_types
    expected = ["full_attention" if (i + 1) % _GEMMA3_PATTERN == 0 else "sliding_attention" for i in range(len(layers))]
    _refuse_unless(list(layers) == expected, config, "llama.cpp's gemma3 expects every 6th layer global")
    full, local = _rope(config, "full_attention"), _rope(config, "sliding_attention")
    _refuse_unless(full.get("rope_type", "default") == "default" and local.get("rope_type", "default") == "default",
                   config, "rope scaling is not exported")
    _refuse_unless(local["rope_theta"] == 10000.0, config, "llama.cpp's gemma3 uses rope theta 10000 on sliding layers")
    _refuse_unless(config.query_pre_attn_scalar == _head_dim(config), config,
                   "query_pre_attn_scalar other than head_dim is not exported")
    _refuse_unless(config.final_logit_softcapping is None and config.attn_logit_softcapping is None, config,
                   "logit soft-capping is not exported")


def _gemma3_hparams(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    _common_hparams(writer, config)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_freq_base(_rope(config, "full_attention")["rope_theta"])
    writer.add_sliding_window(config.sliding_window)


def _gemma3_convert(name: str, tensor: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """transformers' Gemma RMSNorm scales by (1 + weight); llama.cpp's by the weight itself."""
    return tensor.float() + 1 if name.endswith("norm.weight") else tensor


ARCHITECTURES = {
    "llama": Architecture(gguf.MODEL_ARCH.LLAMA, _check_llama, _llama_hparams, _llama_convert),
    "gemma3_text": Architecture(gguf.MODEL_ARCH.GEMMA3, _check_gemma3, _gemma3_hparams, _gemma3_convert),
}


def architecture(config: PretrainedConfig) -> Architecture:
    """The export recipe for ``config``'s model type, after refusing settings it cannot carry."""
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise UserError(f"GGUF export knows the {', '.join(ARCHITECTURES)} architectures, not {config.model_type}")
    arch.check(config)
    return arch


def check_gguf(config: PretrainedConfig, tokenizer: Tokenizer, rows: int, kind: str) -> None:
    """Refuse, before a transplant starts, what :func:`export_gguf` would refuse at its end."""
    if kind not in GGUF_TYPES:
        raise UserError(f"--gguf must be one of {', '.join(GGUF_TYPES)}, not {kind!r}")
    architecture(config)
    gguf_vocab(tokenizer, rows)


@dataclass(frozen=True)
class _Planned:
    """One tensor of the file: where its bytes are, and what it becomes."""

    hf_name: str
    gguf_name: str
    path: Path
    shape: list[int]
    qtype: gguf.GGMLQuantizationType


def _qtype(kind: GGUFType, shape: list[int]) -> gguf.GGMLQuantizationType:
    """llama.cpp's convention: vectors (norms) stay float32; matrices take the file's type, and
    Q8_0 only where a row is whole blocks of 32 (float16 elsewhere)."""
    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    if kind == "bf16":
        return gguf.GGMLQuantizationType.BF16
    if kind == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _plan(directory: Path, config: PretrainedConfig, arch: Architecture, kind: GGUFType,
          trust: Trust) -> list[_Planned]:
    names = gguf.get_tensor_name_map(arch.arch, config.num_hidden_layers)
    planned = []
    for hf_name, path in weight_files(directory, trust).items():
        base, suffix = hf_name.rsplit(".", 1)
        gguf_base = names.get_name(base)
        if gguf_base is None:
            raise UserError(f"{directory}: tensor {hf_name} has no name in llama.cpp's {arch.arch.name.lower()}")
        shape = file_tensors(path, [hf_name])[0].shape
        planned.append(_Planned(hf_name, f"{gguf_base}.{suffix}", path, shape, _qtype(kind, shape)))
    return planned


def _read(item: _Planned) -> torch.Tensor:
    """One tensor, read from the file into one buffer (not through a memory map, whose pages
    would stay in the process until it exits)."""
    header, data_start = read_header(item.path)
    entry = header[item.hf_name]
    dtype = torch_dtypes().get(entry["dtype"])
    if dtype is None or not dtype.is_floating_point:
        raise UserError(f"{item.path}: tensor {item.hf_name} is {entry['dtype']}, not a float")
    start, end = entry["data_offsets"]
    raw = np.fromfile(item.path, dtype=np.uint8, count=end - start, offset=data_start + start)
    if raw.size != end - start:
        raise UserError(f"{item.path}: truncated safetensors file")
    return torch.from_numpy(raw).view(dtype).reshape(entry["shape"])


def _encode(tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """The bytes llama.cpp reads for ``tensor`` stored as ``qtype``."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return tensor.float().numpy()
    if qtype == gguf.GGMLQuantizationType.F16:
        return tensor.to(torch.float16).numpy()
    if qtype == gguf.GGMLQuantizationType.BF16:
        return tensor.to(torch.bfloat16).view(torch.int16).numpy()
    rows = tensor.float().numpy()
    out = np.empty(gguf.quant_shape_to_byte_shape(rows.shape, qtype), dtype=np.uint8)
    for start in range(0, rows.shape[0], _QUANT_ROWS):
        out[start:start + _QUANT_ROWS] = gguf.quants.quantize(rows[start:start + _QUANT_ROWS], qtype)
    return out


def _nbytes(shape: list[int], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def _add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab, directory: Path, rows: int, trust: Trust) -> None:
    writer.add_tokenizer_model(vocab.kind)
    writer.add_tokenizer_pre(vocab.pre or "default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.kind != "gpt2":
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.kind == "t5":
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
        if vocab.charsmap:
            writer.add_precompiled_charsmap(vocab.charsmap)
    quiet = logging.getLogger("gguf.vocab")  # its guesses about add_bos/add_eos are replaced below: no warnings
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(directory, load_merges=False, n_vocab=rows)  # special ids, the chat template
    finally:
        quiet.setLevel(level)
    special.add_special_token = _added_specials(directory, special.special_token_ids, trust)
    special.add_to_gguf(writer, quiet=True)


def _added_specials(directory: Path, ids: dict[str, int], trust: Trust) -> dict[str, bool]:
    """Whether the tokenizer puts BOS in front of a text and EOS after it, asked of the
    tokenizer itself rather than parsed from its post-processor."""
    encoded = AutoTokenizer.from_pretrained(directory, **trust.code_kwargs())("a")["input_ids"]
    return {"bos": "bos" in ids and encoded[:1] == [ids["bos"]], "eos": "eos" in ids and encoded[-1:] == [ids["eos"]]}


def gguf_path(directory: Path, kind: str) -> Path:
    return Path(directory) / f"model-{kind}.gguf"


def export_gguf(directory: Path, kind: GGUFType = "f16", force: bool = False, trust: Trust = Trust()) -> Path:
    """Write ``directory/model-<kind>.gguf`` from the checkpoint in ``directory`` (atomically;
    an existing file only with ``force``). Only safetensors weights are read."""
    directory = Path(directory)
    if kind not in GGUF_TYPES:
        raise UserError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, not {kind!r}")
    target = gguf_path(directory, kind)
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to replace it")
    check_output_file(target)
    config = model_config(directory, trust)
    arch = architecture(config)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise UserError(f"{directory}: no tokenizer.json, which the GGUF vocabulary is made from")
    rows = config.vocab_size
    vocab = gguf_vocab(Tokenizer.from_file(str(tokenizer_file)), rows)
    planned = _plan(directory, config, arch, kind, Trust(remote_code=trust.remote_code))
    with atomic_path(target, existing="replace" if force else "refuse", suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch.arch])
        writer.add_name(directory.resolve().name)
        writer.add_file_type(_FILE_TYPES[kind])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(rows)
        arch.hparams(writer, config)
        _add_vocab(writer, vocab, directory, rows, trust)
        for item in planned:
            dtype = np.uint8 if item.qtype == gguf.GGMLQuantizationType.Q8_0 else np.float32
            shape = gguf.quant_shape_to_byte_shape(item.shape, item.qtype) if dtype == np.uint8 else item.shape
            writer.add_tensor_info(item.gguf_name, shape, np.dtype(dtype), _nbytes(item.shape, item.qtype), item.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in planned:
            writer.write_tensor_data(_encode(arch.convert(item.hf_name, _read(item), config), item.qtype))
        writer.close()
    return target
