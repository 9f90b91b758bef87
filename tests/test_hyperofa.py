"""HyperOFA: word sets by hand, training recovers a known linear map of the word vectors,
the CLI end to end on a tiny model, and a hypernetwork only applies to its own base."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from gensim.models import KeyedVectors
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from transplant.cli import app
from conftest import WORDS, bpe_tokenizer, tiny_llama
from transplant.hypernet.fingerprint import BaseSample, base_hash
from transplant.hypernet.hyperofa import HyperOfaConfig, HyperOfaNetwork, HyperOfaOptions, load_hyperofa, predict
from transplant.hypernet.hyperofa_train import Best, HyperOfaTask, HyperOfaTrainConfig
from transplant.hypernet.wordsets import WordSets, build_word_sets, split_words, token_word_pairs
from transplant.errors import UserError
from transplant.vocab.surface import vocabulary
from transplant.io.tokenizer import load_tokenizer
from transplant.training.loop import fit, load_config, make_accelerator

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


# --- word sets -----------------------------------------------------------------------------


def wordpiece() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "play": 1, "##ing": 2, "##ed": 3, "run": 4, "##s": 5, "walk": 6}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def test_word_sets_by_hand() -> None:
    tokenizer = wordpiece()
    words = ["playing", "play", "played", "runs", "walk", "xyz"]  # most frequent first
    sets = build_word_sets(tokenizer, vocabulary(tokenizer), words, {w: i for i, w in enumerate(words)}, max_words=2)
    assert sets.words.tolist() == [
        [-1, -1],  # [UNK] ("xyz") is special: no set
        [0, 1],  # play: playing, play (played is the third: cut by max_words, least frequent first)
        [0, -1],  # ##ing: playing
        [2, -1],  # ##ed: played
        [3, -1],  # run: runs
        [3, -1],  # ##s: runs
        [4, -1],  # walk
    ]
    assert sets.surface.tolist() == [-1, 1, -1, -1, -1, -1, 4]  # "play" and "walk" are words themselves
    assert sets.covered.tolist() == [False] + [True] * 6
    assert sets.inputs(torch.tensor([1, 4])).tolist() == [[1, 0, 1], [-1, 3, -1]]


def test_word_sets_hold_both_spellings_of_a_byte_level_word(corpus_file: Path) -> None:
    """A byte-level BPE spells a word after a space (``Ġword``) and at a line start
    (``word``) with different tokens: both kinds of token get the word."""
    tokenizer = bpe_tokenizer(corpus_file)
    words = sorted(set(WORDS))
    sets = build_word_sets(tokenizer, vocabulary(tokenizer), words, {}, max_words=len(words))
    for i, word in enumerate(words):
        for spelled in (" " + word, word):
            for token in tokenizer(spelled, add_special_tokens=False)["input_ids"]:
                assert i in sets.words[token].tolist(), (word, tokenizer.convert_ids_to_tokens(token))
    assert (sets.surface == -1).all()
    spaced = tokenizer(" playing", add_special_tokens=False)["input_ids"]
    bare = tokenizer("playing", add_special_tokens=False)["input_ids"]
    assert spaced != bare
    tokens, word_index = token_word_pairs(tokenizer, ["playing"])
    assert tokens.tolist() == spaced + bare and word_index.tolist() == [0] * len(spaced + bare)


def test_split_words() -> None:
    assert split_words(["Die Straße (über 3 km) ist grün.", ""]) == [["Die", "Straße", "über", "3", "km", "ist", "grün"], []]


# --- training recovers a linear map ----------------------------------------------------------


def synthetic(tokens: int = 3000, words: int = 400, dim: int = 16, hidden: int = 24, width: int = 10):
    """Word sets of random words (1-10 per token, half with an own-surface vector) and
    targets that are a fixed linear map of the mean of each set's (unit) word vectors."""
    g = torch.Generator().manual_seed(0)
    vectors = F.normalize(torch.randn(words, dim, generator=g), dim=1)
    table = torch.randint(0, words, (tokens, width), generator=g)
    sizes = torch.randint(1, width + 1, (tokens, 1), generator=g)
    table = torch.where(torch.arange(width) < sizes, table, -1)
    surface = torch.where(torch.rand(tokens, generator=g) < 0.5, torch.randint(0, words, (tokens,), generator=g), -1)
    sets = WordSets(surface=surface, words=table)
    inputs = sets.inputs(torch.arange(tokens))
    present = (inputs >= 0).unsqueeze(-1).float()
    mean = (vectors[inputs.clamp(min=0)] * present).sum(1) / present.sum(1)
    linear_map = torch.randn(hidden, dim, generator=g)
    return sets, vectors, mean @ linear_map.T


