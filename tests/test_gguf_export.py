"""GGUF export: what the writer puts in the file (read back with gguf-py and with transformers'
own GGUF loader), the refusals, and, where llama.cpp is installed, llama.cpp itself running
the file: the same token ids for a text, and the same greedy tokens as transformers."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import normalizers, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

from conftest import assert_refused, bpe_tokenizer, sentencepiece_model, tiny_llama
from llama_cpp_runtime import llama_cpp, needs_llama_cpp, transformers_greedy
from transplant.cli import app
from transplant.io.gguf_export import export_gguf
from transplant.io.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "the quick brown fox jumps over the lazy dog, 12345 Grüße  aus Köln!\n\nhaus garten 🚀"
# llama.cpp's unigram tokenizer has no byte fallback: a character outside the vocabulary is
# <unk> there and bytes in tokenizers. The t5 kind is compared on text its vocabulary spells.
IN_VOCABULARY = "the quick brown fox jumps over the lazy dog  über grün\n\nhaus garten"


def _fields(path: Path) -> tuple[gguf.GGUFReader, dict]:
    reader = gguf.GGUFReader(path)
    return reader, {name: field.contents() for name, field in reader.fields.items()}


def _sp_llama2_style(tokenizer):
    """A SentencePiece BPE as Llama-2 has it: spaces to ▁ and one in front, nothing else."""
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    return tokenizer


@pytest.fixture(scope="module")
def tokenizers_by_kind(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tokenizer per llama.cpp tokenizer kind: byte-level BPE, SentencePiece BPE, unigram."""
    tmp = tmp_path_factory.mktemp("gguf_tokenizers")
    return {
        "gpt2": bpe_tokenizer(corpus_file),
        "llama": _sp_llama2_style(load_tokenizer(str(sentencepiece_model(corpus_file, tmp, model_type="bpe")))),
        "t5": load_tokenizer(str(sentencepiece_model(corpus_file, tmp, model_type="unigram"))),
    }


@pytest.fixture(scope="module", params=["gpt2", "llama", "t5"])
def checkpoint(request: pytest.FixtureRequest, tokenizers_by_kind: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untied llama (hidden 64: whole Q8_0 blocks) on each kind of tokenizer."""
    out = tmp_path_factory.mktemp(f"llama_{request.param}")
    return tiny_llama(tokenizers_by_kind[request.param], out, tied=False, hidden=64)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_f16_tensors_and_vocabulary(tied: bool, corpus_file: Path, tmp_path: Path) -> None:
    """Every tensor under gguf-py's llama name, float16 matrices and float32 norms, values
    that transformers' own GGUF loader reads back (q/k un-permuted) to the model's within
    float16 precision; the vocabulary, merges, special ids and chat template of the tokenizer."""
    tokenizer = bpe_tokenizer(corpus_file)
    directory = tiny_llama(tokenizer, tmp_path / "m", tied=tied)
    path = export_gguf(directory, "f16")
    assert path == directory / "model-f16.gguf"
    reader, fields = _fields(path)
    assert fields["general.architecture"] == "llama"
    names = {t.name: t for t in reader.tensors}
    assert ("output.weight" in names) == (not tied)
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2} == {"F16"}
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 1} == {"F32"}
    model = AutoModelForCausalLM.from_pretrained(directory)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=path.name, dtype=torch.float32)
    expected = dict(model.named_parameters())
    for name, tensor in loaded.named_parameters():
        torch.testing.assert_close(tensor, expected[name].to(torch.float16).float(), rtol=0, atol=0, msg=name)
    vocab = tokenizer.get_vocab()
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    types = fields["tokenizer.ggml.token_type"]
    assert [types[tokenizer.convert_tokens_to_ids(t)] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        gguf.TokenType.CONTROL] * 3
    assert set(types) == {gguf.TokenType.CONTROL, gguf.TokenType.NORMAL}
    assert len(fields["tokenizer.ggml.merges"]) == len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"])
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template


def test_q8_0_and_bf16(checkpoint: Path) -> None:
    """Q8_0: every matrix quantized (rows are whole blocks), dequantizing to within half a
    block's step (plus the float16 rounding of its scale); bf16: the weights rounded to bfloat16 exactly."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    embed = model.get_input_embeddings().weight.detach()
    reader, _ = _fields(export_gguf(checkpoint, "q8_0"))
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2} == {"Q8_0"}
    token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    got = torch.from_numpy(gguf.quants.dequantize(token_embd.data, token_embd.tensor_type).copy())
    step = embed.reshape(embed.shape[0], -1, 32).abs().amax(-1, keepdim=True) / 127
    assert ((got - embed).reshape(step.shape[0], -1, 32).abs() <= step * 0.6).all()
    reader, _ = _fields(export_gguf(checkpoint, "bf16"))
    token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert token_embd.tensor_type.name == "BF16"
    bits = torch.from_numpy(np.ascontiguousarray(token_embd.data).view(np.int16).copy()).view(torch.bfloat16)
    assert torch.equal(bits.reshape(embed.shape), embed.to(torch.bfloat16))


