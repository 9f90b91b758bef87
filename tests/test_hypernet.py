"""ZeTT hypernetwork: step 0 is `subword`, sampled tokenizers are total, training learns,
resumes and runs on two processes, and a hypernetwork only applies to its own base."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import bpe_tokenizer, long_documents, micro_loss, tiny_llama
from transplant.hypernet.sampler import SamplerConfig, TokenizerSampler
from transplant.hypernet.zett_train import HypernetTask, HypernetTrainConfig
from transplant.hypernet.fingerprint import BaseSample, base_hash
from transplant.hypernet.zett import HyperNetwork, HypernetConfig, ZettOptions, save_hypernet
from transplant.errors import UserError
from transplant.methods import registry
from transplant.methods.base import Context
from transplant.methods.baselines import subword_rows
from transplant.pipeline import TransplantConfig, transplant
from transplant.io.tokenizer import load_tokenizer
from transplant.training.loop import config_dict, fit, load_config, make_accelerator, run_directory
from transplant.vocab.matching import match_vocabularies

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def match(corpus_file: Path, sp_model: Path):
    return match_vocabularies(bpe_tokenizer(corpus_file), load_tokenizer(str(sp_model)))


def context(match, tied: bool, hidden: int = 24, seed: int = 0, hypernet: Path | None = None) -> Context:
    g = torch.Generator().manual_seed(seed)
    rows = len(match.base_vocab)
    return Context(
        match=match,
        base_input=torch.randn(rows, hidden, generator=g),
        base_output=None if tied else torch.randn(rows, hidden, generator=g),
        options=None if hypernet is None else ZettOptions(hypernet=str(hypernet)),
    )


def untrained(ctx: Context, out: Path) -> Path:
    config = HypernetConfig(ctx.base_input.shape[1], ctx.base_output is None,
                            base_hash(ctx.match.base_vocab.tokens, ctx.base_input, ctx.base_output), width=32)
    torch.manual_seed(0)
    save_hypernet(HyperNetwork(config, ctx.base_input, ctx.base_output), out,
                  BaseSample.of(ctx.match.base_vocab.tokens, ctx.base_input, ctx.base_output))
    return out


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_step_zero_is_subword(match, tied: bool, tmp_path: Path) -> None:
    ctx = context(match, tied)
    ctx.options = ZettOptions(hypernet=str(untrained(ctx, tmp_path / "hn")))
    zett = registry.get("zett")()
    for which in ("input", "output"):
        rows = zett.init_rows(ctx, which, match.missing)
        assert rows.dtype == torch.float32 and torch.isfinite(rows).all()
        assert (rows - subword_rows(ctx, which, match.missing)).abs().max() <= 1e-6
    assert any(len(match.decompose(i)) > 1 for i in match.missing.tolist())  # not only one-piece tokens


def test_token_without_pieces_gets_the_mean_row() -> None:
    base = torch.randn(50, 24)
    model = HyperNetwork(HypernetConfig(24, True, "", width=32), base, None)
    with torch.no_grad():
        model.heads["input"].weight.normal_()  # a trained head must not reach an empty token either
        rows, _ = model(torch.tensor([[-1, -1], [3, -1]]))
    assert torch.equal(rows[0], base.mean(0)) and not torch.equal(rows[1], base[3])


def test_wrong_base_is_refused_in_one_line(match, tmp_path: Path) -> None:
    directory = untrained(context(match, tied=True), tmp_path / "hn")
    zett = registry.get("zett")()
    for other in (context(match, tied=True, seed=1), context(match, tied=False), context(match, tied=True, hidden=16)):
        other.options = ZettOptions(hypernet=str(directory))
        with pytest.raises(UserError) as e:
            zett.init_rows(other, "input", match.missing)
        assert "trained for" in str(e.value) and "\n" not in str(e.value)


def test_options_need_a_hypernetwork_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--hypernet"):
        ZettOptions()
    with pytest.raises(UserError, match="not a zett hypernetwork"):
        ZettOptions(hypernet=str(tmp_path))


def random_unicode(rng: random.Random, length: int) -> str:
    """Mixed scripts, emoji, combining marks and control characters (no lone surrogates:
    they are not text and cannot be UTF-8 encoded)."""
    ranges = [(0x00, 0x7F), (0x80, 0x24F), (0x300, 0x36F), (0x400, 0x4FF), (0x3040, 0x30FF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(length))


def test_every_sampled_tokenizer_covers_any_string(corpus_file: Path) -> None:
    sampler = TokenizerSampler(SamplerConfig(min_vocab=50, max_vocab=400, noise_std=1.0, queue_texts=9))
    text = corpus_file.read_text()
    sampler.push([text[i : i + 400] for i in range(0, 3200, 400)] + ["日本語のテキスト 😀 Ünïcödé"])
    rng = random.Random(0)
    for seed in range(4):
        tokenizer = sampler.sample(np.random.default_rng(seed))
        assert tokenizer.get_vocab_size() > 256  # the 256 bytes and real pieces
        for _ in range(25):
            s = random_unicode(rng, rng.randint(0, 40))
            encoding = tokenizer.encode(s, add_special_tokens=False)
            assert tokenizer.decode(encoding.ids) == s
            assert all(0 <= i < tokenizer.get_vocab_size() for i in encoding.ids)
    sizes = {sampler.sample(np.random.default_rng(seed)).get_vocab_size() for seed in range(4)}
    assert len(sizes) > 1  # the vocabulary size is drawn per step


# --- training on a tiny model -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zett")
    corpus = root / "train.txt"
    corpus.write_text(corpus_file.read_text().replace("\n", "\n\n"))
    return {"base": tiny_llama(bpe_tokenizer(corpus_file), root / "base", tied=True), "corpus": corpus, "root": root}


def tiny_config(tiny: dict[str, Path], out: Path, **overrides) -> HypernetTrainConfig:
    values = dict(base=str(tiny["base"]), corpus=[str(tiny["corpus"])], out=str(out), steps=6, warmup_steps=1,
                  lr=3e-3, batch_size=2, seq_len=32, min_vocab=100, max_vocab=300, negatives=64, queue_texts=8,
                  width=32, mixed_precision="no", log_every=100, save_every=2, shuffle_buffer=0, base_tokenizer_steps=1)
    return load_config(HypernetTrainConfig, None, **(values | overrides))


def test_one_step_lowers_the_loss_on_a_fixed_batch(tiny: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(tiny, tmp_path / "hn", queue_texts=2)
    task = HypernetTask(cfg, make_accelerator(cfg))
    texts = list(task.examples(0))[:2]
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=1e-2)
    before = micro_loss(task, texts, step=5, seed=7)  # step 5 > warm-up: a sampled tokenizer
    before.loss.backward()
    optimizer.step()
    after = micro_loss(task, texts, step=5, seed=7)
    assert after.metrics["vocab"] == before.metrics["vocab"]  # same sampled tokenizer, same batch
    assert after.loss.item() < before.loss.item()


def test_a_long_document_does_not_fill_the_first_batches(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Examples are shuffled after the cut, as for ``transplant train`` (test_continued)."""
    corpus = long_documents(tmp_path / "long.jsonl")
    cfg = tiny_config(tiny, tmp_path / "hn", corpus=[str(corpus)], shuffle_buffer=200)
    stream = HypernetTask(cfg, make_accelerator(cfg)).examples(0)
    first = [next(stream) for _ in range(12)]
    assert len({f"doc{d}" for d in range(6) if any(f"doc{d}" in text for text in first)}) >= 3


