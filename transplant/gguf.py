"""GGUF -> a safetensors Hugging Face directory, once.

Dequantizing a GGUF takes tens of seconds and gives the same floats every time, so the
result is cached and everything downstream reads one format (safetensors).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from transplant.atomic import atomic_path
from transplant.errors import UserError


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
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, max_shard_size="500MB")
        tokenizer.save_pretrained(tmp)
    return out
