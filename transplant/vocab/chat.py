"""Keep a transplanted instruct model able to chat, and able to stop.

By default the output keeps the *base* model's chat template: its turn markers (special
tokens that appear in the template) are added to the new tokenizer when missing, so their
rows are copied from the base like any exact match. When the base's eos is the token that
closes a turn (ChatML's ``<|im_end|>``), eos/pad follow it. When a turn ends with a marker
that is not eos (Gemma's ``<end_of_turn>``), eos is left alone: documents still end with the
new tokenizer's eos, whose row is the base eos row by role, and the marker joins the ids
that end generation instead (:func:`end_of_turn_ids`). With ``mode="new"`` the new
tokenizer's own template is kept.
"""

from __future__ import annotations

from typing import Literal

from jinja2.exceptions import TemplateError
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase

from transplant.vocab.surface import ROLES

ChatMode = Literal["base", "new"]
_PROBE = "transplant-probe"


def adopt_chat_template(base: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase, mode: ChatMode) -> list[str]:
    """Modify ``new`` in place; return the markers that had to be added."""
    template = base.chat_template if mode == "base" else None
    if not isinstance(template, str):
        return []
    have = set(new.get_vocab())
    markers = [t.content for t in base.added_tokens_decoder.values() if t.special and t.content in template]
    added = [m for m in markers if m not in have]
    if added:
        new.add_tokens([AddedToken(m, special=True, normalized=False) for m in added], special_tokens=True)
    new.chat_template = template
    if base.eos_token and base.eos_token in template:
        pad_follows = base.pad_token_id is None or base.pad_token_id == base.eos_token_id
        new.eos_token = base.eos_token
        if pad_follows or new.pad_token is None:
            new.pad_token = base.eos_token
    return added


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token that closes an assistant turn in ``tokenizer``'s chat template,
    found by rendering one turn: a GGUF conversion's generation config often lists only eos,
    so the template is the one place that says where a turn ends."""
    if not isinstance(tokenizer.chat_template, str):
        return None
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(turn, tokenize=False)
    except (TemplateError, ValueError):  # a template may refuse a conversation this short
        return None
    if not isinstance(text, str) or _PROBE not in text:
        return None
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    after = tokenizer(text.rsplit(_PROBE, 1)[1], add_special_tokens=False).input_ids
    return next((t for t in tokenizer.convert_ids_to_tokens(after) if t in specials), None)


def end_of_turn_ids(
    base: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase, base_eos: int | list[int] | None
) -> list[int]:
    """Every id that must end generation in the output, as ids of ``new``: its eos, the
    marker that closes a turn in its template, and each of the base's eos ids (Gemma's
    generation config lists ``<eos>`` and ``<end_of_turn>``) carried over the way rows are:
    by token, and by role. The role matters because a new special that takes a base stop
    token's row by role (a new ``<pad>`` given the row of a base pad that is ``<|im_end|>``)
    scores exactly like it, and greedy decoding then writes it in its place.
    One eos id alone lets a chat model that ends its turns with a marker talk on forever."""
    base_ids = [] if base_eos is None else base_eos if isinstance(base_eos, list) else [base_eos]
    vocab = new.get_vocab()
    tokens = [new.eos_token, end_of_turn_token(new), *base.convert_ids_to_tokens(base_ids)]
    by_role = [getattr(new, f"{r}_token_id") for r in ROLES if getattr(base, f"{r}_token_id") in base_ids]
    ids = [vocab.get(t) for t in tokens] + by_role
    return list(dict.fromkeys(i for i in ids if i is not None))