class Crash(Exception):
    pass


class CrashingTask(HypernetTask):
    crash_at: int | None = None

    def prepare(self, texts, step, seed):
        if step == self.crash_at:
            raise Crash
        return super().prepare(texts, step, seed)


def train_tiny(cfg: HypernetTrainConfig, crash_at: int | None = None) -> list[dict]:
    accelerator = make_accelerator(cfg)
    task = CrashingTask(cfg, accelerator)
    task.crash_at = crash_at
    try:
        with run_directory(cfg.run_path, config_dict(cfg), cfg.resume, accelerator):
            fit(task, cfg, cfg.run_path, accelerator, resume=cfg.resume)
    except Crash:
        pass
    return [json.loads(line) for line in (cfg.run_path / "log.jsonl").read_text().splitlines()]


def test_resume_continues_step_count_and_loss_curve(tiny: dict[str, Path], tmp_path: Path) -> None:
    whole = train_tiny(tiny_config(tiny, tmp_path / "whole"))
    train_tiny(tiny_config(tiny, tmp_path / "cut"), crash_at=3)  # checkpoint at step 2, dies in step 4
    resumed = train_tiny(tiny_config(tiny, tmp_path / "cut", resume=True))
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], rel=1e-6)
    weights = [load_file(tmp_path / d / "model.safetensors") for d in ("whole", "cut")]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-7) for k in weights[0])
    assert weights[0]["heads.input.weight"].abs().sum() > 0  # it did train


