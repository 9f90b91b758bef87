"""Read embedding matrices from a checkpoint and write the patched checkpoint.

Only the embedding and lm_head tensors are ever held in memory whole; every other tensor is
streamed shard by shard, so a transplant needs about (base embeddings + new embeddings +
one shard) of RAM whatever the model size. Which tensors are the embeddings is asked of the
model class itself (built on the meta device, no weights) rather than guessed from names
(see :mod:`transplant.io.architecture`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from transplant.io.architecture import check_config, check_model, loaded_names
from transplant.io.atomic import atomic_path
from transplant.vocab.chat import end_of_turn_ids
from transplant.errors import UserError, reason
from transplant.io.shards import ShardTensor, file_tensors, read_header, torch_dtypes, torch_tensor, write_shards
from transplant.io.trust import Trust, read_json


# One bool per embedding row, True where a method initialized it. A side file, not a list
# in transplant.json: a 262k vocabulary has ~200k such ids (1 byte a row here, exact, and
# no re-run of the matching, whose rules may change between versions).
INITIALIZED_FILE = "initialized.safetensors"
# The record of a transplanted (or trained) checkpoint; also what marks a directory as one the
# tool wrote, which --force may replace (transplant.io.atomic.check_output).
RECORD_FILE = "transplant.json"


@dataclass
class Embeddings:
    """The base model's embedding tensors, by checkpoint name."""

    input_name: str
    output_name: str | None
    input: torch.Tensor
    output: torch.Tensor | None

    @property
    def tied(self) -> bool:
        return self.output is None


def weight_files(directory: Path, trust: Trust = Trust()) -> dict[str, Path]:
    """Tensor name -> file holding it, for single-file and sharded checkpoints alike; only
    the model's own safetensors unless ``trust`` allows pickle."""
    return {name: path for name, (path, _) in _tensors(directory, trust).items()}


def _tensors(directory: Path, trust: Trust) -> dict[str, tuple[Path, list[int]]]:
    """Tensor name -> (file, shape), from the headers of every weight file. A broken index,
    or a shard that is missing, unreadable or lacks a tensor the index puts in it, is one
    line naming the file, here rather than halfway through a copy."""
    source = trust.weights_file(directory)
    if not source.name.endswith(".index.json"):
        return {name: (source, shape) for name, shape in _tensor_shapes(source).items()}
    weight_map = read_json(source).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(file, str) for file in weight_map.values()):
        raise UserError(f"{source}: no weight_map from tensor names to files")
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
    tensors = {}
    for file, names in by_file.items():
        path = directory / file
        if not path.is_file():
            raise UserError(f"{source}: names {file}, which is not in {directory}")
        shapes = _tensor_shapes(path)
        for name in names:
            if name not in shapes:
                raise UserError(f"{path}: no tensor {name!r}, which {source.name} says it holds")
            tensors[name] = (path, shapes[name])
    return tensors


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in one weight file (safetensors: from its header,
    which safetensors checks against the file's length, so a truncated file fails here)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, "pt") as f:
                return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: corrupt safetensors file ({e})") from e
    return {name: list(tensor.shape) for name, tensor in _load_pickle(path).items()}


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load raises many types on a bad file
        raise UserError(f"{path}: unreadable pickle checkpoint ({type(e).__name__})") from e


def _read_tensor(path: Path, name: str) -> torch.Tensor:
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, "pt") as f:
                dtype = f.get_slice(name).get_dtype()
                if dtype not in torch_dtypes():
                    raise UserError(f"{path}: tensor {name!r} has dtype {dtype}, which torch cannot represent")
                return f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: corrupt safetensors file ({e})") from e
    return _load_pickle(path)[name].clone()


@dataclass(frozen=True)
class EmbeddingNames:
    """Which checkpoint tensors load into a model class's embeddings, asked of the class itself."""

    input: str
    output: str | None  # the lm_head weight; None for a model without one
    tied: bool  # the config (or the class) shares lm_head with the input embeddings


def model_config(directory: Path, trust: Trust = Trust()) -> PretrainedConfig:
    """config.json as transformers reads it; one it cannot read (garbage, ``{}``, a model
    type it does not know) is one line naming the file."""
    path = directory / "config.json"
    read_json(path)
    try:
        return AutoConfig.from_pretrained(directory, **trust.code_kwargs())
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{path}: transformers cannot read it ({reason(e)})") from e


