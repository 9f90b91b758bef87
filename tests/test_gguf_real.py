"""GGUF export of the packaged real models, run by the real llama.cpp (slow: minutes on CPU).

The three pairs of issue 21: SmolLM2 onto Gemma-3's SentencePiece BPE, SmolLM2 onto the
German 16k unigram SentencePiece, Gemma-3 onto SmolLM2's byte-level BPE. For each: llama.cpp
tokenizes a prompt to transformers' ids, and its greedy tokens equal transformers' (float16:
all 24, on the same float16-rounded weights; Q8_0: the first 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from llama_cpp_runtime import llama_cpp, needs_llama_cpp, transformers_greedy
from transplant.io.gguf_export import export_gguf
from transplant.pipeline import TransplantConfig, transplant

pytestmark = [pytest.mark.slow, needs_llama_cpp]
PROMPTS = {
    "en": "The capital of France is Paris. The largest planet of the solar system is",
    "de": "Die Hauptstadt von Frankreich ist Paris. Der größte Planet des Sonnensystems ist",
}
GERMAN = Path(__file__).parents[1] / "recipes" / "corpora" / "german_tokenizer.py"


@pytest.fixture(scope="module")
def german_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The German 16k unigram SentencePiece, built by the recipe (apt: fortunes-de manpages-de)."""
    out = tmp_path_factory.mktemp("german")
    done = subprocess.run([sys.executable, str(GERMAN), "-o", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"german_tokenizer.py could not build the tokenizer: {done.stderr.strip().splitlines()[-1:]}")
    return out / "german16k.model"


def _check_with_llama_cpp(out: Path, prompt_text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer(prompt_text)["input_ids"]
    expected = transformers_greedy(out, prompt, 24, weights=torch.float16)
    f16 = llama_cpp(export_gguf(out, "f16"), prompt, 24, text=prompt_text)
    assert f16["text_tokens"] == tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    assert f16["add_bos"] == (prompt[:1] == [tokenizer.bos_token_id])
    assert f16["generated"] == expected, tokenizer.decode(expected) + " | " + tokenizer.decode(f16["generated"])
    q8 = llama_cpp(export_gguf(out, "q8_0"), prompt, 24)
    assert q8["generated"][:4] == expected[:4]


def test_smollm2_onto_gemma3_tokenizer(tmp_path: Path) -> None:
    out = tmp_path / "smollm2-gemma3"
    transplant(TransplantConfig(base="smollm2-135m", tokenizer="gemma3-270m", out=out, method="subword", gguf="f16"))
    assert (out / "model-f16.gguf").is_file()
    (out / "model-f16.gguf").unlink()  # written again below, by the same code
    _check_with_llama_cpp(out, PROMPTS["en"])


def test_smollm2_onto_german_sentencepiece(german_tokenizer: Path, tmp_path: Path) -> None:
    out = tmp_path / "smollm2-german"
    transplant(TransplantConfig(base="smollm2-135m", tokenizer=str(german_tokenizer), out=out, method="subword"))
    _check_with_llama_cpp(out, PROMPTS["de"])


def test_gemma3_onto_smollm2_tokenizer(tmp_path: Path) -> None:
    out = tmp_path / "gemma3-smollm2"
    transplant(TransplantConfig(base="gemma3-270m", tokenizer="smollm2-135m", out=out, method="subword"))
    _check_with_llama_cpp(out, PROMPTS["en"])