@pytest.fixture(scope="module")
def trained(tiny: dict[str, Path]) -> Path:
    out = tiny["root"] / "hn"
    with pytest.MonkeyPatch.context() as env:  # module scope runs before the per-test cache isolation
        env.setenv("TRANSPLANT_CACHE", str(tiny["root"] / "cache"))
        train_tiny(tiny_config(tiny, out, steps=3))
    return out


def test_zett_transplant_end_to_end(tiny: dict[str, Path], trained: Path, sp_model: Path, tmp_path: Path) -> None:
    common = dict(base=str(tiny["base"]), tokenizer=str(sp_model))
    zett = transplant(TransplantConfig(out=tmp_path / "zett", method="zett", options={"hypernet": str(trained)}, **common))
    subword = transplant(TransplantConfig(out=tmp_path / "subword", method="subword", **common))
    assert zett.counts == subword.counts and zett.counts["initialized"] > 0
    record = json.loads((tmp_path / "zett" / "transplant.json").read_text())
    assert record["method"] == "zett" and record["options"]["hypernet"] == str(trained)
    rows = [load_file(tmp_path / d / "model.safetensors")["model.embed_tokens.weight"] for d in ("zett", "subword")]
    assert rows[0].shape == rows[1].shape and not torch.equal(rows[0], rows[1])  # trained heads moved the rows

    other = tiny_llama(bpe_tokenizer(tiny["corpus"]), tmp_path / "other", tied=True, seed=1)
    with pytest.raises(UserError, match="trained for another base"):
        transplant(TransplantConfig(base=str(other), tokenizer=str(sp_model), out=tmp_path / "x", method="zett",
                                    options={"hypernet": str(trained)}))


def test_predict_all_predicts_exact_matches_but_keeps_specials(tiny: dict[str, Path], trained: Path, sp_model: Path,
                                                               tmp_path: Path) -> None:
    common = dict(base=str(tiny["base"]), tokenizer=str(sp_model), method="zett")
    copied = transplant(TransplantConfig(out=tmp_path / "copied", options={"hypernet": str(trained)}, **common))
    predicted = transplant(TransplantConfig(out=tmp_path / "all", options={"hypernet": str(trained), "predict_all": "true"},
                                            **common))
    assert predicted.counts["copied"] == predicted.counts["special_matched"] < copied.counts["copied"]
    assert predicted.counts["initialized"] == copied.counts["initialized"] + copied.counts["copied"] - predicted.counts["copied"]
    rows = {d: load_file(tmp_path / d / "model.safetensors")["model.embed_tokens.weight"] for d in ("copied", "all")}
    new = load_tokenizer(str(sp_model))
    specials = [new.convert_tokens_to_ids(t) for t in ("<s>", "</s>")]
    assert torch.equal(rows["all"][specials], rows["copied"][specials])
    initialized = load_file(tmp_path / "all" / "initialized.safetensors")["initialized"]
    moved = initialized & ~load_file(tmp_path / "copied" / "initialized.safetensors")["initialized"]
    assert moved.sum() > 0 and not torch.equal(rows["all"][moved], rows["copied"][moved])


