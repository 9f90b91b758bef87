"""Keep a transplanted instruct model able to chat.

By default the output keeps the *base* model's chat template: its turn markers (special
tokens that appear in the template) are added to the new tokenizer when missing, so their
rows are copied from the base like any exact match, and eos/pad follow the base's
end-of-turn token. With ``mode="new"`` the new tokenizer's own template is kept instead.
"""

from __future__ import annotations

from typing import Literal

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase

ChatMode = Literal["base", "new"]


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
