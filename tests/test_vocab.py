"""Token normalization and vocabulary matching across tokenizer schemes."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import make_text
from transplant.vocab.surface import byte_encoder, vocabulary
from transplant.vocab.matching import match_vocabularies


def byte_level(tokens: list[str], merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """A GPT-2 style tokenizer over the full byte alphabet plus ``tokens``."""
    specials = ["<|endoftext|>", "<|im_end|>"]
    alphabet = list(byte_encoder().values())
    vocab = {t: i for i, t in enumerate(specials + alphabet + tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                   additional_special_tokens=specials)


def metaspace(tokens: list[str]) -> PreTrainedTokenizerFast:
    """A SentencePiece-style (▁ and <0xNN>) unigram tokenizer over ``tokens``."""
    specials = ["<unk>", "<s>", "</s>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + tokens
    tok = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def wordpiece(tokens: list[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]"] + tokens)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def trained_wordpiece() -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on the test words (it learns ``##ing``)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False)
    tok.train_from_iterator([make_text()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


BASE = byte_level(["Ġt", "Ġth", "Ġthe", "Ġp", "Ġpl", "ay", "Ġplay", "in", "ing"],
                  [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("Ġ", "p"), ("Ġp", "l"), ("a", "y"), ("Ġpl", "ay"),
                   ("i", "n"), ("in", "g")])


def test_surfaces_of_each_scheme() -> None:
    sp = vocabulary(metaspace(["\u2581the", "ing"]))
    assert sp.scheme == "metaspace"
    assert sp.surfaces[sp.tokens.index("\u2581the")] == b" the"
    assert sp.surfaces[sp.tokens.index("<0x41>")] == b"A"
    assert sp.byte_fallback[sp.tokens.index("<0x41>")]
    bl = vocabulary(BASE)
    assert bl.scheme == "byte_level"
    assert bl.surfaces[bl.tokens.index("Ġthe")] == b" the"
    assert bl.surfaces[bl.tokens.index("Ã")] == b"\xc3"  # half of a UTF-8 sequence
    wp = vocabulary(wordpiece(["play", "##ing"]))
    assert wp.scheme == "wordpiece"
    assert wp.surfaces[wp.tokens.index("##ing")] == b"ing"
    assert wp.surfaces[wp.tokens.index("play")] == b" play"


def test_metaspace_onto_byte_level() -> None:
    new = metaspace(["\u2581the", "ing", "\u2581playing", "\u2581zebra"])
    match = match_vocabularies(BASE, new)
    copied = dict(zip(match.copy_new.tolist(), match.copy_base.tolist()))
    ids = new.convert_tokens_to_ids
    assert copied[ids("\u2581the")] == BASE.convert_tokens_to_ids("Ġthe")
    assert copied[ids("ing")] == BASE.convert_tokens_to_ids("ing")
    assert copied[ids("<0x41>")] == BASE.convert_tokens_to_ids("A")
    assert copied[new.eos_token_id] == BASE.eos_token_id  # by role, not by string
    assert ids("\u2581playing") in match.missing.tolist()
    assert BASE.convert_ids_to_tokens(match.decompose(ids("\u2581playing"))) == ["Ġplay", "ing"]
    assert match.decompose(new.bos_token_id) == []  # an unmatched special has no spelling


def test_wordpiece_continuation_matches_bare_piece() -> None:
    new = wordpiece(["fox", "##ing", "the"])
    match = match_vocabularies(BASE, new)
    copied = dict(zip(match.copy_new.tolist(), match.copy_base.tolist()))
    assert copied[new.convert_tokens_to_ids("##ing")] == BASE.convert_tokens_to_ids("ing")
    assert copied[new.convert_tokens_to_ids("the")] == BASE.convert_tokens_to_ids("Ġthe")
    assert new.convert_tokens_to_ids("fox") in match.missing.tolist()  # " fox" is not a base token


def test_wordpiece_base_spells_continuations_with_prefixed_pieces() -> None:
    """A surface without a leading space continues a word, so a WordPiece base spells it
    with ``##`` pieces (greedy longest match, as WordPiece does inside a word)."""
    base = trained_wordpiece()
    new = byte_level(["ing", "aying", "Ġplaying"], [])
    match = match_vocabularies(base, new)
    spell = lambda token: base.convert_ids_to_tokens(match.decompose(new.convert_tokens_to_ids(token)))  # noqa: E731
    assert spell("ing") == ["##ing"]
    assert spell("aying") == ["##ay", "##ing"]
    assert spell("Ġplaying") == base.tokenize("playing") == ["play", "##ing"]


def test_byte_level_pieces_decompose_to_byte_fallback() -> None:
    base = metaspace(["\u2581the", "\u2581pl", "ay"])
    match = match_vocabularies(base, BASE)
    copied = dict(zip(match.copy_new.tolist(), match.copy_base.tolist()))
    assert copied[BASE.convert_tokens_to_ids("Ã")] == base.convert_tokens_to_ids("<0xC3>")
    play = BASE.convert_tokens_to_ids("Ġplay")
    assert base.convert_ids_to_tokens(match.decompose(play)) == ["\u2581pl", "ay"]


def test_matching_a_tokenizer_with_itself_copies_every_row_onto_itself() -> None:
    for tok in (BASE, metaspace(["\u2581the", "A"])):  # "A" and "<0x41>" share a surface
        match = match_vocabularies(tok, tok)
        assert len(match.missing) == 0
        assert match.copy_new.tolist() == match.copy_base.tolist()


def test_padding_rows() -> None:
    new = metaspace(["\u2581the"])
    match = match_vocabularies(BASE, new, pad_to_multiple_of=64)
    assert match.num_rows % 64 == 0 and match.num_rows >= len(new)
    assert match.padding.tolist() == list(range(len(new), match.num_rows))


def test_a_byte_token_the_tokenizer_never_writes_copies_no_twin_row() -> None:
    """SentencePiece writes "A" with its piece ``A`` and never with ``<0x41>``. Copying the
    base's "A" row to both gave every such character a twin that, in a tied head, takes half
    its probability (Gemma-3's digits cost 14x the base's). ``<0x41>`` is unreachable: no
    row is copied or made for it; ``<0x42>`` ("B" has no piece) is written and keeps a row."""
    new = metaspace(["\u2581the", "A"])
    match = match_vocabularies(BASE, new)
    copied = dict(zip(match.copy_new.tolist(), match.copy_base.tolist()))
    byte_a, byte_b, piece_a = (new.convert_tokens_to_ids(t) for t in ("<0x41>", "<0x42>", "A"))
    assert match.unreachable.tolist() == [byte_a]
    assert byte_a not in copied and byte_a not in match.missing.tolist()
    assert copied[piece_a] == BASE.convert_tokens_to_ids("A")
    assert copied[byte_b] == BASE.convert_tokens_to_ids("B")
    assert new("A")["input_ids"][-1] == piece_a and new("B")["input_ids"][-1] == byte_b