def test_two_process_accelerate_launch_trains_what_one_process_does(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Two processes of 2 texts a step against one process of 4: every step samples its tokenizer
    and its negatives for the global batch, so the two runs train the same hypernetwork."""
    one = train_tiny(tiny_config(tiny, tmp_path / "one", steps=3, batch_size=4))
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        "from safetensors.torch import save_file\n"
        "from transplant.hypernet.zett_train import HypernetTask, HypernetTrainConfig\n"
        "from transplant.training.loop import fit, load_config, make_accelerator\n"
        f"cfg = load_config(HypernetTrainConfig, None, **{vars(tiny_config(tiny, tmp_path / 'hn', steps=3))!r})\n"
        "accelerator = make_accelerator(cfg)\n"
        "task = HypernetTask(cfg, accelerator)\n"
        "fit(task, cfg, cfg.run_path, accelerator)\n"
        "save_file(dict(task.model.state_dict()), Path(cfg.out) / f'rank{accelerator.process_index}.safetensors')\n"
    )
    # `--cpu` alone would need mpirun for two processes; torchrun's launcher (`--multi_gpu`) with
    # ACCELERATE_USE_CPU gives two CPU processes on gloo
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(tmp_path / "hn" / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    exported, alone = (load_file(tmp_path / d / "model.safetensors") for d in ("hn", "one"))
    assert exported.keys() == alone.keys()
    # float noise: two half-batches' gradients averaged vs one batch's. Adam makes a step of it where
    # the true gradient is zero (the attention's key bias: softmax ignores a shift shared by all
    # keys): measured 2e-5 there, under 4e-7 elsewhere, against steps of lr 3e-3
    for name in alone:
        torch.testing.assert_close(exported[name], alone[name], rtol=1e-5, atol=1e-4, msg=name)
    assert alone["heads.input.weight"].abs().sum() > 0  # it did train
    two = [json.loads(line) for line in (tmp_path / "hn" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    assert [r["vocab"] for r in two] == [r["vocab"] for r in one]  # the same sampled tokenizers
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]  # both ranks' tokens counted
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "hypernet").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_load(recipe: Path, tiny: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(HypernetTrainConfig, recipe, corpus=[str(tiny["corpus"])], out=str(tmp_path / "hn"))
    assert cfg.base == "smollm2-135m" and cfg.steps > 0


def test_config_refuses_unknown_keys_before_loading(tiny: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("base: smollm2-135m\nwidht: 256\n")
    with pytest.raises(UserError, match="unknown config key 'widht'"):
        load_config(HypernetTrainConfig, recipe, corpus=[str(tiny["corpus"])], out=str(tmp_path / "hn"))
    with pytest.raises(UserError, match="corpus not found"):
        load_config(HypernetTrainConfig, None, base="x", corpus=[str(tmp_path / "none.txt")], out=str(tmp_path / "hn"))


def test_evaluation_reads_its_budget_shows_progress_and_states_its_cost(tiny: dict[str, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """A user's first evaluation ran 14 silent minutes (8 documents x 14 groups of up to 72k
    characters): the text read is now capped per group, windows are reported as they are
    scored, and the first evaluation says what it costs against training."""
    eval_corpus = tmp_path / "eval.jsonl"
    long_doc = " ".join(["word"] * 5_000)  # 25k characters
    eval_corpus.write_text("".join(json.dumps({"text": long_doc, "lang": lang}) + "\n" for lang in ("en", "de")))
    cfg = tiny_config(tiny, tmp_path / "hn", steps=2, eval_corpus=str(eval_corpus), eval_chars=2_000)
    records = train_tiny(cfg)
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("evaluation:")]
    assert len(said) == 1 and "2 documents" in said[0] and "eval_chars 2,000" in said[0], out
    tokens = int(said[0].split(", ")[1].split(" tokens")[0].replace(",", ""))
    assert 0 < tokens < 2 * 2_000  # the two capped documents, not 50k characters
    assert "evaluating: windows" in out
    assert [set(r["eval"]) for r in records if "eval" in r][0] == {"bpb", "bpb/en", "bpb/de"}
    with pytest.raises(UserError, match="eval_chars"):
        tiny_config(tiny, tmp_path / "hn2", eval_chars=0)


def test_a_finished_hypernetwork_is_registered_for_auto(tiny: dict[str, Path], tmp_path: Path) -> None:
    from transplant.hypernet import catalog

    out = tmp_path / "hn"
    train_tiny(tiny_config(tiny, out, steps=1))
    assert [entry.path for entry in catalog.entries("zett")][0] == str(out.resolve())
