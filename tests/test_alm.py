"""ALM loss (transplant/alm.py): chunk alignment by hand and on real BPE tokenizers, the
loss formula, its minimum, masking, gradients, and batched == per-example."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from transplant.training.alm import (
    ChunkAlignment,
    align_chunks,
    alm_distill_loss,
    alm_loss,
    boundary_token_mask,
    char_to_byte_offsets,
    chunk_logprobs,
    merge_chunks,
    next_token_logprobs,
    to_target_positions,
)

SENTENCES = [
    "Schöne Grüße aus Köln, sagte die Straßenbahnfahrerin.",
    "The quick brown fox jumps over the lazy dog near the river.",
    "Ein naïver Café-Besitzer trinkt déjà vu Tee 😀 und isst Müsli.",
    "Small models learn quickly when the data is clean and short.",
    "Über den grünen Hügeln schien die Sonne, heiß und hell.",
]


def contiguous(ends) -> np.ndarray:
    """(start, end) byte offsets of tokens that follow each other; end 0 -> (0, 0)."""
    ends = np.asarray(ends, dtype=np.int64)
    if ends.ndim == 2:  # already (start, end)
        return ends
    starts = np.maximum.accumulate(np.concatenate([[0], ends[:-1]]))
    return np.stack([np.where(ends == 0, 0, starts), ends], axis=1)


def align1(t_ends, s_ends, t_mask=None, s_mask=None) -> tuple[list[int], list[int], int]:
    """Align one sequence given its byte ends (or offsets); plain lists back."""
    a = align_chunks([contiguous(t_ends)], [contiguous(s_ends)], None if t_mask is None else [t_mask],
                     None if s_mask is None else [s_mask])
    return a.teacher_chunk_ids[0].tolist(), a.student_chunk_ids[0].tolist(), int(a.num_chunks[0])


# ---------------------------------------------------------------------------------------
# Alignment by hand


def test_char_to_byte_offsets_counts_utf8_bytes():
    # "Grüße 😀": ü, ß are 2 bytes, the emoji 4; (0, 0) of a special token stays 0
    text = "Grüße 😀"
    char_offsets = [(0, 0), (0, 2), (2, 4), (4, 5), (5, 6), (6, 7)]
    assert char_to_byte_offsets(text, char_offsets).tolist() == [[0, 0], [0, 2], [2, 6], [6, 7], [7, 8], [8, 12]]
    assert len(text.encode()) == 12


def test_chunks_by_hand_abcdef():
    # teacher <s>|ab|cd|ef, student <s>|a|bcd|ef  ->  chunks "abcd", "ef"; BOS is context
    t_ids, s_ids, n = align1([0, 2, 4, 6], [0, 1, 4, 6], [False, True, True, True], [False, True, True, True])
    assert (t_ids, s_ids, n) == ([-1, 0, 0, 1], [-1, 0, 0, 1], 2)


def test_chunk_holding_position_zero_is_dropped():
    # no BOS: nothing predicts the first token, so "abcd" cannot be scored; "ef" is chunk 0
    t_ids, s_ids, n = align1([2, 4, 6], [1, 4, 6])
    assert (t_ids, s_ids, n) == ([-1, -1, 0], [-1, -1, 0], 1)


def test_chunks_by_hand_multibyte_through_char_offsets():
    text = "Grüße"  # bytes: G r ü ü ß ß e
    teacher = char_to_byte_offsets(text, [(0, 0), (0, 2), (2, 3), (3, 5)])  # <s> Gr ü ße
    student = char_to_byte_offsets(text, [(0, 0), (0, 1), (1, 3), (3, 4), (4, 5)])  # <s> G rü ß e
    assert teacher[:, 1].tolist() == [0, 2, 4, 7] and student[:, 1].tolist() == [0, 1, 4, 6, 7]
    t_ids, s_ids, n = align1(teacher, student, [0, 1, 1, 1], [0, 1, 1, 1, 1])
    assert (t_ids, s_ids, n) == ([-1, 0, 0, 1], [-1, 0, 0, 1, 1], 2)  # "Grü", "ße"


def test_byte_pieces_of_one_character_stay_in_one_chunk():
    # byte-fallback splits "ü" into two tokens that both report the span of "ü"; the
    # teacher has "rü" whole. A boundary between the two pieces must not be used.
    text = "Grü"
    teacher = char_to_byte_offsets(text, [(0, 0), (0, 1), (1, 3)])  # <s> G rü
    student = char_to_byte_offsets(text, [(0, 0), (0, 1), (1, 2), (2, 3), (2, 3)])  # <s> G r ü1 ü2
    assert student[:, 1].tolist() == [0, 1, 2, 4, 4]
    t_ids, s_ids, n = align1(teacher, student, [0, 1, 1], [0, 1, 1, 1, 1])
    assert (t_ids, s_ids, n) == ([-1, 0, 1], [-1, 0, 1, 1, 1], 2)


def test_token_ending_inside_a_character_is_no_boundary():
    # byte-level BPE merges " na" with the first byte of "ï" ("ĠnaÃ", then "¯ver"): both
    # report the character span of "ï". The teacher's boundary after "naï" is not shared.
    text = " naïver"
    teacher = char_to_byte_offsets(text, [(0, 0), (0, 4), (4, 7)])  # <s> " naï" "ver"
    student = char_to_byte_offsets(text, [(0, 0), (0, 4), (3, 7)])  # <s> " na"+ï1 ï2+"ver"
    assert teacher[1, 1] == student[1, 1] == 5  # same byte end, but only one is a boundary
    t_ids, s_ids, n = align1(teacher, student, [0, 1, 1], [0, 1, 1])
    assert (t_ids, s_ids, n) == ([-1, 0, 0], [-1, 0, 0], 1)


# ---------------------------------------------------------------------------------------
# Padding, masked and special tokens drop exactly the chunks they touch

# "abcdefgh": teacher <s>|ab|cd|ef|gh, student <s>|a|bcd|e|f|gh -> chunks abcd, ef, gh
T_ENDS, S_ENDS = [0, 2, 4, 6, 8], [0, 1, 4, 5, 6, 8]
T_MASK, S_MASK = [0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]


def test_reference_example_has_three_chunks():
    assert align1(T_ENDS, S_ENDS, T_MASK, S_MASK) == ([-1, 0, 0, 1, 2], [-1, 0, 0, 1, 1, 2], 3)


def test_padding_changes_nothing():
    t_off, s_off = contiguous(T_ENDS + [0, 0, 0]), contiguous(S_ENDS + [0])
    a = align_chunks([t_off], [s_off], [T_MASK + [0, 0, 0]], [S_MASK + [0]])
    assert a.teacher_chunk_ids[0].tolist() == [-1, 0, 0, 1, 2, -1, -1, -1]
    assert a.student_chunk_ids[0].tolist() == [-1, 0, 0, 1, 1, 2, -1]
    assert a.num_chunks.tolist() == [3]
    # padding that the mask forgot is still out of the text (end 0 goes backwards)
    b = align_chunks([t_off], [s_off], [T_MASK + [1, 1, 1]], [S_MASK + [1]])
    assert torch.equal(a.teacher_chunk_ids, b.teacher_chunk_ids) and a.num_chunks.tolist() == b.num_chunks.tolist()


@pytest.mark.parametrize("side", ["teacher", "student"])
def test_masked_token_drops_only_its_chunk(side):
    # mask the token that holds byte "e" (middle chunk "ef") on one side
    t_mask, s_mask = list(T_MASK), list(S_MASK)
    if side == "teacher":
        t_mask[3] = 0
    else:
        s_mask[3] = 0
    t_ids, s_ids, n = align1(T_ENDS, S_ENDS, t_mask, s_mask)
    assert n == 2
    assert t_ids == [-1, 0, 0, -1, 1] and s_ids == [-1, 0, 0, -1, -1, 1]  # abcd and gh survive


def test_special_token_inside_a_chunk_drops_it_at_a_boundary_not():
    # an out-of-text token (offsets (0, 0), e.g. an inserted EOS) between "b" and "cd" on
    # the student side splits chunk "abcd"; between "d" and "e" it sits on a boundary
    inside = align1(T_ENDS, [0, 1, 0, 4, 5, 6, 8], T_MASK, [0, 1, 0, 1, 1, 1, 1])
    assert inside == ([-1, -1, -1, 0, 1], [-1, -1, -1, -1, 0, 0, 1], 2)
    on_boundary = align1(T_ENDS, [0, 1, 4, 0, 5, 6, 8], T_MASK, [0, 1, 1, 0, 1, 1, 1])
    assert on_boundary == ([-1, 0, 0, 1, 2], [-1, 0, 0, -1, 1, 1, 2], 3)


def test_truncated_side_leaves_the_tail_unaligned():
    # student stops after "ef": "gh" has no common end, its teacher token is in no chunk
    t_ids, s_ids, n = align1(T_ENDS, S_ENDS[:-1], T_MASK, S_MASK[:-1])
    assert (t_ids, s_ids, n) == ([-1, 0, 0, 1, -1], [-1, 0, 0, 1, 1], 2)


# ---------------------------------------------------------------------------------------
# Real BPE tokenizers trained here on SENTENCES (two vocabulary sizes)


def train_bpe(vocab_size: int, trim_offsets: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 4, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=trim_offsets),  # trimmed: "Ġaus" reports no space
        processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)]),
    ])
    return tok


@pytest.fixture(scope="module")
def bpe_pair() -> tuple[Tokenizer, Tokenizer]:
    return train_bpe(300, trim_offsets=True), train_bpe(420, trim_offsets=False)


def encode_batch(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Right-padded ids, byte offsets and distillable-token mask."""
    encs = [tok.encode(t) for t in texts]
    width = max(len(e.ids) for e in encs)
    ids = torch.full((len(texts), width), tok.token_to_id("<pad>"), dtype=torch.long)
    offsets = np.zeros((len(texts), width, 2), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=bool)
    for b, (text, e) in enumerate(zip(texts, encs)):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        offsets[b, : len(e.ids)] = char_to_byte_offsets(text, e.offsets)
        mask[b, : len(e.ids)] = ~np.asarray(e.special_tokens_mask, dtype=bool)
    return ids, offsets, mask


