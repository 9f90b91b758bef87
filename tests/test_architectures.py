"""Every decoder-only architecture people bring, built tiny and random from its own config class.

For each architecture, tied and untied: ``transplant.model`` with every method family
(subword, OMP from a donor, TokenAdapt, FOCUS, a ZeTT hypernetwork trained here for two
steps) writes a checkpoint that plain ``AutoModelForCausalLM.from_pretrained`` loads with
nothing missing, with the new vocabulary size and special ids; on the copied tokens it
computes exactly what the base computes (copied rows bit for bit, embedding scales, logit
soft-caps and scales untouched), and it generates. ``evaluate`` scores it and ``train``
runs two steps with ``rows: new`` and ``rows: all``. Architectures a transplant cannot
handle are refused in one line naming why.

The fast suite runs each architecture's own default tying through everything and the other
tying through the transplants; ``-m slow`` adds training and scoring of the other tying.
``docs/architectures.md`` is this file's table.
"""

from __future__ import annotations

import functools
import gc
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer,
    PreTrainedTokenizerFast,
)
from typer.testing import CliRunner

import transplant
from conftest import assert_refused, make_text, tiny_llama
from test_methods import spelled_out
from transplant.cli import app
from transplant.hypernet.zett_train import embedding_scale, step_logits
from transplant.io.tokenizer import load_tokenizer
from transplant.vocab.matching import match_vocabularies

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128)
# model_type -> what its config needs beyond SIZES: tiny experts and heads, and scalings set
# away from 1 so that a method or trainer that ignores them shows
ARCHS: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2": {},
    "qwen3": dict(head_dim=8),
    "qwen3_moe": dict(head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "gemma2": dict(head_dim=8, final_logit_softcapping=2.0),  # logit soft-cap, scaled hidden input
    "gemma3_text": dict(head_dim=8, final_logit_softcapping=2.0),  # the embedding module scales by sqrt(d)
    "phi3": {},
    "olmo2": {},
    "granite": dict(embedding_multiplier=3.0, logits_scaling=4.0),
    "starcoder2": {},
    "gpt_neox": {},  # its head is stored as embed_out
    "gpt2": {},  # Conv1D layers, wte
    "falcon": {},
    "cohere": dict(logit_scale=0.5),
    "gemma": dict(head_dim=8),
    "olmo": {},
    "stablelm": {},
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    "gpt_bigcode": {},
    "bloom": {},
    "opt": {},
    "smollm3": {},
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "cohere2": dict(logit_scale=0.5),
    "glm4": dict(head_dim=8),
    "exaone4": {},
    "mpt": {},
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "gpt_oss": dict(head_dim=8, num_local_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(  # multi-head latent attention (no grouped kv heads), routed experts
        num_key_value_heads=4, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, kv_lora_rank=8, q_lora_rank=16,
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, n_group=1, topk_group=1,
        first_k_dense_replace=1),
}
METHODS = ("subword", "omp", "tokenadapt", "focus", "zett")


def default_tied(arch: str) -> bool:
    return bool(CONFIG_MAPPING[arch]().tie_word_embeddings)


def case(arch: str, tied: bool, *marks: pytest.MarkDecorator):
    return pytest.param(arch, tied, marks=marks, id=f"{arch}-{'tied' if tied else 'untied'}")


def tied_and_untied(heavy: bool) -> list:
    """(arch, tied) cases: the architecture's own default always; the other one in the slow
    suite when ``heavy`` (training, scoring), always otherwise."""
    return [case(arch, tied, *([pytest.mark.slow] if heavy and tied != default_tied(arch) else []))
            for arch in ARCHS for tied in (default_tied(arch), not default_tied(arch))]


def own_tying(*marks_of: tuple[str, pytest.MarkDecorator]) -> list:
    """Each architecture once, with its own default tying; ``(arch, mark)`` pairs mark some."""
    marks = dict(marks_of)
    return [case(arch, default_tied(arch), *([marks[arch]] if arch in marks else [])) for arch in ARCHS]


def build(arch: str, tied: bool, tokenizer: PreTrainedTokenizerFast, out: Path) -> Path:
    """A random model of ``arch`` from its own config class, saved with the tokenizer; its
    embeddings redrawn from N(0, 1) so that a copied row is told apart from an initialized one."""
    ids = {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "pad")}
    config = CONFIG_MAPPING[arch](vocab_size=len(tokenizer), tie_word_embeddings=tied, **ids, **SIZES | ARCHS[arch])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1)
        if not tied:
            model.get_output_embeddings().weight.normal_(0, 1)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """Training calls ``gc.collect`` (accelerate's ``free_memory``), which walks every object
    alive: here the modeling code of thirty architectures, 0.5 s a call. That code is imported
    first and set aside for the module's duration (``gc.freeze``); the module's own objects
    are collected as usual."""
    for arch in ARCHS:
        MODEL_FOR_CAUSAL_LM_MAPPING[CONFIG_MAPPING[arch]]
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arch-texts")
    # spelled-out words: the single letters both vocabularies share get fastText vectors (FOCUS)
    (root / "train.txt").write_text(make_text(seed=1, lines=300).replace("\n", "\n\n", 60) + "\n" + spelled_out(1, 150))
    (root / "dev.jsonl").write_text("".join(json.dumps({"text": t, "lang": "en"}) + "\n"
                                            for t in make_text(seed=2, lines=3).splitlines()))
    return root


