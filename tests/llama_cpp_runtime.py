"""A real llama.cpp for the GGUF tests: node-llama-cpp's prebuilt CPU binaries, driven by
``tests/llama_cpp/generate.mjs``, and the transformers side it is compared with.

Install (npm registry, ~85 MB, seconds, nothing compiled; ``--omit=optional`` leaves out the
CUDA/Vulkan builds, ``--ignore-scripts`` the postinstall that could download or build):
``npm install --prefix tests/llama_cpp --omit=optional --ignore-scripts --no-audit --no-fund``.
Tests that need it skip with that command as the reason when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

RUNNER_DIR = Path(os.environ.get("TRANSPLANT_LLAMA_CPP", Path(__file__).parent / "llama_cpp"))
INSTALL = "npm install --prefix tests/llama_cpp --omit=optional --ignore-scripts --no-audit --no-fund"


def runtime_missing() -> str | None:
    """Why llama.cpp cannot run here, or None."""
    if shutil.which("node") is None:
        return "llama.cpp runtime: no `node` on PATH"
    if not (RUNNER_DIR / "node_modules" / "node-llama-cpp").is_dir():
        return f"llama.cpp runtime not installed ({INSTALL})"
    return None


needs_llama_cpp = pytest.mark.skipif(runtime_missing() is not None, reason=runtime_missing() or "")


def llama_cpp(model: Path, prompt: list[int], n: int, text: str | None = None) -> dict:
    """llama.cpp's answer for ``model``: ``generated`` (``n`` greedy tokens after ``prompt``),
    and with ``text`` its ``text_tokens`` (no BOS) and ``add_bos``."""
    request = {"model": str(model), "prompt": prompt, "n": n, "context": len(prompt) + n + 8}
    if text is not None:
        request["text"] = text
    done = subprocess.run(["node", str(RUNNER_DIR / "generate.mjs"), json.dumps(request)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NODE_LLAMA_CPP_SKIP_DOWNLOAD": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@torch.no_grad()
def transformers_greedy(directory: Path, prompt: list[int], n: int, weights: torch.dtype = torch.float32) -> list[int]:
    """``n`` greedy tokens from the checkpoint, argmax at every step (EOS is a token like any
    other, as it is for llama.cpp's loop). ``weights=torch.float16`` first rounds every matrix
    as a float16 GGUF stores it (norms stay float32), so that a near tie between two logits of a
    random model is decided on the same weights; the arithmetic stays float32 as in llama.cpp."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    for parameter in model.parameters():
        if parameter.dim() == 2:
            parameter.copy_(parameter.to(weights).float())
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]
