"""`transplant tokenizer train`: tokenizers that load with AutoTokenizer, write any text back
exactly, span words only with --supertokens, and that `transplant model` takes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

import transplant
from conftest import bpe_tokenizer, tiny_llama
from transplant.cli import app
from transplant.vocab.supertokens import is_supertoken, word_groups
from transplant.vocab.surface import vocabulary

# Phrases that recur, as in real prose (" of the", " in der"), among words that vary.
SUBJECTS = ["the house", "the garden", "a small child", "das Haus", "der Garten", "ein kleines Kind"]
VERBS = ["is one of the best", "stands in the middle of the street", "ist eines der besten", "steht in der Mitte"]
ENDINGS = ["today.", "in the morning.", "for the first time!", "heute.", "am Morgen.", "zum ersten Mal?"]
HELD_OUT = ("Das Haus ist eines der besten heute. The garden is one of the best in the morning!\n\n"
            "    def f(x):\n        return x  # 😜 Straße, Öl, naïve  café\ttab  <0x41>  ")
VOCAB = 400
SUPERTOKENS = [False, True]


def prose(seed: int, documents: int = 300) -> str:
    rng = random.Random(seed)
    sentences = lambda: " ".join(  # noqa: E731
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(ENDINGS)}" for _ in range(rng.randint(1, 4)))
    return "\n\n".join(sentences() for _ in range(documents)) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokcorpus") / "train.txt"
    path.write_text(prose(0))
    return path


@pytest.fixture(scope="module", params=[(k, s) for k in ("bpe", "unigram") for s in SUPERTOKENS],
                ids=lambda p: f"{p[0]}-{'super' if p[1] else 'plain'}")
def trained(request: pytest.FixtureRequest, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bool]:
    kind, supertokens = request.param
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    transplant.train_tokenizer([corpus], out, vocab_size=VOCAB, kind=kind, supertokens=supertokens)
    return out, kind, supertokens


def test_loads_and_round_trips(trained: tuple[Path, str, bool]) -> None:
    out, _, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) <= VOCAB and tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(tokenizer.get_vocab())  # every byte has a token
    for text in [HELD_OUT, prose(1, documents=20), "▁a ▁ b Ġc"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    record = json.loads((out / "transplant-tokenizer.json").read_text())
    assert record["tool"] == "transplant" and record["vocab_size"] == len(tokenizer)


def test_tokens_span_words_only_with_supertokens(trained: tuple[Path, str, bool]) -> None:
    out, _, supertokens = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    spanning = [s.decode() for s in vocabulary(tokenizer).surfaces if is_supertoken(s)]
    if not supertokens:
        assert spanning == []
        return
    assert " of the" in spanning or " in der" in spanning, spanning
    assert all(len(s.strip().split()) <= 4 for s in spanning), spanning  # the default --max-words
    tokens = tokenizer.tokenize(" is one of the best")
    assert len(tokens) < len(" is one of the best".split()), tokens  # fewer tokens than words
    # never across punctuation, digits or a line break: numbers are split as by a plain tokenizer
    for token in tokenizer.tokenize("the best.\nThe garden. Das Haus, in 2024 the\n the"):
        text = tokenizer.convert_tokens_to_string([token])
        assert text.strip(" .,\n0123456789") == "" or text.strip(" ").replace(" ", "").isalpha(), token


def test_same_seed_same_tokenizer(corpus: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        transplant.train_tokenizer([corpus], tmp_path / name, vocab_size=VOCAB, supertokens=True, seed=3)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_caps_hold(corpus: Path, tmp_path: Path) -> None:
    transplant.train_tokenizer([corpus], tmp_path / "t", vocab_size=VOCAB, supertokens=True, max_words=2, max_chars=8)
    surfaces = vocabulary(AutoTokenizer.from_pretrained(tmp_path / "t")).surfaces
    spanning = [s for s in surfaces if is_supertoken(s)]
    assert spanning and all(len(s.split()) <= 2 and len(s) <= 8 for s in spanning), spanning


def test_word_groups_give_the_text_back() -> None:
    text = "  Eins zwei drei.\nvier  fünf\tsechs sieben acht  "
    groups = word_groups(text, 3, random.Random(0))
    assert "".join(groups) == text.rstrip()
    assert all(1 <= len(g.split()) <= 3 for g in groups)
    assert is_supertoken(b" of the") and is_supertoken(b"e ") and not is_supertoken(b"  the") and not is_supertoken(b"the\n")


def test_transplant_model_takes_it(trained: tuple[Path, str, bool], corpus_file: Path, tmp_path: Path) -> None:
    """The new tokenizer goes through `transplant model` (subword); a supertoken's row is the
    mean of the base rows of the words it spans."""
    out, _, supertokens = trained
    base_tokenizer = bpe_tokenizer(corpus_file, vocab_size=300)
    base = tiny_llama(base_tokenizer, tmp_path / "base", tied=True)
    done = transplant.model(str(base), str(out), tmp_path / "model", method="subword")
    model = AutoModelForCausalLM.from_pretrained(done.out)
    new = AutoTokenizer.from_pretrained(done.out)
    assert model.get_input_embeddings().weight.shape[0] >= len(AutoTokenizer.from_pretrained(out))
    ids = torch.tensor([new("The garden is one of the best today.")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()
    if supertokens:
        rows = load_file(done.out / "model.safetensors")["model.embed_tokens.weight"].float()
        base_rows = load_file(base / "model.safetensors")["model.embed_tokens.weight"].float()
        spanning = next(i for i, s in enumerate(vocabulary(new).surfaces) if is_supertoken(s))
        pieces = base_tokenizer(new.decode([spanning]), add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(rows[spanning], base_rows[pieces].mean(0), atol=1e-3, rtol=1e-3)


def test_cli(corpus: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", str(VOCAB), "-o", str(out)]
    result = runner.invoke(app, [*args, "--supertokens", "--max-words", "3"])
    assert result.exit_code == 0, result.output
    assert "spanning words" in result.output and (out / "tokenizer.json").is_file()
    for extra, fragment in [([], "exists; pass --force"), (["--force", "--max-words", "3"], "add --supertokens"),
                            (["--force", "--kind", "wordpiece"], "--kind must be one of"),
                            (["--force", "--vocab-size", "100"], "--vocab-size must be at least")]:
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 2 and result.output.startswith("error:") and fragment in result.output, result.output
    assert json.loads((out / "transplant-tokenizer.json").read_text())["supertokens"]["max_words"] == 3
