"""Special tokens and chat on tiny real models: roles, end-of-turn ids, bare tokenizer.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from conftest import bpe_tokenizer, tiny_llama
from transplant.inputs.corpus import load_corpus
from transplant.evaluation.evaluate import evaluate_model, load_model
from transplant.pipeline import TransplantConfig, transplant
from transplant.io.tokenizer import load_tokenizer

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma_like_tokenizer(corpus: Path) -> PreTrainedTokenizerFast:
    """Gemma's layout: ``<eos>`` ends a document, ``<end_of_turn>`` (not eos) ends a turn."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok.train([str(corpus)], trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = GEMMA_TEMPLATE
    return fast


def rows(model_dir: Path) -> torch.Tensor:
    return AutoModelForCausalLM.from_pretrained(model_dir).get_input_embeddings().weight.detach()


def test_new_pad_equal_to_eos_keeps_the_base_eos_row(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    """The base keeps pad (3) and eos (2) apart; the new tokenizer's pad is its eos. The eos
    row must come from the base eos, not from whichever role was matched last."""
    base_tok = load_tokenizer(str(sp_model))
    base = tiny_llama(base_tok, tmp_path / "base", tied=True)
    new_dir = tmp_path / "new"
    bpe_tokenizer(corpus_file).save_pretrained(new_dir)
    new = AutoTokenizer.from_pretrained(new_dir)
    assert new.pad_token_id == new.eos_token_id and base_tok.pad_token_id != base_tok.eos_token_id

    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(base), tokenizer=str(new_dir), out=out, method="random", chat_template="new"))
    got, want = rows(out), rows(base)
    for role in ("eos", "bos", "unk"):
        new_id, base_id = getattr(new, f"{role}_token_id"), getattr(base_tok, f"{role}_token_id")
        assert torch.equal(got[new_id], want[base_id]), role


@pytest.mark.parametrize("base_eos", ["eos and end of turn", "eos only"])
def test_every_end_of_turn_id_is_carried_over(corpus_file: Path, sp_model: Path, tmp_path: Path, base_eos: str) -> None:
    """A Gemma-style base ends a turn with ``<end_of_turn>``, which is not its eos. Its
    generation config lists both (or, as GGUF conversions give, eos alone: the template
    still shows the marker); the output must stop on the new ids of both."""
    base_tok = gemma_like_tokenizer(corpus_file)
    base = tiny_llama(base_tok, tmp_path / "base", tied=False)
    eot = base_tok.convert_tokens_to_ids("<end_of_turn>")
    eos_ids = [base_tok.eos_token_id, eot] if base_eos == "eos and end of turn" else base_tok.eos_token_id
    GenerationConfig(bos_token_id=base_tok.bos_token_id, eos_token_id=eos_ids, pad_token_id=0).save_pretrained(base)

    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=out, method="random"))
    tok = AutoTokenizer.from_pretrained(out)
    new_eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert GenerationConfig.from_pretrained(out).eos_token_id == [tok.eos_token_id, new_eot]
    assert tok.eos_token == "</s>"  # documents still end with the tokenizer's own eos (base <eos> row)
    got, want = rows(out), rows(base)
    assert torch.equal(got[new_eot], want[eot])
    assert torch.equal(got[tok.eos_token_id], want[base_tok.eos_token_id])


def test_bare_tokenizer_json_gets_special_ids_and_evaluates(
    base_model: Path, sp_model: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """A tokenizer.json alone carries no bos/eos/pad names; the output must still have them
    (from the file's own post-processor, unk and special tokens) so it can be scored."""
    load_tokenizer(str(sp_model)).save_pretrained(tmp_path / "sp")
    out = tmp_path / "out"
    bare = str(tmp_path / "sp" / "tokenizer.json")
    transplant(TransplantConfig(base=str(base_model), tokenizer=bare, out=out, method="random", chat_template="new"))
    config = AutoModelForCausalLM.from_pretrained(out).config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 3)  # <s>, </s>, <pad>
    model, tok = load_model(str(out))
    score = evaluate_model(model, tok, load_corpus(corpus_file, max_docs=2)).overall
    assert score.tokens > 0 and 0 < score.bits_per_byte < float("inf")


def test_every_new_id_carrying_a_stop_row_stops_generation(corpus_file: Path, sp_model: Path, tmp_path: Path) -> None:
    """SmolLM2's layout with eos moved to ``<|endoftext|>``: its pad is ``<|im_end|>``, the
    turn end. The new ``<pad>`` takes that row by role and scores exactly like it, so greedy
    decoding may write ``<pad>`` to end a turn: every such id must be a stop id too."""
    base_tok = bpe_tokenizer(corpus_file)
    base_tok.eos_token = "<|endoftext|>"
    base = tiny_llama(base_tok, tmp_path / "base", tied=True)
    base_stops = [base_tok.eos_token_id, base_tok.convert_tokens_to_ids("<|im_end|>")]
    GenerationConfig(eos_token_id=base_stops, pad_token_id=base_stops[1]).save_pretrained(base)

    out = tmp_path / "out"
    transplant(TransplantConfig(base=str(base), tokenizer=str(sp_model), out=out, method="random"))
    got, want = rows(out), rows(base)
    carriers = (got[:, None, :] == want[base_stops][None]).all(-1).any(-1).nonzero().flatten().tolist()
    tok = AutoTokenizer.from_pretrained(out)
    assert {tok.pad_token_id, tok.convert_tokens_to_ids("<|im_end|>")} <= set(carriers)
    assert set(carriers) <= set(GenerationConfig.from_pretrained(out).eos_token_id)