def _meta_model(directory: Path, trust: Trust) -> tuple[PretrainedConfig, PreTrainedModel]:
    """The config and the causal LM it describes, built on the meta device (no weights);
    one that cannot be transplanted is refused (see :mod:`transplant.io.architecture`)."""
    config = model_config(directory, trust)
    check_config(directory, config)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, **trust.code_kwargs())
    except ValueError as e:  # a model type without a causal LM class
        raise UserError(f"{directory / 'config.json'}: no causal LM for it ({reason(e)})") from e
    check_model(directory, model)
    return config, model


def check_checkpoint(directory: Path, trust: Trust = Trust()) -> None:
    """Read every header a run will need before it starts: config.json, the index and each
    weight file, and each tensor's shape against the model config.json describes. A
    hidden_size or vocab_size that disagrees with the weights otherwise fails deep inside
    transformers, or not at all: a transplant would write a checkpoint nothing can load."""
    model = _meta_model(directory, trust)[1]
    expected = {name: list(p.shape) for name, p in model.state_dict().items()}
    tensors = _tensors(directory, trust)
    for name, param in loaded_names(model, tensors).items():
        path, shape = tensors[name]
        if expected[param] != shape:
            raise UserError(f"{path}: tensor {name!r} is {shape}, but {directory / 'config.json'} "
                            f"makes it {expected[param]}")


def embedding_names(directory: Path, trust: Trust = Trust()) -> EmbeddingNames:
    """The model class built on the meta device (no weights) says which modules are the
    embeddings; transformers' key renaming says which checkpoint tensors load into them (a
    parameter no tensor loads into keeps its own name, for the error that follows)."""
    config, model = _meta_model(directory, trust)
    modules = {id(module): name for name, module in model.named_modules()}
    input_module = model.get_input_embeddings()
    output_module = model.get_output_embeddings()
    tied_by_config = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    tied = tied_by_config or output_module is None or output_module.weight is input_module.weight
    stored = {param: name for name, param in loaded_names(model, weight_files(directory, trust)).items()}

    def name(module: torch.nn.Module) -> str:
        param = f"{modules[id(module)]}.weight"
        return stored.get(param, param)

    return EmbeddingNames(name(input_module), None if output_module is None else name(output_module), tied)


def read_embeddings(directory: Path, trust: Trust = Trust()) -> Embeddings:
    """Load just the embedding (and untied lm_head) tensors of a checkpoint.

    A tied config whose files also hold lm_head is read the way transformers loads it: a
    copy equal to the embeddings is the tied head (and is not written back, see
    :func:`write_weights`); a different one is a head of its own, which transformers keeps
    untied, so it is transplanted like any untied lm_head.
    """
    files = weight_files(directory, trust)
    names = embedding_names(directory, trust)
    if names.input not in files:
        raise UserError(f"{directory}: checkpoint has no tensor {names.input!r}")
    rows = _read_tensor(files[names.input], names.input)
    if names.output not in files or names.output == names.input:
        if not names.tied:
            raise UserError(f"{directory}: checkpoint has no tensor {names.output!r}")
        return Embeddings(names.input, None, rows, None)
    head = _read_tensor(files[names.output], names.output)
    if names.tied and torch.equal(head, rows):
        return Embeddings(names.input, None, rows, None)
    return Embeddings(names.input, names.output, rows, head)


def _base_tensors(path: Path, names: list[str], replace: dict[str, torch.Tensor]) -> list[ShardTensor]:
    """The tensors of one base shard, with replacements swapped in; unchanged ones copied as bytes."""
    if path.suffix == ".safetensors":
        copied = {t.name: t for t in file_tensors(path, [n for n in names if n not in replace])}
    else:
        state = _load_pickle(path)
        copied = {name: torch_tensor(name, state[name]) for name in names if name not in replace}
    return [torch_tensor(name, replace[name]) if name in replace else copied[name] for name in names]


def _unchanged(path: Path, names: list[str], replace: dict[str, torch.Tensor]) -> bool:
    """Whether the base shard ``path`` goes into the output as it is: safetensors, every tensor
    of it kept (none left out, none replaced)."""
    return (path.suffix == ".safetensors" and not replace.keys() & set(names)
            and set(read_header(path)[0]) == set(names))