@pytest.fixture(scope="module")
def bases(bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(bpe_dir)
    return functools.cache(lambda arch, tied: build(arch, tied, tokenizer, tmp_path_factory.mktemp(f"{arch}-{tied}")))


@pytest.fixture(scope="module")
def donor(sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OMP's donor: a tiny llama of another width that speaks the new tokenizer."""
    return tiny_llama(load_tokenizer(str(sp_model)), tmp_path_factory.mktemp("donor"), tied=False, seed=1, hidden=16)


@pytest.fixture(scope="module")
def hypernets(bases, texts: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """``hypernet train`` for two steps (the first on the base tokenizer, the second on a sampled one)."""
    def train(arch: str, tied: bool) -> Path:
        out = tmp_path_factory.mktemp(f"hn-{arch}-{tied}") / "hn"
        return transplant.hypernet.train(
            str(bases(arch, tied)), out, corpus=[texts / "train.txt"], steps=2, batch_size=2, seq_len=32, min_vocab=100,
            max_vocab=300, negatives=64, queue_texts=8, width=32, mixed_precision="no", shuffle_buffer=0,
            base_tokenizer_steps=1)

    return functools.cache(train)


@pytest.fixture(scope="module")
def transplants(bases, hypernets, donor: Path, encoder_dir: Path, sp_model: Path, texts: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool, str], Path]:
    def run(arch: str, tied: bool, method: str) -> Path:
        options = {"tokenadapt": {"aux_model": str(encoder_dir)},
                   "focus": {"corpus": [str(texts / "train.txt")], "ft_bucket": 10_000, "ft_min_count": 3},
                   }.get(method, {})
        if method == "zett":
            options = {"hypernet": str(hypernets(arch, tied))}
        out = tmp_path_factory.mktemp(f"{arch}-{tied}-{method}") / "model"
        return transplant.model(str(bases(arch, tied)), str(sp_model), out, method=method, options=options,
                                donor=str(donor) if method == "omp" else None).out

    return functools.cache(run)


def embedding_weights(model) -> list[torch.Tensor]:
    """The input embedding, and the head when it is a matrix of its own."""
    head = model.get_output_embeddings().weight
    return [model.get_input_embeddings().weight] + ([] if head is model.get_input_embeddings().weight else [head])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("arch", "tied"), tied_and_untied(heavy=False))
def test_transplant_loads_computes_the_base_on_copied_tokens_and_generates(arch: str, tied: bool, method: str, bases,
                                                                           transplants) -> None:
    base_dir, out = bases(arch, tied), transplants(arch, tied, method)
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = load_tokenizer(str(out))
    assert model.config.vocab_size == json.loads((out / "transplant.json").read_text())["counts"]["rows"]
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size
    for role in ("bos", "eos", "pad"):
        assert getattr(model.config, f"{role}_token_id") == getattr(tokenizer, f"{role}_token_id")
    assert (embedding_weights(model)[-1] is model.get_input_embeddings().weight) == tied

    match = match_vocabularies(load_tokenizer(str(base_dir)), tokenizer)
    initialized = load_file(out / "initialized.safetensors")["initialized"]
    assert initialized.nonzero().squeeze(1).tolist() == sorted(match.missing.tolist())
    for new, old in zip(embedding_weights(model), embedding_weights(base), strict=True):
        assert torch.equal(new[match.copy_new], old[match.copy_base])  # bit for bit, as stored

    # on a text of copied tokens the model is the base: same logits for every copied token
    pick = torch.arange(len(match.copy_new))[match.copy_new >= 3][:8]
    with torch.no_grad():
        logits = model(match.copy_new[pick][None]).logits[0]
        expected = base(match.copy_base[pick][None]).logits[0]
    assert torch.allclose(logits[:, match.copy_new], expected[:, match.copy_base], atol=1e-5)

    prompt = tokenizer("the house", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt.input_ids.shape[1] and int(generated.max()) < model.config.vocab_size


# transformers 5 loads the tokenizer of a qwen2 checkpoint with Qwen2Tokenizer whatever its
# tokenizer.json holds (qwen2 is in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS): another
# model's tokenizer is rebuilt as Qwen's byte-level BPE and reads text wrongly
AUTO_TOKENIZER_BROKEN = {"qwen2"}


def reads_like(tokenizer, sp_model: Path) -> bool:
    text = make_text(seed=3, lines=5) + " qzx 123 Straße"
    return tokenizer(text).input_ids == load_tokenizer(str(sp_model))(text).input_ids


@pytest.mark.parametrize(("arch", "tied"), own_tying())
def test_the_tools_loader_reads_text_as_the_new_tokenizer(arch: str, tied: bool, transplants, sp_model: Path) -> None:
    """What evaluate and train read the transplant with."""
    assert reads_like(load_tokenizer(str(transplants(arch, tied, "subword"))), sp_model)


@pytest.mark.parametrize(("arch", "tied"), own_tying(*[(arch, pytest.mark.xfail(
    reason="AutoTokenizer rebuilds a qwen2 checkpoint's tokenizer as Qwen2Tokenizer", strict=True))
    for arch in AUTO_TOKENIZER_BROKEN]))
def test_auto_tokenizer_reads_text_as_the_new_tokenizer(arch: str, tied: bool, transplants, sp_model: Path) -> None:
    assert reads_like(AutoTokenizer.from_pretrained(transplants(arch, tied, "subword")), sp_model)


@pytest.mark.parametrize(("arch", "tied"), tied_and_untied(heavy=True))
def test_evaluate_scores_the_transplant(arch: str, tied: bool, bases, transplants, texts: Path) -> None:
    scores = transplant.evaluate(transplants(arch, tied, "subword"), str(bases(arch, tied)), texts / "dev.jsonl",
                                 max_length=64)
    assert scores.ratio["overall"] > 0 and set(scores.ratio) == {"en", "overall"}


@pytest.mark.parametrize("rows", ["new", "all"])
@pytest.mark.parametrize(("arch", "tied"), tied_and_untied(heavy=True))
def test_train_two_steps(arch: str, tied: bool, rows: str, transplants, texts: Path, tmp_path: Path) -> None:
    start = transplants(arch, tied, "subword")
    trained = transplant.train(start, corpus=[texts / "train.txt"], out=tmp_path / "trained", steps=2, rows=rows,
                               stage2_steps=0, objective="lm", lr=1e-2, warmup_steps=0, batch_size=2, seq_len=32, mixed_precision="no",
                               shuffle_buffer=0)
    assert [s["steps"] for s in trained.stages] == [2]
    before = embedding_weights(AutoModelForCausalLM.from_pretrained(start))
    after = embedding_weights(AutoModelForCausalLM.from_pretrained(trained.out))
    initialized = load_file(start / "initialized.safetensors")["initialized"]
    moved = [(b != a).any(1) for b, a in zip(before, after, strict=True)]
    assert any(m[initialized].any() for m in moved)
    assert any(m[~initialized].any() for m in moved) == (rows == "all")  # rows: new keeps every copied row


@pytest.mark.parametrize(("arch", "tied"), tied_and_untied(heavy=True))
def test_hypernet_trains_two_steps(arch: str, tied: bool, hypernets) -> None:
    hn_dir = hypernets(arch, tied)
    config = json.loads((hn_dir / "config.json").read_text())
    steps = [json.loads(line)["step"] for line in (hn_dir / "log.jsonl").read_text().splitlines()]
    assert config["config"]["tied"] == tied and steps == [1, 2]


@pytest.mark.parametrize(("arch", "tied"), own_tying())
def test_zett_step_logits_are_the_models_own(arch: str, tied: bool, bases) -> None:
    """The hypernetwork trainer runs the frozen LM on predicted rows through ``step_logits``:
    with the base's own rows it must give the model's logits, whatever the architecture
    scales (embeddings, logits) or caps."""
    lm = AutoModelForCausalLM.from_pretrained(bases(arch, tied)).eval()
    ids = torch.tensor([[3, 17, 40, 41, 200, 5]])
    embeds = lm.get_input_embeddings().weight[ids] * embedding_scale(lm)
    with torch.no_grad():
        logits = step_logits(lm, embeds, torch.ones_like(ids), lm.get_output_embeddings().weight)
        expected = lm(ids).logits
    assert torch.allclose(logits, expected, atol=1e-5)


# --- what cannot be transplanted ----------------------------------------------------------

TINY_TEXT = SIZES | dict(head_dim=8)
TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                   patch_size=14)
PER_LAYER_EMBEDDINGS = dict(num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"],
                            hidden_size_per_layer_input=8, laurel_rank=4, activation_sparsity_pattern=[0.0, 0.0],
                            altup_num_inputs=2)  # plus vocab_size_per_layer_input, the tokenizer's size
T5 = dict(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
BART = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32)
REFUSED: dict[str, tuple[str, dict, str]] = {  # case -> (model_type, config, what its one line says)
    "t5": ("t5", T5, "is an encoder-decoder"),
    "bart": ("bart", BART, "is an encoder-decoder"),
    "gemma3-vision": ("gemma3", dict(text_config=TINY_TEXT, vision_config=TINY_VISION, mm_tokens_per_image=4),
                      "has vision_config beside its language model"),
    "gemma3n-per-layer": ("gemma3n_text", TINY_TEXT | PER_LAYER_EMBEDDINGS,
                          "has several token embeddings (model.embed_tokens_per_layer"),
    "phi-head-bias": ("phi", SIZES, "has a bias per token on its output layer"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_unsupported_architectures_are_refused_in_one_line(name: str, bpe_dir: Path, sp_model: Path, tmp_path: Path,
                                                           record_property) -> None:
    arch, settings, why = REFUSED[name]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(bpe_dir)
    if arch == "gemma3n_text":
        settings = settings | dict(vocab_size_per_layer_input=len(tokenizer))
    config = CONFIG_MAPPING[arch](vocab_size=len(tokenizer), **settings)
    torch.manual_seed(0)
    model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model_class.from_config(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["model", str(tmp_path / "base"), "-t", str(sp_model), "-o", str(out)])
    assert_refused(result, f"a {arch} model {why}")
    record_property("refusal", result.output.strip().split(": ", 2)[-1])  # for docs/architectures.md
    assert not out.exists()