def test_real_tokenizers_chunks_reconstruct_text(bpe_pair):
    small, large = bpe_pair
    ids_t, off_t, mask_t = encode_batch(small, SENTENCES)
    ids_s, off_s, mask_s = encode_batch(large, SENTENCES)
    a = align_chunks(off_t, off_s, mask_t, mask_s)
    multi_token = 0
    for b, text in enumerate(SENTENCES):
        data = text.encode()
        n = int(a.num_chunks[b])
        assert n > 3 and n < int(mask_t[b].sum())  # some chunks merge tokens
        pieces = []
        for c in range(n):
            t_tok = (a.teacher_chunk_ids[b] == c).nonzero().flatten().tolist()
            s_tok = (a.student_chunk_ids[b] == c).nonzero().flatten().tolist()
            # a chunk is a contiguous run of tokens on each side, ending on a common boundary
            assert t_tok == list(range(t_tok[0], t_tok[-1] + 1)) and s_tok == list(range(s_tok[0], s_tok[-1] + 1))
            end = int(off_t[b, t_tok[-1], 1])
            assert end == int(off_s[b, s_tok[-1], 1])
            start = int(off_t[b, t_tok[0] - 1, 1])  # chunks start where the previous token ended
            assert start == int(off_s[b, s_tok[0] - 1, 1])
            chunk_text = data[start:end].decode()
            # both tokenizations of the chunk spell exactly its text
            assert small.decode(ids_t[b, t_tok].tolist()) == chunk_text
            assert large.decode(ids_s[b, s_tok].tolist()) == chunk_text
            multi_token += len(t_tok) != len(s_tok)
            pieces.append(chunk_text)
        assert "".join(pieces) == text  # BOS is context; every text byte is in a chunk
    assert multi_token > 0