def test_sentencepiece_vocabularies(tokenizers_by_kind: dict, tmp_path: Path) -> None:
    """SentencePiece BPE as llama.cpp's ``llama`` kind (scores from the merge order), unigram as
    ``t5`` (the unigram scores, the normalization map, byte tokens typed BYTE)."""
    for kind in ("llama", "t5"):
        tokenizer = tokenizers_by_kind[kind]
        _, fields = _fields(export_gguf(tiny_llama(tokenizer, tmp_path / kind, tied=True), "f16"))
        assert fields["tokenizer.ggml.model"] == kind
        types = fields["tokenizer.ggml.token_type"]
        byte = tokenizer.convert_tokens_to_ids("<0x41>")
        assert types[byte] == gguf.TokenType.BYTE and types[tokenizer.unk_token_id] == gguf.TokenType.CONTROL
        assert fields["tokenizer.ggml.add_space_prefix"] is True
        scores = fields["tokenizer.ggml.scores"]
        model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
        if kind == "t5":
            assert scores == pytest.approx([s for _, s in model["vocab"]])
            assert fields["tokenizer.ggml.remove_extra_whitespaces"] is True
            assert len(fields["tokenizer.ggml.precompiled_charsmap"]) > 1000
        else:
            first = "".join(model["merges"][0]) if isinstance(model["merges"][0], list) else model["merges"][0].replace(" ", "")
            assert scores[tokenizer.convert_tokens_to_ids(first)] == 0.0


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_refusals(corpus_file: Path, tmp_path: Path) -> None:
    """One line, no file: a pre-tokenizer llama.cpp lacks, a normalizer its SentencePiece BPE
    lacks, an architecture the export lacks, an existing file, an unknown type."""
    prefixed = bpe_tokenizer(corpus_file)
    prefixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    cases = {
        "pre-tokenizer": tiny_llama(prefixed, tmp_path / "prefixed", tied=True),
        "applies no normalizer": tiny_llama(load_tokenizer(str(sentencepiece_model(corpus_file, tmp_path, model_type="bpe"))),
                                            tmp_path / "nfkc", tied=True),
    }
    gpt2 = tmp_path / "gpt2"
    tokenizer = bpe_tokenizer(corpus_file)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2)).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    cases["not gpt2"] = gpt2
    for fragment, directory in cases.items():
        assert_refused(_cli("export-gguf", str(directory)), fragment)
        assert not list(directory.glob("*.gguf*"))
    good = tiny_llama(tokenizer, tmp_path / "good", tied=True)
    assert_refused(_cli("export-gguf", str(good), "--type", "q4_k"), "one of f16, bf16, q8_0")
    assert _cli("export-gguf", str(good)).exit_code == 0
    assert_refused(_cli("export-gguf", str(good)), "exists; pass --force")
    assert _cli("export-gguf", str(good), "--force").exit_code == 0


def test_model_writes_gguf_and_refuses_before_the_work(base_model: Path, sp_model: Path, corpus_file: Path,
                                                       tmp_path: Path) -> None:
    """``transplant model --gguf`` leaves OUT/model-<type>.gguf next to the checkpoint; a
    tokenizer llama.cpp cannot run is refused before anything is written."""
    out = tmp_path / "out"
    done = _cli("model", str(base_model), "-t", str(sp_model), "-o", str(out), "--gguf", "q8_0")
    assert done.exit_code == 0, done.output
    reader, fields = _fields(out / "model-q8_0.gguf")
    assert fields["tokenizer.ggml.model"] == "t5" and len(fields["tokenizer.ggml.tokens"]) == len(AutoTokenizer.from_pretrained(out))
    prefixed = bpe_tokenizer(corpus_file)
    prefixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    prefixed.save_pretrained(tmp_path / "prefixed")
    assert_refused(_cli("model", str(base_model), "-t", str(tmp_path / "prefixed"), "-o", str(tmp_path / "no"),
                        "--gguf", "f16"), "pre-tokenizer")
    assert not (tmp_path / "no").exists()
    assert_refused(_cli("model", str(base_model), "-t", str(sp_model), "-o", str(tmp_path / "no"), "--gguf", "f32"),
                   "--gguf must be one of")


@needs_llama_cpp
def test_llama_cpp_runs_it_as_transformers_does(checkpoint: Path) -> None:
    """The real llama.cpp: the same token ids for a text with digits, double spaces, newlines,
    umlauts and an emoji (byte fallback); greedy generation equal to transformers' for all 16
    tokens in float16 (transformers on the same float16-rounded weights), the first 4 in Q8_0."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = IN_VOCABULARY if gguf.GGUFReader(export_gguf(checkpoint, "f16", force=True)).fields[
        "tokenizer.ggml.model"].contents() == "t5" else TEXT
    prompt = tokenizer(text)["input_ids"]
    expected = transformers_greedy(checkpoint, prompt, 16, weights=torch.float16)
    f16 = llama_cpp(checkpoint / "model-f16.gguf", prompt, 16, text=text)
    assert f16["text_tokens"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert f16["generated"] == expected
    q8 = llama_cpp(export_gguf(checkpoint, "q8_0", force=True), prompt, 16)
    assert q8["generated"][:4] == expected[:4]