def test_training_recovers_a_linear_map_of_the_word_vectors(tmp_path: Path) -> None:
    sets, vectors, targets = synthetic()
    words = [f"w{i}" for i in range(len(vectors))]
    vec_file = tmp_path / "vectors.vec"
    keyed = KeyedVectors(vectors.shape[1])
    keyed.add_vectors(words, vectors.numpy())
    keyed.save_word2vec_format(str(vec_file))
    cfg = load_config(HyperOfaTrainConfig, None, base="synthetic", out=str(tmp_path / "hn"), vectors=str(vec_file),
                      steps=400, warmup_steps=20, lr=3e-3, batch_size=128, eval_every=50, save_every=1000,
                      log_every=1000, width=64, heads=4, holdout=0.1, mixed_precision="no")
    tokens = [f"t{i}" for i in range(len(targets))]
    config = HyperOfaConfig(targets.shape[1], True, base_hash(tokens, targets, None), vectors.shape[1], len(words),
                            width=cfg.width, heads=cfg.heads)
    torch.manual_seed(0)
    model = HyperOfaNetwork(config, vectors)
    accelerator = make_accelerator(cfg)
    task = HyperOfaTask(cfg, model, sets, words, {"input": targets}, torch.arange(len(targets)), accelerator.device, {},
                        BaseSample.of(tokens, targets, None))
    fit(task, cfg, cfg.run_path, accelerator)

    log = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in log if "eval" in r]
    assert evals[0]["cos/input"] < 0.5 < 0.95 < task.best.figures["cos/input"]
    # the directory holds the best weights: its predictions for the held-out tokens agree
    model, saved_words, relation = load_hyperofa(Path(cfg.out), tokens, targets, None)
    assert relation["relation"] == "same"
    held = task.heldout
    predicted = predict(model, sets.inputs(held), "input")
    assert saved_words == words and len(held) == 300
    assert F.cosine_similarity(predicted, targets[held]).mean() > 0.95
    record = json.loads((Path(cfg.out) / "config.json").read_text())
    assert record["heldout_ids"] == held.tolist() and record["best_step"] == task.best.step > 0


@pytest.mark.parametrize(("patience", "step", "best_step", "stop"), [
    (2, 200, 100, True),  # two evaluations (every 50 steps) after the best one: stop
    (2, 150, 100, False),  # one: go on
    (0, 1000, 0, False),  # patience 0: every step runs
])
def test_early_stopping_after_patience_evaluations_without_a_better_loss(patience: int, step: int, best_step: int,
                                                                         stop: bool) -> None:
    task = SimpleNamespace(cfg=SimpleNamespace(patience=patience, eval_every=50), step=step, best=Best(step=best_step))
    assert HyperOfaTask.should_stop(task) is stop