def test_hf_offset_mapping_gives_the_same_alignment(bpe_pair):
    small, large = bpe_pair
    text = SENTENCES[2]
    hf = PreTrainedTokenizerFast(tokenizer_object=small)
    enc = hf(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    raw = small.encode(text)
    assert enc["input_ids"] == raw.ids
    hf_offsets = char_to_byte_offsets(text, enc["offset_mapping"])
    assert hf_offsets.tolist() == char_to_byte_offsets(text, raw.offsets).tolist()
    assert hf_offsets.max() == len(text.encode()) > len(text)  # multibyte text, byte offsets


# ---------------------------------------------------------------------------------------
# The loss


def binary_kl_by_hand(logp_t: float, logp_s: float, tau: float) -> float:
    """KL(Bernoulli(q_T) || Bernoulli(q_S)), q = p^(1/τ) e^-ε, in float64 from the definition."""
    qt, qs = math.exp(logp_t / tau - 1e-6), math.exp(logp_s / tau - 1e-6)
    return qt * math.log(qt / qs) + (1 - qt) * math.log((1 - qt) / (1 - qs))


def one_token_chunk(logits_t: torch.Tensor, logits_s: torch.Tensor, target: int, tau: float) -> torch.Tensor:
    """Both sides '<s> x': one chunk, one token; logits at position 0 predict x."""
    alignment = align_chunks([[(0, 0), (0, 1)]], [[(0, 0), (0, 1)]], [[0, 1]], [[0, 1]])
    pad = torch.zeros_like(logits_t)  # the last position predicts nothing
    targets = torch.tensor([[target, 0]])
    return alm_distill_loss(torch.stack([logits_s, pad])[None], targets, torch.stack([logits_t, pad])[None],
                            targets, alignment, temperature=tau).loss


@pytest.mark.parametrize("tau", [1.0, 100.0])
def test_one_token_chunk_matches_binary_kl_by_hand(tau):
    logits_t = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0])
    logits_s = torch.tensor([0.0, 1.5, -1.0, 0.3, 1.0])
    p_t = torch.softmax(logits_t.double(), 0)[1].item()
    p_s = torch.softmax(logits_s.double(), 0)[1].item()
    loss = one_token_chunk(logits_t, logits_s, target=1, tau=tau)
    assert loss.item() == pytest.approx(binary_kl_by_hand(math.log(p_t), math.log(p_s), tau), rel=1e-4, abs=1e-9)
    assert loss.item() > 0


