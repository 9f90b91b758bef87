"""Train a ZeTT hypernetwork for one base model (``transplant hypernet train``).

Every step: draw a tokenizer (:mod:`transplant.hypernet.sampler`), tokenize the step's texts with it,
predict embedding rows for its tokens with the hypernetwork, and run the *frozen* base LM
on them — predicted input rows replace the embedding lookup, logits come from the
predicted output rows. Only the hypernetwork learns. Loss = causal-LM cross-entropy +
``lexical_weight`` x the squared distance between predicted and real base rows for the
tokens that are exactly one base token (they have a right answer; the rest only have the LM).

Which rows a step predicts (``vocab_mode``):
- ``full``: the whole sampled vocabulary, an exact softmax (ZeTT's setting; for a GPU).
- ``sampled``: the tokens in the batch plus ``negatives`` others drawn uniformly from the
  rest of the sampled vocabulary, whose logits get the importance correction
  log((N - positives) / negatives) so their exp-sum estimates the missing part of the
  partition function. On a CPU the hypernetwork over a whole 16k vocabulary costs far
  more than the LM (METHODS.md, cost note); this keeps it to a few thousand rows.

The first ``base_tokenizer_steps`` steps use the base tokenizer itself (every token its own
single piece): a short warm-up that anchors the heads where the right answer is known.

``objective: alm`` adds self-distillation (:mod:`transplant.training.distill`): the same
frozen base reads the same text with its own tokenizer as the teacher, and the loss becomes
``alm_weight`` x ALM + ``lm_weight`` x the cross-entropy (+ the lexical term). The cross-entropy
only asks for the next token of the text; ALM asks the predicted rows to give every stretch
of text the likelihood the base gives it. The student's log-probs are the same sampled-softmax
estimates the cross-entropy uses.

Run ``transplant hypernet train --config recipes/hypernet/smollm2-cpu.yaml --corpus F -o DIR``,
or the same under ``accelerate launch -m transplant hypernet train …`` for several processes.
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.func import functional_call
from accelerate import Accelerator
from accelerate.utils import gather_object
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from transplant.hypernet import catalog
from transplant.hypernet.sampler import SamplerConfig, TokenizerSampler, piece_bytes
from transplant.hypernet.fingerprint import CONFIG_FILE, BaseSample, base_hash
from transplant.hypernet.zett import HyperNetwork, HypernetConfig, padded_ids, save_hypernet
from transplant.io.atomic import atomic_path
from transplant.io.checkpoint import read_embeddings
from transplant.errors import UserError
from transplant.inputs.corpus import check_corpora, load_corpus, read_corpora
from transplant.evaluation.evaluate import EvalConfig, evaluate_model, prefix_token_id
from transplant.progress import scoring_lines
from transplant.io.sources import resolve_model
from transplant.io.trust import Trust
from transplant.vocab.surface import vocabulary
from transplant.training.alm import (
    ALMOutput, NextTokenLogprobs, TeacherChunks, alm_against, boundary_token_mask, next_token_logprobs,
)
from transplant.training.distill import (
    Encoder, ObjectiveConfig, Pair, Reader, Side, Teacher, boundary_tokens, encode_side,
    hf_encoder, hf_reader, read_pair, tokenizers_encoder,
)
from transplant.training.loop import (
    CHARS_PER_TOKEN, MicroBatch, StepOutput, TrainConfig, check_run_outputs, config_dict, epoch_examples, fit,
    make_accelerator, refuse_sharding, run_directory, text_chunks,
)
from transplant.vocab.matching import encode_bytes

NO_TOKEN = -1  # the token grid's padding, and its prefix column: the LM reads the base's prefix row there


@dataclass
class HypernetRunConfig(TrainConfig):
    """What every hypernetwork trainer needs (``--kind zett`` and ``hyperofa``): the base it
    is for and HN_DIR, the finished hypernetwork, written atomically at the end like every
    output; checkpoints and the log go to the run directory HN_DIR.run until then."""

    base: str = ""
    out: str = ""
    resume: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base or not self.out:
            raise UserError("hypernet training needs a base model (--base) and an output directory (-o)")
        check_run_outputs(self, Path(self.out), CONFIG_FILE, self.run_path, self.resume, self.force)

    @property
    def run_path(self) -> Path:
        return Path(f"{self.out}.run")


def write_hypernet_dir(cfg: HypernetRunConfig, run: Path, save: Callable[[Path], None], kind: str) -> None:
    """HN_DIR, atomically: what ``save`` writes into a directory (the network and its config)
    and the run's ``log.jsonl``. ``--force`` replaces an earlier one only now, at the end.
    The finished directory is added to the machine's list (:mod:`~transplant.hypernet.catalog`)
    for ``--method auto`` to find."""
    with atomic_path(Path(cfg.out), existing="replace" if cfg.force else "refuse") as tmp:
        tmp.mkdir()
        save(tmp)
        shutil.copy(run / "log.jsonl", tmp / "log.jsonl")
    catalog.remember(Path(cfg.out), kind, cfg.base)


@dataclass
class HypernetTrainConfig(HypernetRunConfig, ObjectiveConfig):
    """Everything ``transplant hypernet train`` reads; a recipe YAML sets any of it (the
    objective and ALM's knobs: :class:`~transplant.training.distill.ObjectiveConfig`)."""

    corpus: list[str] = field(default_factory=list)
    eval_corpus: str | None = None  # held-out .txt/.jsonl: bits/byte under a fixed sampled tokenizer
    eval_docs: int = 32  # per group of the eval corpus
    eval_chars: int = 6_000  # per group: bounds what an evaluation costs (stated in the log at the first one)
    # the network (0 = derived from the base; see HypernetConfig)
    width: int = 0
    layers: int = 3
    heads: int = 0
    mlp_ratio: int = 2
    max_pieces: int = 7
    # the tokenizers
    min_vocab: int = 8_000
    max_vocab: int = 32_000
    noise_std: float = 1.0
    queue_texts: int = 256
    # the step
    chunk_chars: int = 0  # characters of text per example; 0 = 6 x seq_len (enough for seq_len tokens)
    vocab_mode: Literal["sampled", "full"] = "sampled"
    negatives: int = 2048
    lexical_weight: float = 0.5
    base_tokenizer_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_corpora(self.corpus)
        if self.eval_corpus is not None:
            check_corpora([self.eval_corpus])
        if not 0 < self.min_vocab <= self.max_vocab:
            raise UserError(f"need 0 < min_vocab <= max_vocab, got {self.min_vocab} and {self.max_vocab}")
        if self.eval_chars < 1:
            raise UserError(f"eval_chars must be at least 1, got {self.eval_chars}")
        if self.max_pieces < 1 or self.negatives < 0 or self.lexical_weight < 0 or self.noise_std < 0:
            raise UserError("max_pieces must be at least 1; negatives, lexical_weight and noise_std not negative")

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(self.min_vocab, self.max_vocab, self.noise_std, self.queue_texts)


@dataclass
class StepVocab:
    """The vocabulary of one step: how it tokenizes (with offsets), how big it is, how its
    tokens are spelled in base pieces and which of them start a word (ALM's debiasing)."""

    encode: Encoder
    size: int
    pieces: Callable[[torch.Tensor], list[list[int]]]
    starts_word: Callable[[torch.Tensor], torch.Tensor]  # ids -> (n,) bool on the CPU


@dataclass
class Drawn:
    """What a micro-step drew, before any gradient: the text in the step's tokenizer, the rows
    to predict, and (``alm``) the teacher's chunks."""

    tokens: torch.Tensor  # (B, T) ids in the step's vocabulary, NO_TOKEN pads
    valid: torch.Tensor  # (B, T) bool: real tokens
    local: torch.Tensor  # (valid,) each token's index among the selected rows
    selected: torch.Tensor  # (rows,) the step vocabulary's ids whose rows are predicted, positives first
    bias: torch.Tensor  # (rows,) each candidate's logit correction
    pieces: torch.Tensor  # (rows, pieces) their spellings in base tokens, -1 padded
    starts_word: torch.Tensor  # (rows,) bool, on the CPU
    vocab_size: int
    chunks: TeacherChunks | None = None


class HypernetTask:
    """The hypernetwork trainer's side of :func:`transplant.training.loop.fit`."""

    def __init__(self, cfg: HypernetTrainConfig, accelerator: Accelerator):
        self.cfg, self.accelerator = cfg, accelerator
        base_dir = resolve_model(cfg.base)
        self.base_tokenizer = AutoTokenizer.from_pretrained(base_dir, **Trust().code_kwargs())
        self.base_vocab = vocabulary(self.base_tokenizer)
        embeddings = read_embeddings(base_dir)
        base_input = embeddings.input.float()
        base_output = None if embeddings.output is None else embeddings.output.float()
        dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
        self.lm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **Trust().model_kwargs())
        self.lm.eval().requires_grad_(False)
        self.lm.to(accelerator.device)
        self.embed_scale = embedding_scale(self.lm)
        self.prefix = prefix_token_id(self.base_tokenizer)
        config = HypernetConfig(
            hidden_size=base_input.shape[1], tied=base_output is None,
            base_hash=base_hash(self.base_vocab.tokens, base_input, base_output), width=cfg.width,
            layers=cfg.layers, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, max_pieces=cfg.max_pieces,
        )
        self.base_sample = BaseSample.of(self.base_vocab.tokens, base_input, base_output)
        torch.manual_seed(cfg.seed)
        self.model = HyperNetwork(config, base_input, base_output)
        self.sampler = TokenizerSampler(cfg.sampler)
        self.corpora = check_corpora(cfg.corpus)
        self.decompose = functools.lru_cache(maxsize=1 << 20)(
            lambda piece: encode_bytes(self.base_tokenizer, self.base_vocab, piece_bytes(piece))
        )
        self.eval_cost_said = False
        self.teacher = None  # objective alm: the frozen base, reading with its own tokenizer
        if cfg.objective == "alm":
            rows = self.lm.get_output_embeddings().weight.shape[0]
            self.teacher = Teacher(self.lm, hf_reader(self.base_tokenizer, rows), cfg.alm)

    # --- data -------------------------------------------------------------------------

    def examples(self, epoch: int) -> Iterator[str]:
        chars = self.cfg.chunk_chars or CHARS_PER_TOKEN * self.cfg.seq_len
        return epoch_examples(self.corpora, epoch, self.cfg.seed, self.cfg.shuffle_buffer,
                              functools.partial(text_chunks, chars=chars))

    def step_vocab(self, step: int, rng: np.random.Generator) -> StepVocab:
        """The base tokenizer during the warm-up, a freshly sampled one after it."""
        if step < self.cfg.base_tokenizer_steps:
            return StepVocab(hf_encoder(self.base_tokenizer), len(self.base_vocab),
                             lambda ids: [[i] for i in ids.tolist()], lambda ids: self.base_starts_word[ids.cpu()])
        tokenizer = self.sampler.sample(rng)
        return _sampled_vocab(tokenizer, self.decompose)

    @functools.cached_property
    def base_starts_word(self) -> torch.Tensor:
        return boundary_tokens(self.base_vocab, len(self.base_vocab))

    def read(self, texts: list[str], vocab: StepVocab) -> tuple[Side, Pair | None]:
        """The texts in the step's tokenizer, ``[NO_TOKEN] + up to seq_len tokens``; under
        ``alm`` also as the teacher reads the text those tokens cover, and their shared chunks."""
        if self.teacher is None:
            return encode_side(texts, vocab.encode, NO_TOKEN, NO_TOKEN, self.cfg.seq_len)[0], None
        student = Reader(vocab.encode, NO_TOKEN, NO_TOKEN, None)
        pair = read_pair(texts, student, self.teacher.reader, self.cfg.seq_len + 1, self.cfg.teacher_tokens,
                         student_reads_last=False)
        return pair.student, pair

    # --- the step -----------------------------------------------------------------------

    def prepare(self, texts: list[str], step: int, seed: int) -> MicroBatch:
        """One micro-step on this process's ``texts``: the step's tokenizer, the texts in it, the
        rows to predict and (``alm``) the teacher's chunks. The tokenizer and the rows are the
        global batch's (every process's texts, gathered), as one process would draw them for
        the whole batch; with the same ``seed`` everywhere, each process draws the same ones."""
        device, rng = self.accelerator.device, np.random.default_rng(seed)
        self.sampler.push(gather_object(texts))
        vocab = self.step_vocab(step, rng)
        side, pair = self.read(texts, vocab)
        tokens = side.ids[:, 1:].to(device)  # (B, T), NO_TOKEN pads
        valid = tokens != NO_TOKEN
        positives = torch.tensor(sorted(set(gather_object(tokens[valid].unique().tolist()))), dtype=torch.long,
                                 device=device)
        selected, bias = self.candidates(positives, vocab, rng)
        chunks = None if pair is None else self.teacher.chunks(pair, True, device, self.accelerator.autocast)
        drawn = Drawn(tokens, valid, torch.searchsorted(positives, tokens[valid]), selected, bias,
                      padded_ids(vocab.pieces(selected)).to(device), vocab.starts_word(selected), vocab.size, chunks)
        counts = {"tokens": valid.sum()} | ({} if chunks is None else {"chunks": chunks.count})
        return MicroBatch(drawn, counts)

    def loss(self, model: torch.nn.Module, batch: MicroBatch, share: dict[str, torch.Tensor]) -> StepOutput:
        """The frozen LM reading the predicted rows: the cross-entropy (and ALM) as means over the
        whole step's tokens (and chunks), plus the lexical term."""
        cfg, drawn = self.cfg, batch.inputs
        tokens, valid, local = drawn.tokens, drawn.valid, drawn.local
        with self.accelerator.autocast():
            rows_in, rows_out = model(drawn.pieces)
            rows_out = rows_in if rows_out is None else rows_out
            # position 0 reads the base's document prefix (BOS); position i + 1 reads token i
            table = torch.cat([self.model.base_input[self.prefix].unsqueeze(0), rows_in]) * self.embed_scale
            token_rows = torch.zeros_like(tokens)
            token_rows[valid] = local + 1
            inputs = torch.cat([torch.zeros_like(tokens[:, :1]), token_rows[:, :-1]], dim=1)
            mask = torch.cat([torch.ones_like(valid[:, :1]), valid[:, :-1]], dim=1).long()
            logits = step_logits(self.lm, table[inputs], mask, rows_out)[valid].float() + drawn.bias
            # one softmax over the candidates for both objectives: the CE is the mean token log-prob
            debiased = drawn.chunks is not None and drawn.chunks.debiased
            logp = next_token_logprobs(logits, local, drawn.starts_word if debiased else None)
            ce = -logp.token.mean()
            lexical = self.lexical(drawn.pieces, rows_in, rows_out)
        ce_all = ce * share["tokens"]
        loss = ce_all + cfg.lexical_weight * lexical
        metrics = {"ce": ce.item(), "lexical": lexical.item(), "vocab": float(drawn.vocab_size),
                   "rows": float(len(drawn.selected))}
        if drawn.chunks is not None:
            alm = self.distill(logp, drawn)
            loss = cfg.alm_weight * alm.loss * share["chunks"] + cfg.lm_weight * ce_all + cfg.lexical_weight * lexical
            metrics |= {"alm": alm.loss.item(), "chunks": float(alm.num_chunks), "chunk_gap": alm.mean_abs_logp_diff.item()}
        return StepOutput(loss, int(batch.counts["tokens"]), metrics)

    def distill(self, logp: NextTokenLogprobs, drawn: Drawn) -> ALMOutput:
        """ALM against the base's chunks (its pass was in :meth:`prepare`). ``logp`` (valid
        positions) come from the step's sampled softmax with the candidates' corrections: the
        log-probs ALM compares are the CE's estimates."""
        boundary_logp = None if logp.boundary is None else on_grid(logp.boundary, drawn.valid)
        return alm_against(on_grid(logp.token, drawn.valid), drawn.chunks, temperature=self.teacher.config.temperature,
                           student_boundary_logp=boundary_logp)

    def candidates(self, positives: torch.Tensor, vocab: StepVocab, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids whose rows this step predicts (positives first) and each one's logit correction.

        Tokens the base cannot spell are left out: they are bytes that never occur in UTF-8
        text (a byte-level base drops them from its vocabulary), so they never occur here either.
        """
        device = positives.device
        spellable = torch.tensor([bool(p) for p in vocab.pieces(torch.arange(vocab.size))])
        spellable[positives.cpu()] = False
        rest = spellable.nonzero().squeeze(1).numpy()
        drawn = rest if self.cfg.vocab_mode == "full" else rng.choice(rest, min(self.cfg.negatives, len(rest)), replace=False)
        correction = math.log(len(rest) / len(drawn)) if len(drawn) else 0.0
        selected = torch.cat([positives, torch.as_tensor(drawn, dtype=torch.long, device=device)])
        bias = torch.cat([torch.zeros(len(positives), device=device), torch.full((len(drawn),), correction, device=device)])
        return selected, bias

    def lexical(self, pieces: torch.Tensor, rows_in: torch.Tensor, rows_out: torch.Tensor) -> torch.Tensor:
        """Mean squared distance (summed over dimensions) to the base rows, over the tokens
        that are exactly one base token; 0 when a step has none."""
        single = (pieces[:, 0] >= 0) & ((pieces[:, 1:] < 0).all(1) if pieces.shape[1] > 1 else True)
        if not single.any():
            return rows_in.sum() * 0.0
        ids = pieces[single, 0]
        distance = (rows_in[single] - self.model.base_input[ids]).pow(2).sum(-1)
        if self.model.base_output is not None:
            distance = distance + (rows_out[single] - self.model.base_output[ids]).pow(2).sum(-1)
        return distance.float().mean()

    # --- evaluation and export -----------------------------------------------------------

    def evaluate(self, model: HyperNetwork) -> dict[str, float]:
        """Bits per byte of the frozen LM on the eval corpus under one fixed tokenizer
        (sampled from the eval text itself with seed 0): the same figure at every eval, so
        the curve shows what training changed; the first point is the ``subword`` baseline."""
        if self.cfg.eval_corpus is None:
            return {}
        docs = load_corpus(Path(self.cfg.eval_corpus), self.cfg.eval_docs, self.cfg.eval_chars)
        sampler = TokenizerSampler(SamplerConfig((self.cfg.min_vocab + self.cfg.max_vocab) // 2,
                                                 (self.cfg.min_vocab + self.cfg.max_vocab) // 2, 0.0, len(docs)))
        sampler.push(d.text for d in docs)
        tokenizer = sampler.sample(np.random.default_rng(0))
        vocab = _sampled_vocab(tokenizer, self.decompose)
        bos = self.base_tokenizer.convert_ids_to_tokens(self.prefix)
        tokenizer.add_special_tokens([bos])
        rows_in, rows_out = self.predict_all(model, vocab)
        prefix_in = model.base_input[self.prefix : self.prefix + 1]
        prefix_out = model.matrix("output")[self.prefix : self.prefix + 1]
        with swapped_embeddings(self.lm, torch.cat([rows_in, prefix_in]), torch.cat([rows_out, prefix_out])):
            result = evaluate_model(self.lm, PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos), docs,
                                    config=EvalConfig(batch_size=4, max_length=self.cfg.seq_len),
                                    progress=scoring_lines("  evaluating: windows"))
        if not self.eval_cost_said:
            self.eval_cost_said = True
            self.accelerator.print(self.eval_cost(len(docs), result.overall.tokens))
        figures = {"bpb": result.overall.bits_per_byte}
        if len(result.groups) > 1:
            figures.update({f"bpb/{group}": score.bits_per_byte for group, score in result.groups.items()})
        return figures

    def eval_cost(self, docs: int, tokens: int) -> str:
        """What one evaluation reads, against the tokens trained between two of them."""
        trained = (self.cfg.eval_every or self.cfg.steps) * self.cfg.batch_size * self.cfg.grad_accum \
            * self.cfg.seq_len * self.accelerator.num_processes
        return (f"evaluation: {docs} documents, {tokens:,} tokens (eval_chars {self.cfg.eval_chars:,} per group), "
                f"{tokens / trained:.0%} of the {trained:,} tokens trained between evaluations, forward only")

    @torch.no_grad()
    def predict_all(self, model: HyperNetwork, vocab: StepVocab, batch: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [model(padded_ids(vocab.pieces(ids)).to(model.base_input.device))
                 for ids in torch.arange(vocab.size).split(batch)]
        rows_in = torch.cat([p[0] for p in parts])
        rows_out = rows_in if model.config.tied else torch.cat([p[1] for p in parts])
        return rows_in, rows_out

    def export(self, model: HyperNetwork, run: Path) -> None:
        record = {"base": self.cfg.base, "training": config_dict(self.cfg)}
        write_hypernet_dir(self.cfg, run, lambda out: save_hypernet(model, out, self.base_sample, record), "zett")

    def should_stop(self) -> bool:
        return False

    def adam_eps(self) -> dict[torch.nn.Parameter, float]:
        return {}

    def state_objects(self) -> list:
        return [self.sampler]


def on_grid(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-position values of the valid positions (in ``hidden[valid]``'s order) on the
    (B, T + 1) grid of the student's :class:`~transplant.training.distill.Side`, zeros elsewhere.

    Hidden position i reads the prefix (i = 0) or token i - 1 and predicts token i, which the
    side holds at column i + 1; ALM reads a token's log-prob at the column before it, i.e. at
    i. So the grid is the hidden positions' own, plus the side's last column (which predicts
    nothing)."""
    rows, columns = valid.nonzero(as_tuple=True)
    return values.new_zeros(valid.shape[0], valid.shape[1] + 1).index_put((rows, columns), values)


def _sampled_vocab(tokenizer: Tokenizer, decompose: Callable[[str], list[int]]) -> StepVocab:
    def starts_word(ids: torch.Tensor) -> torch.Tensor:
        texts = [piece_bytes(tokenizer.id_to_token(i)).decode("utf-8", errors="replace") for i in ids.tolist()]
        return boundary_token_mask(texts)

    return StepVocab(tokenizers_encoder(tokenizer), tokenizer.get_vocab_size(),
                     lambda ids: [decompose(tokenizer.id_to_token(i)) for i in ids.tolist()], starts_word)


def embedding_scale(lm) -> float:
    """The factor the model's embedding module applies to a looked-up row (Gemma scales by
    sqrt(hidden)); predicted rows bypass that module, so they get it here."""
    embed = lm.get_input_embeddings()
    probe = torch.arange(min(8, embed.weight.shape[0]), device=embed.weight.device)
    with torch.no_grad():
        looked_up, raw = embed(probe).float(), embed.weight[probe].float()
    return float(looked_up.norm() / raw.norm().clamp(min=1e-12))


def step_logits(lm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, rows_out: torch.Tensor) -> torch.Tensor:
    """(B, T, len(rows_out)) logits of the frozen ``lm`` reading ``inputs_embeds``, with
    ``rows_out`` as its output matrix (gradients flow into them).

    The model's own forward computes them, head included: what an architecture does to its
    logits (Gemma's soft-cap, Cohere's ``logit_scale``, Granite's ``logits_scaling``) is then
    never missed, as it was when the head was written out here as a matmul."""
    head = lm.get_output_embeddings().weight
    name = next(name for name, param in lm.named_parameters() if param is head)
    return functional_call(lm, {name: rows_out.to(head.dtype)}, kwargs=dict(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)).logits


@contextmanager
def swapped_embeddings(lm, rows_in: torch.Tensor, rows_out: torch.Tensor) -> Iterator[None]:
    """The LM with its embedding and lm_head weights replaced for a while (then restored)."""
    embed, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    saved = embed.weight, head.weight
    dtype = saved[0].dtype
    embed.weight = torch.nn.Parameter(rows_in.to(dtype), requires_grad=False)
    head.weight = torch.nn.Parameter(rows_out.to(dtype), requires_grad=False)
    try:
        yield
    finally:
        embed.weight, head.weight = saved


def train(cfg: HypernetTrainConfig) -> Path:
    """Train a hypernetwork as ``cfg`` says; returns the directory ``--method zett`` reads."""
    read_corpora(check_corpora(cfg.corpus))  # a bad line anywhere: one line now, before the base loads
    accelerator = make_accelerator(cfg)
    refuse_sharding(accelerator, "hypernetwork training does not shard (its network is small)")
    task = HypernetTask(cfg, accelerator)
    with run_directory(cfg.run_path, config_dict(cfg), cfg.resume, accelerator):
        fit(task, cfg, cfg.run_path, accelerator, resume=cfg.resume)
    return Path(cfg.out)