def test_config_refusals(tmp_path: Path, corpus_file: Path) -> None:
    common = dict(base="smollm2-135m", out=str(tmp_path / "hn"))
    with pytest.raises(UserError, match="patience"):
        load_config(HyperOfaTrainConfig, None, vectors=str(corpus_file), patience=-1, **common)
    with pytest.raises(UserError, match="--vectors FILE or --train-vectors"):
        load_config(HyperOfaTrainConfig, None, **common)
    with pytest.raises(UserError, match="--vectors FILE or --train-vectors"):
        load_config(HyperOfaTrainConfig, None, vectors=str(corpus_file), train_vectors=[str(corpus_file)], **common)
    with pytest.raises(UserError, match="word vectors not found"):
        load_config(HyperOfaTrainConfig, None, vectors=str(tmp_path / "none.vec"), **common)
    with pytest.raises(UserError, match="corpus not found"):
        load_config(HyperOfaTrainConfig, None, train_vectors=[str(tmp_path / "none.txt")], **common)
    with pytest.raises(UserError, match="fastText"):
        load_config(HyperOfaTrainConfig, None, train_vectors=[str(corpus_file)], vector_dim=0, **common)
    with pytest.raises(UserError, match="--method hyperofa needs --hypernet"):
        HyperOfaOptions()
    with pytest.raises(UserError, match="not a hyperofa hypernetwork"):
        HyperOfaOptions(hypernet=str(tmp_path))


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "hypernet" / "hyperofa").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_load(recipe: Path, corpus_file: Path, tmp_path: Path) -> None:
    cfg = load_config(HyperOfaTrainConfig, recipe, train_vectors=[str(corpus_file)], out=str(tmp_path / "hn"))
    assert cfg.base == "smollm2-135m" and cfg.steps > 0


# --- the CLI end to end -------------------------------------------------------------------


def test_cli_trains_applies_and_refuses_another_base(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    base = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "base", tied=False)
    settings = tmp_path / "hn.yaml"
    settings.write_text("steps: 30\nwarmup_steps: 2\nbatch_size: 32\neval_every: 10\nsave_every: 100\nwidth: 32\n"
                        "heads: 2\nholdout: 0.1\nvector_dim: 16\nvector_min_count: 2\nvector_epochs: 2\n"
                        "mixed_precision: 'no'\n")
    hn = tmp_path / "hn"
    trained = runner.invoke(app, ["hypernet", "train", "--kind", "hyperofa", "--base", str(base), "--train-vectors",
                                  str(corpus_file), "--config", str(settings), "-o", str(hn)])
    assert trained.exit_code == 0, trained.output
    record = json.loads((hn / "config.json").read_text())
    assert record["format"] == "transplant-hyperofa-1" and not record["config"]["tied"]
    assert set(record["heldout"]) >= {"loss", "cos/input", "cos/output"}

    out = tmp_path / "out"
    applied = runner.invoke(app, ["model", str(base), "-t", str(sp_model), "-o", str(out), "--method", "hyperofa",
                                  "--hypernet", str(hn)])
    assert applied.exit_code == 0, applied.output
    subword = runner.invoke(app, ["model", str(base), "-t", str(sp_model), "-o", str(tmp_path / "subword"),
                                  "-m", "subword"])
    assert subword.exit_code == 0, subword.output
    assert json.loads((out / "transplant.json").read_text())["method"] == "hyperofa"

    new = load_tokenizer(str(sp_model))
    words = json.loads((hn / "words.json").read_text())
    covered = build_word_sets(new, vocabulary(new), words, {w: i for i, w in enumerate(words)}).covered
    initialized = load_file(out / "initialized.safetensors")["initialized"]
    covered = F.pad(covered, (0, len(initialized) - len(covered)))  # the base's chat markers, added to the new vocabulary
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = {d: load_file(tmp_path / d / "model.safetensors")[name] for d in ("out", "subword")}
        by_vectors, fallback = initialized & covered, initialized & ~covered
        assert by_vectors.sum() > 0 and fallback.sum() > 0  # both kinds occur in this vocabulary
        assert not torch.isclose(rows["out"][by_vectors], rows["subword"][by_vectors]).all(1).any()
        assert torch.equal(rows["out"][fallback], rows["subword"][fallback])
        assert torch.equal(rows["out"][~initialized], rows["subword"][~initialized])

    other = tiny_llama(bpe_tokenizer(corpus_file), tmp_path / "other", tied=False, seed=1)
    refused = runner.invoke(app, ["model", str(other), "-t", str(sp_model), "-o", str(tmp_path / "x"), "--method",
                                  "hyperofa", "--hypernet", str(hn)])
    assert refused.exit_code == 2 and "trained for another base" in refused.output
    assert not (tmp_path / "x").exists()