def test_one_token_chunk_only_matches_that_tokens_probability():
    # teacher probs (.5, .25, .25), student (.5, .4, .1): same target probability -> 0
    logits_t = torch.tensor([0.5, 0.25, 0.25]).log()
    logits_s = torch.tensor([0.5, 0.4, 0.1]).log()
    assert one_token_chunk(logits_t, logits_s, target=0, tau=100.0).item() == pytest.approx(0.0, abs=1e-9)
    assert one_token_chunk(logits_t, logits_s, target=1, tau=100.0).item() > 0


def test_loss_is_mean_over_valid_chunks_and_finite_at_extremes():
    t = torch.tensor([[-3.0, -0.1, -5000.0, 0.0], [-2.0, float("nan"), float("nan"), 0.0]], requires_grad=True)
    s = torch.tensor([[-1.0, -0.1, -9000.0, -7.0], [-4.0, float("nan"), 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    loss = alm_loss(s, t, mask)
    expected = [binary_kl_by_hand(a, b, 100.0) for a, b in
                [(-3, -1), (-0.1, -0.1), (-5000, -9000), (0.0, -7.0), (-2, -4)]]
    assert loss.item() == pytest.approx(sum(expected) / 5, rel=1e-4)
    loss.backward()
    assert torch.isfinite(s.grad).all() and (s.grad[~mask] == 0).all()  # garbage in masked slots stays there
    assert t.grad is None  # teacher detached
    empty = alm_loss(s, t, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad


def test_token_logprobs_is_log_softmax_gather():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 7).bfloat16()
    targets = torch.tensor([[1, 6, 0, -100], [3, 3, 2, 5]])
    expected = logits.float().log_softmax(-1).gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    got = next_token_logprobs(logits, targets)
    assert got.token.dtype == torch.float32 and torch.allclose(got.token, expected, atol=1e-6)
    assert got.boundary is None


def reference_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both log-probs the plain autograd way: log_softmax, gather, masked logsumexp."""
    logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    return logp.gather(-1, targets[..., None])[..., 0], logp[..., mask].logsumexp(-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_next_token_logprobs_gradient_is_autograds(dtype):
    """The hand-written backward (one softmax, scaled per position and column) gives the
    gradient autograd gives the plain formula, for either output alone and both together."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, 11, (3, 5))
    mask = torch.rand(11) < 0.4
    mask[0] = True
    weights = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for use in ("token", "boundary", "both"):
        grads = []
        for compute in (lambda x: reference_logprobs(x, targets, mask),
                        lambda x: tuple(vars(next_token_logprobs(x, targets, mask)).values())):
            x = logits.clone().requires_grad_(True)
            token, boundary = compute(x)
            loss = {"token": (token * weights[0]).sum(), "boundary": (boundary * weights[1]).sum(),
                    "both": (token * weights[0] + boundary * weights[1]).sum()}[use]
            loss.backward()
            assert x.grad.dtype == dtype
            grads.append(x.grad.double())
        assert torch.allclose(grads[0], grads[1], atol=tolerance, rtol=tolerance), use
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: tuple(vars(next_token_logprobs(y, targets, mask)).values()), (x,))


def test_chunk_logprobs_sums_tokens_per_chunk():
    token_logp = torch.tensor([[-1.0, -2.0, -4.0, -8.0, float("nan")]])
    chunk_ids = torch.tensor([[0, 0, 1, -1, -1]])
    assert chunk_logprobs(token_logp, chunk_ids, 2).tolist() == [[-3.0, -4.0]]
    # input chunk ids -> target positions: token t's log-prob sits at t-1
    assert to_target_positions(torch.tensor([[-1, 0, 0, 1]])).tolist() == [[0, 0, 1, -1]]


def test_merge_chunks_by_hand():
    # P(boundary after chunk): .05 .5 | .01 .01 .9 | [dropped] | .02 .3 ; one padding slot
    p = torch.tensor([[0.05, 0.5, 0.01, 0.01, 0.9, 0.9, 0.02, 0.3, 0.9]])
    mask = torch.tensor([[True, True, True, True, True, False, True, True, False]])
    group_ids, num_groups = merge_chunks(p.log(), mask, threshold=0.1)
    assert group_ids.tolist() == [[0, 0, 1, 1, 1, -1, 2, 2, -1]] and num_groups.tolist() == [3]
    # a dropped chunk ends the group before it, even without a likely boundary
    p2 = torch.tensor([[0.05, 0.05, 0.05]])
    ids2, n2 = merge_chunks(p2.log(), torch.tensor([[True, False, True]]), threshold=0.1)
    assert ids2.tolist() == [[0, -1, 1]] and n2.tolist() == [2]


def test_boundary_token_mask_and_logprobs():
    mask = boundary_token_mask(["a", " b", "\nc", "", "d ", "<s>"], special_ids=[5])
    assert mask.tolist() == [False, True, True, False, False, True]
    logits = torch.tensor([[[0.0, 1.0, 2.0, 0.5, -1.0, 0.0, 3.0, 3.0]]])  # 2 padding rows
    probs = logits.softmax(-1)[0, 0]
    expected = math.log(probs[1] + probs[2] + probs[5])
    got = next_token_logprobs(logits, torch.tensor([[6]]), mask)
    assert got.boundary.item() == pytest.approx(expected, rel=1e-6)
    assert got.token.item() == pytest.approx(math.log(probs[6]), rel=1e-6)


# ---------------------------------------------------------------------------------------
# A tiny random Llama as teacher and student (same tokenizer)


@pytest.fixture(scope="module")
def char_bpe() -> Tokenizer:
    """Vocabulary of ~100; the whitespace pre-tokenizer leaves gaps in the offsets."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=["<s>", "<pad>", "<unk>"], show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


@pytest.fixture(scope="module")
def tiny_llama(char_bpe) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=char_bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def test_identical_models_give_zero_and_a_perturbed_row_does_not(char_bpe, tiny_llama):
    texts = SENTENCES[:2]
    ids, offsets, mask = encode_batch(char_bpe, texts)
    pad = char_bpe.token_to_id("<pad>")
    attention = (ids != pad).long()
    alignment = align_chunks(offsets, offsets, mask, mask)
    assert torch.equal(alignment.num_chunks, torch.from_numpy(mask.sum(1)))  # one chunk per token
    targets = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=pad)
    boundary = boundary_token_mask([char_bpe.decode([i]) for i in range(char_bpe.get_vocab_size())], [0, 1])
    boundary[ids[0, 3]] = True  # Whitespace decoding has no leading spaces: pick some tokens
    boundary[ids[1, 5]] = True

    student = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        teacher_logits = tiny_llama(input_ids=ids, attention_mask=attention).logits
        same_logits = student(input_ids=ids, attention_mask=attention).logits
        student.model.embed_tokens.weight[ids[0, 4]] += 0.5  # a row used mid-text
        moved_logits = student(input_ids=ids, attention_mask=attention).logits

    for debias in ({}, {"student_boundary_tokens": boundary, "teacher_boundary_tokens": boundary}):
        same = alm_distill_loss(same_logits, targets, teacher_logits, targets, alignment, **debias)
        moved = alm_distill_loss(moved_logits, targets, teacher_logits, targets, alignment, **debias)
        assert same.loss.item() == 0.0 and same.mean_abs_logp_diff.item() == 0.0
        assert moved.loss.item() > 1e-7 and moved.mean_abs_logp_diff.item() > 1e-4
    assert int(same.num_chunks) < int(alignment.num_chunks.sum())  # merging happened


def test_gradients_reach_student_not_teacher(bpe_pair):
    small, large = bpe_pair
    ids_t, off_t, mask_t = encode_batch(small, SENTENCES[:2])
    ids_s, off_s, mask_s = encode_batch(large, SENTENCES[:2])
    alignment = align_chunks(off_t, off_s, mask_t, mask_s)
    torch.manual_seed(1)
    student_logits = torch.randn(*ids_s.shape, large.get_vocab_size(), requires_grad=True)
    teacher_logits = torch.randn(*ids_t.shape, small.get_vocab_size(), requires_grad=True)
    out = alm_distill_loss(student_logits, ids_s.roll(-1, 1), teacher_logits, ids_t.roll(-1, 1), alignment)
    out.loss.backward()
    assert out.loss.item() > 0 and torch.isfinite(student_logits.grad).all()
    assert student_logits.grad.abs().sum() > 0
    assert teacher_logits.grad is None
    # positions whose token is in no chunk get no gradient (padding, BOS target, tail)
    no_chunk = to_target_positions(alignment.student_chunk_ids) < 0
    assert (student_logits.grad[no_chunk] == 0).all()


@pytest.mark.parametrize("debias", [False, True])
def test_batched_equals_per_example(bpe_pair, debias):
    small, large = bpe_pair
    ids_t, off_t, mask_t = encode_batch(small, SENTENCES)
    ids_s, off_s, mask_s = encode_batch(large, SENTENCES)
    torch.manual_seed(2)
    logits_t = torch.randn(*ids_t.shape, small.get_vocab_size()) * 3
    logits_s = torch.randn(*ids_s.shape, large.get_vocab_size()) * 3
    tgt_t, tgt_s = ids_t.roll(-1, 1), ids_s.roll(-1, 1)
    kwargs = {}
    if debias:
        def boundary(tok: Tokenizer) -> torch.Tensor:
            return boundary_token_mask([tok.decode([i]) for i in range(tok.get_vocab_size())], [0])
        kwargs = {"teacher_boundary_tokens": boundary(small), "student_boundary_tokens": boundary(large)}
    batched = alm_distill_loss(logits_s, tgt_s, logits_t, tgt_t, align_chunks(off_t, off_s, mask_t, mask_s), **kwargs)

    total, count = 0.0, 0
    for b in range(len(SENTENCES)):
        lt, ls = int(mask_t[b].sum()) + 1, int(mask_s[b].sum()) + 1  # + BOS, no padding
        one = align_chunks(off_t[b:b + 1, :lt], off_s[b:b + 1, :ls], mask_t[b:b + 1, :lt], mask_s[b:b + 1, :ls])
        out = alm_distill_loss(logits_s[b:b + 1, :ls], tgt_s[b:b + 1, :ls], logits_t[b:b + 1, :lt],
                               tgt_t[b:b + 1, :lt], one, **kwargs)
        total += out.loss.item() * int(out.num_chunks)
        count += int(out.num_chunks)
    assert count == int(batched.num_chunks) > 0
    assert batched.loss.item() == pytest.approx(total / count, rel=1e-5)


def test_batched_alignment_equals_per_example(bpe_pair):
    small, large = bpe_pair
    _, off_t, mask_t = encode_batch(small, SENTENCES)
    _, off_s, mask_s = encode_batch(large, SENTENCES)
    batched = align_chunks(off_t, off_s, mask_t, mask_s)
    for b in range(len(SENTENCES)):
        lt, ls = int(mask_t[b].sum()) + 1, int(mask_s[b].sum()) + 1
        one = align_chunks(off_t[b:b + 1, :lt], off_s[b:b + 1, :ls], mask_t[b:b + 1, :lt], mask_s[b:b + 1, :ls])
        assert one.num_chunks.tolist() == batched.num_chunks[b:b + 1].tolist()
        assert one.teacher_chunk_ids[0].tolist() == batched.teacher_chunk_ids[b, :lt].tolist()
        assert (batched.teacher_chunk_ids[b, lt:] == -1).all() and (batched.student_chunk_ids[b, ls:] == -1).all()
        assert one.student_chunk_ids[0].tolist() == batched.student_chunk_ids[b, :ls].tolist()
    assert isinstance(batched, ChunkAlignment) and batched.chunk_mask().shape == (len(SENTENCES), batched.max_chunks)
