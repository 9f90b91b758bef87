"""Shared fixtures: real (tiny) models and tokenizers built from text the tests write."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from transplant.training.loop import step_shares

WORDS = (
    "the house garden child tree street water sky earth fire light playing played player "
    "reading writing running jumping small large happy quick brown fox lazy dog over under "
    "haus garten kind baum straße wasser himmel erde feuer licht über schön grün"
).split()


def make_text(seed: int = 0, lines: int = 600) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(lines))


USER_CACHE = os.environ.get("TRANSPLANT_CACHE")


@pytest.fixture(autouse=True)
def _isolated_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never touch the user's cache nor the network (pip, which fetches packaged
    models, gets no index); slow tests share the cache (packaged models are big)."""
    if request.node.get_closest_marker("slow"):
        if USER_CACHE is None:
            monkeypatch.delenv("TRANSPLANT_CACHE", raising=False)
        else:
            monkeypatch.setenv("TRANSPLANT_CACHE", USER_CACHE)
    else:
        monkeypatch.setenv("TRANSPLANT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        # each test its own list of registered hypernetworks: one trained by an earlier test
        # for the same tiny base would otherwise become `--method auto`'s choice in a later one
        from transplant.hypernet import catalog

        monkeypatch.setattr(catalog, "CATALOG_FILE", f"hypernets-{abs(hash(request.node.nodeid))}.json")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models in training loops: thread hand-offs cost more than the math (up to 40x on
    a busy 2-core machine). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(make_text())
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training text (train.txt) and a two-language dev set (dev.jsonl) for the trainers' tests."""
    root = tmp_path_factory.mktemp("texts")
    (root / "train.txt").write_text(make_text(seed=1, lines=300).replace("\n", "\n\n", 40))
    (root / "dev.jsonl").write_text("".join(json.dumps({"text": t, "lang": lang}) + "\n"
                                            for lang, seed in (("en", 2), ("de", 3))
                                            for t in make_text(seed=seed, lines=4).splitlines()))
    return root


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def long_documents(path: Path, count: int = 6, words: int = 300) -> Path:
    """``count`` documents of ``words`` words each, every one written with its own marker word."""
    path.write_text("".join(json.dumps({"text": " ".join([f"doc{d}"] * words)}) + "\n" for d in range(count)))
    return path


def bpe_tokenizer(corpus: Path, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) with chat markers, like SmolLM2's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def sentencepiece_model(corpus: Path, out_dir: Path, vocab_size: int = 400, model_type: str = "unigram") -> Path:
    """A SentencePiece model (with byte fallback) trained on the corpus; returns the .model."""
    import sentencepiece as spm

    prefix = out_dir / f"sp_{model_type}"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2, hard_vocab_limit=False,
    )
    return prefix.with_suffix(".model")


def tiny_llama(tokenizer: PreTrainedTokenizerFast, out_dir: Path, tied: bool, seed: int = 0, hidden: int = 32,
               layers: int = 2, max_shard_size: str | None = None) -> Path:
    """A random llama with the tokenizer's vocabulary, saved as safetensors with the tokenizer."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # make embeddings distinct from their init pattern so copies are checkable
        model.get_input_embeddings().weight.normal_(0, 1)
        if not tied:
            model.get_output_embeddings().weight.normal_(0, 1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def bpe_dir(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe_tok")
    bpe_tokenizer(corpus_file).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sp_model(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sentencepiece_model(corpus_file, tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="session", params=[True, False], ids=["tied", "untied"])
def base_model(request: pytest.FixtureRequest, corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tied" if request.param else "untied")
    return tiny_llama(bpe_tokenizer(corpus_file), out, tied=request.param)


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT with an uncased WordPiece tokenizer trained here: the auxiliary text
    encoder (``aux_model``) of unit tests, which must not download the default MiniLM."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator(make_text(lines=400).splitlines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    out = tmp_path_factory.mktemp("encoder")
    BertModel(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def random_hypernet(ctx, out: Path, seed: int = 0) -> Path:
    """A zett hypernetwork directory for the base in ``ctx`` with random (non-zero) heads, so
    its rows differ from the ``subword`` rows a freshly initialized one gives."""
    from transplant.hypernet.fingerprint import BaseSample, base_hash
    from transplant.hypernet.zett import HypernetConfig, HyperNetwork, save_hypernet

    config = HypernetConfig(ctx.base_input.shape[1], ctx.base_output is None,
                            base_hash(ctx.match.base_vocab.tokens, ctx.base_input, ctx.base_output), width=32)
    torch.manual_seed(seed)
    model = HyperNetwork(config, ctx.base_input, ctx.base_output)
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.normal_(0, 0.1)
    save_hypernet(model, out, BaseSample.of(ctx.match.base_vocab.tokens, ctx.base_input, ctx.base_output))
    return out


def random_hyperofa(ctx, out: Path, seed: int = 0) -> Path:
    """A hyperofa hypernetwork directory for the base in ``ctx``: random 8-d vectors for the
    words of :func:`make_text` (the text the test tokenizers are trained on) and a network with
    random (non-zero) heads."""
    from transplant.hypernet.fingerprint import BaseSample, base_hash
    from transplant.hypernet.hyperofa import HyperOfaConfig, HyperOfaNetwork, save_hyperofa

    words = sorted(set(WORDS))
    config = HyperOfaConfig(ctx.base_input.shape[1], ctx.base_output is None,
                            base_hash(ctx.match.base_vocab.tokens, ctx.base_input, ctx.base_output),
                            vector_dim=8, words=len(words), width=16, heads=2)
    torch.manual_seed(seed)
    model = HyperOfaNetwork(config, torch.randn(len(words), 8))
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.normal_(0, 0.1)
    save_hyperofa(model, words, out, BaseSample.of(ctx.match.base_vocab.tokens, ctx.base_input, ctx.base_output))
    return out


# method name -> a random hypernetwork directory of that kind, for the method contract
RANDOM_HYPERNETS = {"zett": random_hypernet, "hyperofa": random_hyperofa, "auto": random_hypernet}


def assert_refused(result, fragment: str) -> None:
    """A CLI result that refused: exit 2, one error line and it is the last (nothing was
    scored or written after it), naming ``fragment``, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]] and fragment in errors[0] and "Traceback" not in result.output, result.output
    assert not any(line.startswith("scoring") for line in lines), result.output


def checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every weight of a saved checkpoint by name, whatever its sharding."""
    from safetensors import safe_open

    from transplant.io.checkpoint import weight_files

    found = {}
    for name, path in weight_files(directory).items():
        with safe_open(path, "pt") as f:
            found[name] = f.get_tensor(name)
    return found


def micro_loss(task, examples, step: int = 0, seed: int = 0):
    """One micro-step alone, as `fit` runs it with one micro-step on one process."""
    batch = task.prepare(list(examples), step, seed)
    return task.loss(task.model, batch, step_shares(task.accelerator, [batch.counts])[0])