def write_weights(base_dir: Path, out_dir: Path, replace: dict[str, torch.Tensor], trust: Trust = Trust(),
                  embeddings: bool = True) -> None:
    """Copy every tensor of the base, swapping in ``replace``; one tensor in memory at a time.
    A base shard that keeps all its tensors unchanged (a sharded checkpoint's body, when the
    embeddings and lm_head lie in other shards) is hard-linked, not copied
    (:mod:`transplant.io.links`: then read-only, in the base too).

    A tied model's lm_head copy that was not replaced (a copy of the old embeddings, see
    :func:`read_embeddings`) is left out: tied, the model reads its head from the new
    embeddings, and a copy with the old vocabulary size would not load.
    ``embeddings=False`` leaves out the embedding and lm_head tensors too: the body of a Hydra
    output (:mod:`transplant.hydra`), whose heads hold those per vocabulary.
    """
    names = embedding_names(base_dir, trust)
    stale = {names.output} if names.tied and names.output != names.input and names.output not in replace else set()
    if not embeddings:
        stale |= {names.input, names.output}
    shards: dict[Path, list[str]] = {}
    for name, path in weight_files(base_dir, trust).items():
        if name not in stale:
            shards.setdefault(path, []).append(name)
    write_shards(out_dir, [path if _unchanged(path, shard, replace) else _base_tensors(path, shard, replace)
                           for path, shard in shards.items()])


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "pad")}


def write_config(base_dir: Path, out_dir: Path, vocab_size: int, tokenizer: PreTrainedTokenizerBase,
                 base_tokenizer: PreTrainedTokenizerBase, trust: Trust = Trust()) -> None:
    """config.json and generation_config.json with the new vocabulary size and special ids.

    The generation config keeps every id the base stopped on, carried over to the new ids
    (see :func:`transplant.vocab.chat.end_of_turn_ids`), not just the one eos of config.json.
    """
    config = model_config(base_dir, trust)
    try:
        generation = GenerationConfig.from_pretrained(base_dir)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    stop = end_of_turn_ids(base_tokenizer, tokenizer, generation.eos_token_id)
    ids = special_ids(tokenizer)
    for target in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
        target.vocab_size = vocab_size
        for key, value in ids.items():
            setattr(target, key, value)
    config.save_pretrained(out_dir)
    eos = stop[0] if len(stop) == 1 else stop or None  # a single id stays an int, as transformers writes it
    for key, value in {**ids, "eos_token_id": eos}.items():
        setattr(generation, key, value)
    generation.save_pretrained(out_dir)


def export(
    base_dir: Path,
    out: Path,
    replace: dict[str, torch.Tensor],
    vocab_size: int,
    tokenizer: PreTrainedTokenizerBase,
    base_tokenizer: PreTrainedTokenizerBase,
    record: Callable[[], dict[str, Any]],
    force: bool = False,
    initialized: torch.Tensor | None = None,
    trust: Trust = Trust(),
) -> Path:
    """Write the patched checkpoint to ``out`` atomically (see :mod:`transplant.io.atomic`):
    an interrupted run never leaves a half-written OUT, and never destroys an existing one.
    ``base_tokenizer`` (already loaded by the caller) maps the base's stop ids to new ones.
    ``record()`` is called after everything else is written, so transplant.json can time the writing.
    ``initialized`` (a bool per row: rows a method made, neither copied nor padding) goes to
    :data:`INITIALIZED_FILE`, which continued pretraining reads to train only those rows."""
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    with atomic_path(out, existing="replace" if force else "refuse") as tmp:
        tmp.mkdir()
        write_weights(base_dir, tmp, replace, trust)
        write_vocabulary_files(base_dir, tmp, vocab_size, tokenizer, base_tokenizer, initialized, trust)
        write_record(tmp, record())
    return out


def write_vocabulary_files(base_dir: Path, out_dir: Path, vocab_size: int, tokenizer: PreTrainedTokenizerBase,
                           base_tokenizer: PreTrainedTokenizerBase, initialized: torch.Tensor | None = None,
                           trust: Trust = Trust()) -> None:
    """Every file of an exported checkpoint that depends on its vocabulary, except the weights
    and transplant.json: the configs (:func:`write_config`), the tokenizer's files and
    :data:`INITIALIZED_FILE`. One function, so a Hydra head writes exactly what :func:`export` does."""
    write_config(base_dir, out_dir, vocab_size, tokenizer, base_tokenizer, trust)
    tokenizer.save_pretrained(out_dir)
    if initialized is not None:
        save_file({"initialized": initialized.contiguous()}, out_dir / INITIALIZED_FILE)


def write_record(out_dir: Path, record: dict[str, Any]) -> None:
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str, allow_nan=False))
