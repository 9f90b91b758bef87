"""What a model class says about its vocabulary tensors, and whether it can be transplanted.

The class is built on the meta device (no weights) and asked: ``get_input_embeddings`` and
``get_output_embeddings`` are the embedding modules. A checkpoint may store a tensor under
another name than its module's: transformers renames keys while loading (since v5
GPT-NeoX's head is the module ``lm_head`` while its files keep ``embed_out``; a multimodal
wrapper's language model moved under ``model.language_model``), so the file's names are run
through transformers' own renaming to find the tensor that loads into each module, never
guessed from a conventional name.

A transplant replaces the input and output embedding rows and nothing else. A model whose
vocabulary also lives elsewhere (a second token embedding, a per-token bias on the head,
an encoder, the image-token ids of a vision tower) would come out broken, so it is refused
in one line naming why, before any work.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

from transplant.errors import UserError


def check_config(directory: Path, config: PretrainedConfig) -> None:
    """Refuse, from config.json alone, models that are more than a decoder-only text LM."""
    where = f"{directory}: a {config.model_type} model"
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"{where} is an encoder-decoder; only decoder-only causal LMs can be transplanted")
    text = config.get_text_config()
    towers = [key for key in getattr(config, "sub_configs", {}) if getattr(config, key, None) not in (None, text)]
    if text is not config and towers:
        raise UserError(f"{where} has {', '.join(towers)} beside its language model; only text-only causal LMs "
                        f"can be transplanted (the other towers' token ids would not survive a new tokenizer)")


def check_model(directory: Path, model: PreTrainedModel) -> None:
    """Refuse models whose vocabulary lives in more than the input and output embedding weights."""
    where = f"{directory}: a {model.config.model_type} model"
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    rows = embed.weight.shape[0]
    others = [name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Embedding) and module is not embed and module.weight.shape[0] == rows]
    if others:
        raise UserError(f"{where} has several token embeddings ({', '.join(others)} besides the input embeddings); "
                        f"only the input and output embeddings can be transplanted")
    if head is not None and getattr(head, "bias", None) is not None:
        raise UserError(f"{where} has a bias per token on its output layer, which transplant does not rebuild")


def loaded_names(model: PreTrainedModel, file_names: Iterable[str]) -> dict[str, str]:
    """Checkpoint tensor name -> the parameter of ``model`` it loads into, by transformers'
    own renaming (as ``from_pretrained`` does). Tensors that a conversion reshapes on the
    way (fused experts, split projections) are left out: none of them is an embedding."""
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    params = model.state_dict()
    loaded = {}
    for name in file_names:
        renamed, converted = rename_source_key(name, renamings, converters, model.base_model_prefix, params)
        if renamed not in params and name in params:
            renamed, converted = name, None
        if renamed in params and converted is None:
            loaded[name] = renamed
    return loaded
