"""Train a Marian translation model from scratch on the splits that ``mtserve.training.data`` writes.

    python -m mtserve.training.train --data data/de-en --vocab data/vocab --out runs/de-en \\
        --d-model 256 --layers 3 --heads 4 --ffn 1024 --max-tokens 8192 --max-steps 20000 --device cuda

What it does, in the usual recipe for transformer NMT (fairseq, Marian):

- batches of at most ``--max-tokens`` padded tokens (``len(batch) * longest side``) from
  length-sorted buckets, so little compute goes into padding; batch order shuffled per epoch;
- label-smoothed cross-entropy over the non-pad target tokens;
- AdamW (fused on CUDA), linear warm-up to ``--lr`` over ``--warmup`` steps, then inverse-square-root
  decay, or (``--schedule cosine``) half a cosine to zero at ``--max-steps`` or ``--max-time``;
- dropout from the model config, gradient-norm clipping, bf16 autocast on CUDA and on bf16 CPUs;
- optionally an exponential moving average of the weights (``--ema-decay``, evaluated and exported),
  the full-sentence pairs seen several times an epoch (``--oversample-sentences``), a weight per data
  source (``--source-weights``, with the ``train.source`` file the corpus writes), and encoder and
  decoder depths of their own (``--encoder-layers``/``--decoder-layers``);
- greedy decoding of a dev subset every ``--eval-interval`` steps with the serving decoder
  (the engine core's step, so what is measured is what mtserve will produce), scored with sacrebleu
  (BLEU and chrF), plus the teacher-forced dev loss;
- a checkpoint (model, optimizer, scheduler, step, data position, RNG) written atomically to
  ``<out>.train/checkpoint.pt`` at every evaluation; a rerun with the same ``--out`` resumes it.

Training state stays out of ``--out`` on purpose: that directory is the finished model in the
Marian layout (config.json, model.safetensors, source/target.spm, vocab.json, tokenizer_config.json,
generation_config.json), loadable by mtserve and Transformers alike, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm import tqdm

from mtserve.engine.batch import NewText
from mtserve.engine.core import EngineCore
from mtserve.engine.scheduler import Request, Scheduler, Text
from mtserve.model.checkpoint import load_model, save_model
from mtserve.model.config import ModelConfig
from mtserve.model.options import SearchOptions
from mtserve.model.tokenizers import MarianTokenizer
from mtserve.model.transformer import Transformer

from .data import is_full_sentence, read_split
from .vocab import copy_vocab

Example = tuple[list[int], list[int]]  # (source ids ending in </s>, target ids ending in </s>)
SCHEDULES = ("inverse-sqrt", "cosine")


@dataclass
class TrainConfig:
    """Everything a run depends on; validated here so a bad flag fails before any work."""

    data: Path
    vocab: Path
    out: Path
    d_model: int = 256
    layers: int = 3
    encoder_layers: int | None = None  # None: `layers`; a deep encoder and shallow decoder decodes faster
    decoder_layers: int | None = None
    heads: int = 4
    ffn: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    max_tokens: int = 4096
    max_length: int = 128
    lr: float = 7e-4
    warmup: int = 4000
    schedule: str = "inverse-sqrt"  # or "cosine": to zero at max_steps, or at max_time if that comes first
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_steps: int = 100_000
    max_time: float | None = None  # seconds of this invocation, not counting the data loading
    eval_interval: int = 1000
    eval_size: int = 500
    eval_sets: tuple[str, ...] = ("dev-sentences", "dev")
    # Each pair of the `train-sentences` split (the full sentences inside `train`) is seen this many times
    # an epoch: they are 5% of the pairs but what the model most needs to learn structure from.
    oversample_sentences: int = 1
    # Times each pair of a source is seen per epoch, by the source names in train.source (a fraction: that
    # share of its pairs, drawn anew each epoch); "<source>-sentences" weighs that source's full sentences.
    # Sources not named weigh 1. Empty: every pair once (and train.source is not needed).
    source_weights: dict[str, float] = field(default_factory=dict)
    # Exponential moving average of the weights (0 = off): what is evaluated and exported when on.
    ema_decay: float = 0.0
    seed: int = 1
    device: str = "auto"
    threads: int | None = None
    amp: bool = True
    progress: bool = True
    state_dir: Path | None = None
    # Start from these weights (a Marian directory of the same architecture) instead of a random init:
    # how training continues across machines when only the exported model survives.
    init_from: Path | None = None
    save_dtype: str | None = None  # weights on disk: None keeps float32; float16 halves the file
    # At each evaluation the raw weights (not the EMA) go to STATE/snapshots/step-N, a Marian directory;
    # the newest this many are kept, for checkpoint averaging (python -m mtserve.training.average). 0: none.
    keep_snapshots: int = 0

    def __post_init__(self) -> None:
        self.data, self.vocab, self.out = Path(self.data), Path(self.vocab), Path(self.out)
        self.init_from = Path(self.init_from) if self.init_from else None
        default_state = self.out.with_name(self.out.name + ".train")
        self.state_dir = Path(self.state_dir) if self.state_dir else default_state
        self.encoder_layers = self.encoder_layers or self.layers
        self.decoder_layers = self.decoder_layers or self.layers
        for name in ("d_model", "layers", "encoder_layers", "decoder_layers", "heads", "ffn", "max_tokens",
                     "max_length", "max_steps", "eval_interval", "warmup", "oversample_sentences"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.max_tokens < self.max_length:
            raise ValueError(f"max_tokens {self.max_tokens} is below max_length {self.max_length}: "
                             "the longest example would not fit a batch")
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be positive, got {self.max_time!r}")
        if not isinstance(self.keep_snapshots, int) or self.keep_snapshots < 0:
            raise ValueError(f"keep_snapshots must be a non-negative integer, got {self.keep_snapshots!r}")
        for name, weight in self.source_weights.items():
            if not (isinstance(weight, int | float) and 0 <= weight <= 100):
                raise ValueError(f"source weight of {name!r} must be a number in [0, 100], got {weight!r}")

    def model_config(self, vocab: MarianTokenizer) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab.source_vocab_size,
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.heads,
            decoder_attention_heads=self.heads,
            encoder_ffn_dim=self.ffn,
            decoder_ffn_dim=self.ffn,
            max_position_embeddings=max(512, self.max_length + 2),
            pad_token_id=vocab.pad_id,
            eos_token_id=vocab.eos_id,
            decoder_start_token_id=vocab.pad_id,
            forced_eos_token_id=vocab.eos_id,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout,
        )


# --- data --------------------------------------------------------------------------------------


def encode_pairs(vocab: MarianTokenizer, src: Sequence[str], tgt: Sequence[str], max_length: int) -> list[Example]:
    """Token ids of each pair, dropping pairs with a side over ``max_length`` (``</s>`` included)."""
    return [example for example, kept in keep_pairs(vocab, src, tgt, max_length) if kept is not None]


def keep_pairs(vocab: MarianTokenizer, src: Sequence[str], tgt: Sequence[str], max_length: int
               ) -> list[tuple[Example, int | None]]:
    """Each pair's token ids, with its index, or None where a side is over ``max_length`` (``</s>`` included)."""
    pairs = zip(vocab.encode_batch(src), vocab.encode_target_batch(tgt), strict=True)
    return [((s, t), i if len(s) <= max_length and len(t) <= max_length else None) for i, (s, t) in enumerate(pairs)]


def make_batches(examples: Sequence[Example], max_tokens: int, seed: int, epoch: int,
                 indices: Sequence[int] | None = None) -> list[list[int]]:
    """Indices (of `indices`, by default all examples; one may repeat) grouped into batches of at most
    ``max_tokens`` padded tokens, in shuffled order.

    Sorting by length (random tie-break, so ties do not always meet the same
    neighbours) puts similar lengths together; the cost of a batch is its size
    times its longest side, which is what the padded tensors hold. Deterministic
    in ``(seed, epoch)``, so a resumed run sees the same batches.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    chosen = range(len(examples)) if indices is None else indices
    # One key per occurrence: a repeated example gets its own tie-break, so its copies need not meet.
    keys = [(max(len(examples[i][0]), len(examples[i][1])), len(examples[i][0]), rng.random()) for i in chosen]
    positions = sorted(range(len(keys)), key=keys.__getitem__)
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for position in positions:
        index, length = chosen[position], keys[position][0]
        if batch and (len(batch) + 1) * max(longest, length) > max_tokens:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(index)
        longest = max(longest, length)
    if batch:
        batches.append(batch)
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S) True at real tokens
    decoder_input_ids: torch.Tensor  # (B, T): decoder start (= pad) then the target shifted right
    labels: torch.Tensor  # (B, T): the target, pad where there is none
    target_tokens: int  # real target tokens: known on the host, so no device sync to count them
    tokens: int  # real source + target tokens, for throughput


def collate(examples: Sequence[Example], pad_id: int, start_id: int, device: torch.device) -> Batch:
    """Pad a list of examples into tensors on ``device``."""
    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples)
    # Padded rows built as lists and converted once: one tensor per example would cost more than a GPU step
    # at the batch sizes a GPU trains with.
    input_ids = torch.tensor([s + [pad_id] * (src_len - len(s)) for s, _ in examples], dtype=torch.long)
    labels = torch.tensor([t + [pad_id] * (tgt_len - len(t)) for _, t in examples], dtype=torch.long)
    decoder_input_ids = torch.tensor([[start_id, *t[:-1]] + [pad_id] * (tgt_len - len(t)) for _, t in examples],
                                     dtype=torch.long)
    target_tokens = sum(len(t) for _, t in examples)
    tokens = target_tokens + sum(len(s) for s, _ in examples)
    pin = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    return Batch(move(input_ids), move(input_ids != pad_id), move(decoder_input_ids), move(labels),
                 target_tokens, tokens)


# --- objective and schedule ---------------------------------------------------------------------


def label_smoothed_loss(
    logits: torch.Tensor, labels: torch.Tensor, pad_id: int, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed loss sum, NLL sum) over the target tokens, pad positions ignored.

    The smoothing mass is spread over every id but pad: pad is never a correct
    output, so teaching the model to give it probability only wastes capacity.
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    mask = labels != pad_id
    nll = -logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    uniform = -(logprobs.sum(-1) - logprobs[..., pad_id]) / (logprobs.shape[-1] - 1)  # (B, T)
    loss = (1.0 - smoothing) * nll + smoothing * uniform
    return loss[mask].sum(), nll[mask].sum()


def inverse_sqrt_schedule(warmup: int):
    """Multiplier of the peak learning rate: linear up to 1 at ``warmup``, then sqrt(warmup/step)."""

    def factor(step: int) -> float:  # LambdaLR passes the number of steps taken so far
        step = step + 1
        return step / warmup if step < warmup else math.sqrt(warmup / step)

    return factor


def cosine_schedule(warmup: int, progress: Callable[[int], float]):
    """Multiplier of the peak learning rate: linear warm-up, then half a cosine down to 0 at progress 1.

    ``progress(step)`` is the fraction of the run done (0..1): steps over ``max_steps``, or time over
    ``max_time`` when the run is budgeted by time, so the decay ends when the run does.
    """

    def factor(step: int) -> float:
        step = step + 1
        if step < warmup:
            return step / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress(step))))

    return factor


def init_weights(model: nn.Module, d_model: int, pad_id: int) -> None:
    """The transformer-NMT initialisation (fairseq): Xavier linears, N(0, d^-1/2) embeddings, zero biases.

    Embeddings are scaled by sqrt(d_model) in the forward pass, so this gives
    them unit variance there; the tied output projection shares the embedding.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in model.modules():  # after the linears, so a tied lm_head ends up with this
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, d_model**-0.5)
            with torch.no_grad():
                module.weight[pad_id].zero_()


def load_weights(model: Transformer, path: Path) -> None:
    """Copy the weights of the Marian directory `path` into `model` (their configs must agree)."""
    source_config, source = load_model(path, device="cpu", dtype="float32")
    if source_config.to_dict() != model.config.to_dict():
        raise ValueError(f"--init-from {path}: its config.json describes a different model than these flags")
    model.load_state_dict(source.state_dict())


def zero_pad_embedding(model: Transformer, pad_id: int) -> None:
    """Keep the <pad> row of every embedding table at zero.

    The decoder starts from <pad>, and Marian and CTranslate2 start it from a zero embedding (CTranslate2
    drops the <pad> row altogether); OPUS-MT checkpoints have that row at zero. The lookup never moves it
    (padding_idx), but the tied output projection does: softmax gradients reach every row.
    """
    with torch.no_grad():
        for embedding in {id(e): e for e in (model.encoder.embed_tokens, model.decoder.embed_tokens)}.values():
            embedding.weight[pad_id].zero_()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the betas/eps of transformer NMT; no decay on biases and norms."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()  # tied weights once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)  # one kernel for all parameters instead of several per tensor
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-9, fused=fused or None)


# --- evaluation ------------------------------------------------------------------------------------


def greedy_decode(model: Transformer, sources: Sequence[list[int]], max_rows: int = 256) -> list[list[int]]:
    """Greedy outputs (token ids without ``</s>``) through the serving decoder (KV cache, batched).

    Each text may run to ``2 * len(source) + 10`` tokens: an early model that has
    not learnt to stop would otherwise decode to the position limit every time.
    """
    was_training = model.training
    model.eval()
    limit = model.config.max_position_embeddings
    texts = []
    for index, source in enumerate(sources):
        options = SearchOptions(beam_size=1, max_length=min(limit, 2 * len(source) + 10))
        texts.append(Text(index, 1, len(source), options.max_length, work=NewText(list(source), options)))
    scheduler = Scheduler(max(1, min(max_rows, len(sources))), 2**62, max(1, len(sources)))
    core = EngineCore(model, scheduler, name="evaluation")
    events = core.run_to_end(Request("evaluation", texts, arrival_time=0.0))
    model.train(was_training)
    return [event.hypotheses[0].token_ids if event.hypotheses else [] for event in events]


@torch.no_grad()
def dev_loss(model: Transformer, examples: Sequence[Example], cfg: TrainConfig, pad_id: int,
             device: torch.device) -> float:
    """Teacher-forced per-token NLL on ``examples`` (no smoothing, dropout off)."""
    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    for indices in make_batches(examples, cfg.max_tokens, 0, 0):
        batch = collate([examples[i] for i in indices], pad_id, pad_id, device)
        with autocast(device, cfg.amp):
            logits = model(batch.input_ids, batch.attention_mask, batch.decoder_input_ids)
        _, nll = label_smoothed_loss(logits, batch.labels, pad_id, 0.0)
        nll_sum, count = nll_sum + float(nll), count + batch.target_tokens
    model.train(was_training)
    return nll_sum / max(count, 1)


def evaluate(model: Transformer, vocab: MarianTokenizer, eval_sets: dict[str, tuple[list[str], list[str]]],
             cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """BLEU, chrF (sacrebleu, greedy) and dev loss for each evaluation set."""
    import sacrebleu  # the 'train' extra; imported here so the module loads without it

    metrics: dict[str, float] = {}
    for name, (src, refs) in eval_sets.items():
        # Over-long sources are cut rather than dropped, so every reference gets a hypothesis.
        sources = [s if len(s) <= cfg.max_length else [*s[: cfg.max_length - 1], vocab.eos_id]
                   for s in vocab.encode_batch(src)]
        outputs = greedy_decode(model, sources)
        hyps = [vocab.decode(ids) for ids in outputs]
        metrics[f"{name}/bleu"] = round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
        metrics[f"{name}/chrf"] = round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
        examples = encode_pairs(vocab, src, refs, cfg.max_length)
        metrics[f"{name}/loss"] = round(dev_loss(model, examples, cfg, vocab.pad_id, device), 4)
    return metrics


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 (or AMX): bf16 matmuls run several times faster than float32 there."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast (no loss scaling needed, unlike fp16) on CUDA, and on CPUs with native bf16.

    Measured on this project's 2-core AVX-512 BF16 CPU: a training step of the default model took
    about half the time under bf16 autocast. Weights and optimizer state stay float32.
    """
    on = enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


# --- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export_model(
    model: Transformer, config: ModelConfig, vocab_dir: Path, out: Path, dtype: str | None = None
) -> Path:
    """The finished model in the Marian layout: weights (in `dtype`, e.g. float16 to halve the file),
    config, tokenizer files, generation defaults."""
    save_model(model, config, out, dtype=dtype)
    copy_vocab(vocab_dir, out)
    generation = {
        "bad_words_ids": [[config.pad_token_id]],
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "forced_eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "max_length": 256,
        "num_beams": 4,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return out


def snapshot(model: Transformer, config: ModelConfig, cfg: TrainConfig, step: int) -> Path:
    """Export the weights of this step to STATE/snapshots/step-N and drop all but the newest
    ``keep_snapshots`` (the step number is zero-padded, so names sort in step order)."""
    folder = cfg.state_dir / "snapshots"
    out = export_model(model, config, cfg.vocab, folder / f"step-{step:07d}")
    for old in sorted(folder.glob("step-*"))[: -cfg.keep_snapshots]:
        shutil.rmtree(old)
    return out


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    loss: float  # mean training loss over the last log window
    metrics: dict[str, float]
    out: Path


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_indices(groups: Sequence[str], weights: dict[str, float], seed: int, epoch: int) -> list[int]:
    """The examples of one epoch under per-group weights: each example of a group of weight w appears
    floor(w) times, and a fraction (w - floor(w)) of the group once more, drawn anew each epoch
    (deterministic in seed and epoch, so a resumed run sees the same epoch)."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    rng = random.Random(seed * 7_919 + epoch)
    chosen: list[int] = []
    for group in sorted(members):
        indices, weight = members[group], weights.get(group, 1.0)
        whole = int(weight)
        chosen += indices * whole
        extra = round((weight - whole) * len(indices))
        chosen += rng.sample(indices, extra)
    return chosen


def example_groups(sources: Sequence[str], pairs: Sequence[tuple[str, str]], weights: dict[str, float]
                   ) -> list[str]:
    """Each example's weight group: "<source>-sentences" for a full sentence (data.is_full_sentence) when
    that group has a weight, else its source."""
    return [f"{source}-sentences" if f"{source}-sentences" in weights and is_full_sentence(de, en) else source
            for source, (de, en) in zip(sources, pairs, strict=True)]


def _batches_from(examples: Sequence[Example], cfg: TrainConfig, epoch: int, position: int,
                  groups: Sequence[str] | None = None) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, position after this batch, indices) forever, starting at ``position`` of ``epoch``."""
    while True:
        indices = epoch_indices(groups, cfg.source_weights, cfg.seed, epoch) if groups is not None else None
        batches = make_batches(examples, cfg.max_tokens, cfg.seed, epoch, indices)
        for i in range(position, len(batches)):
            yield epoch, i + 1, batches[i]
        epoch, position = epoch + 1, 0


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; returns where it stopped and the last dev metrics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    vocab = MarianTokenizer.from_dir(cfg.vocab)
    groups = None
    if cfg.source_weights:
        src, tgt = read_split(cfg.data, "train")
        sources = (cfg.data / "train.source").read_text(encoding="utf-8").splitlines()
        if len(sources) != len(src):
            raise ValueError(f"{cfg.data}/train.source has {len(sources)} lines, train.de has {len(src)}")
        keep = keep_pairs(vocab, src, tgt, cfg.max_length)
        examples = [example for example, kept in keep if kept is not None]
        kept_pairs = [(src[i], tgt[i]) for i, (_, kept) in enumerate(keep) if kept is not None]
        groups = example_groups([sources[i] for i, (_, kept) in enumerate(keep) if kept is not None], kept_pairs,
                                cfg.source_weights)
    else:
        examples = encode_pairs(vocab, *read_split(cfg.data, "train"), cfg.max_length)
    if cfg.oversample_sentences > 1:
        sentences = encode_pairs(vocab, *read_split(cfg.data, "train-sentences"), cfg.max_length)
        examples += sentences * (cfg.oversample_sentences - 1)
        if groups is not None:
            groups += ["sentences (oversampled)"] * (len(sentences) * (cfg.oversample_sentences - 1))
    eval_sets = {}
    for name in cfg.eval_sets:
        if (cfg.data / f"{name}.de").exists():
            src, tgt = read_split(cfg.data, name)
            if src:  # sacrebleu cannot score an empty set
                eval_sets[name] = (src[: cfg.eval_size], tgt[: cfg.eval_size])

    config = cfg.model_config(vocab)
    model = Transformer(config)
    init_weights(model, cfg.d_model, vocab.pad_id)
    if cfg.init_from is not None:
        load_weights(model, cfg.init_from)
        zero_pad_embedding(model, vocab.pad_id)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    started = time.perf_counter()  # data loading does not count against max_time

    def progress(step: int) -> float:
        done = step / cfg.max_steps
        if cfg.max_time is not None:  # the time budget is this invocation's, so is the decay's horizon
            done = max(done, (time.perf_counter() - started) / cfg.max_time)
        return done

    factor = (inverse_sqrt_schedule(cfg.warmup) if cfg.schedule == "inverse-sqrt"
              else cosine_schedule(cfg.warmup, progress))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
           if cfg.ema_decay else None)
    final = ema.module if ema is not None else model  # the weights that are evaluated and exported

    checkpoint_path = cfg.state_dir / "checkpoint.pt"
    step, epoch, position = 0, 0, 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["model_config"] != config.to_dict():
            raise ValueError(f"{checkpoint_path} holds a different model; use another --out or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{checkpoint_path} was trained without --ema-decay; resume it without")
            ema.load_state_dict(state["ema"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu())
    resumed_from = step
    log_path = cfg.state_dir / "log.jsonl"
    cfg.state_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "step": step, "epoch": epoch, "position": position,
            "model_config": config.to_dict(), "train_config": _jsonable(asdict(cfg)),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
        })

    def log(record: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    group_sizes = {g: groups.count(g) for g in sorted(set(groups))} if groups is not None else {}
    log({"event": "start", "step": step, "examples": len(examples), "device": str(device),
         "groups": group_sizes, "epoch_examples": len(epoch_indices(groups, cfg.source_weights, cfg.seed, 0))
         if groups is not None else len(examples),
         "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
         "config": _jsonable(asdict(cfg))})
    meter = _Meter(device)
    last_loss, metrics = math.nan, {}
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not cfg.progress, dynamic_ncols=True, unit="step")
    batches = _batches_from(examples, cfg, epoch, position, groups)
    while step < cfg.max_steps and (cfg.max_time is None or time.perf_counter() - started < cfg.max_time):
        epoch, position, indices = next(batches)
        batch = collate([examples[i] for i in indices], vocab.pad_id, config.decoder_start_token_id, device)
        with autocast(device, cfg.amp):
            logits = model(batch.input_ids, batch.attention_mask, batch.decoder_input_ids)
        loss_sum, _ = label_smoothed_loss(logits, batch.labels, vocab.pad_id, cfg.label_smoothing)
        loss = loss_sum / batch.target_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        zero_pad_embedding(model, vocab.pad_id)
        if ema is not None:
            ema.update_parameters(model)
        scheduler.step()
        step += 1

        meter.add(loss_sum, batch)
        if step % 10 == 0 or step == cfg.max_steps:
            last_loss, speed = meter.report()
            lr = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{speed:,.0f}", lr=f"{lr:.2e}")
            log({"step": step, "loss": round(last_loss, 4), "tokens_per_s": round(speed), "lr": lr,
                 "epoch": epoch})
        bar.update(1)
        if step % cfg.eval_interval == 0:
            metrics = evaluate(final, vocab, eval_sets, cfg, device)
            log({"step": step, "eval": metrics})
            bar.write(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
            checkpoint()
            if cfg.keep_snapshots:
                snapshot(model, config, cfg, step)
    bar.close()
    if meter.targets:  # steps since the last report
        last_loss, _ = meter.report()

    if step % cfg.eval_interval or not metrics:  # the loop did not just evaluate this step
        metrics = evaluate(final, vocab, eval_sets, cfg, device)
        log({"step": step, "eval": metrics})
    checkpoint()
    final.eval()
    export_model(final, config, cfg.vocab, cfg.out, cfg.save_dtype)
    log({"event": "done", "step": step, "seconds": round(time.perf_counter() - started, 1)})
    return TrainResult(step, resumed_from, last_loss, metrics, cfg.out)


class _Meter:
    """Training loss and throughput since the last report.

    The loss is summed on the device and read only at a report: reading it
    every step would make the host wait for the GPU each step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.targets, self.tokens, self.start = 0, 0, time.perf_counter()

    def add(self, loss_sum: torch.Tensor, batch: Batch) -> None:
        self.loss += loss_sum.detach()
        self.targets += batch.target_tokens
        self.tokens += batch.tokens

    def report(self) -> tuple[float, float]:
        """(mean loss per target token, source + target tokens per second), then start a new window."""
        loss = float(self.loss) / max(self.targets, 1)
        speed = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self._reset()
        return loss, speed


def _jsonable(values: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
            for k, v in values.items()}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description="Train a Marian translation model (Hugging Face layout).")
    p.add_argument("--data", type=Path, required=True, help="directory with train.de/.en and dev splits")
    p.add_argument("--vocab", type=Path, required=True, help="source.spm, target.spm, vocab.json")
    p.add_argument("--out", type=Path, required=True, help="the finished model; state goes to OUT.train/")
    p.add_argument("--state-dir", type=Path, default=None, help="checkpoint and log (default: OUT.train)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    p.add_argument("--encoder-layers", type=int, default=None, help="encoder layers (default: --layers)")
    p.add_argument("--decoder-layers", type=int, default=None, help="decoder layers (default: --layers)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--attention-dropout", type=float, default=0.0)
    p.add_argument("--activation-dropout", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch (longest side)")
    p.add_argument("--max-length", type=int, default=128, help="drop training pairs longer than this")
    p.add_argument("--lr", type=float, default=7e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=4000, help="steps of linear warm-up")
    p.add_argument("--schedule", choices=SCHEDULES, default="inverse-sqrt",
                   help="decay after warm-up; cosine reaches 0 at --max-steps or --max-time, whichever first")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--max-time", type=float, default=None, help="stop after this many seconds (this run)")
    p.add_argument("--eval-interval", type=int, default=1000)
    p.add_argument("--eval-size", type=int, default=500, help="pairs of each eval set decoded")
    p.add_argument("--eval-sets", default="dev-sentences,dev", help="comma-separated split names in --data")
    p.add_argument("--oversample-sentences", type=int, default=1,
                   help="times each full-sentence pair (train-sentences split) is seen per epoch")
    p.add_argument("--source-weights", default="",
                   help="times each pair of a source is seen per epoch, e.g. 'ding-sentences=4,gettext=0.5' "
                        "(sources of train.source; <source>-sentences: its full sentences; others weigh 1)")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="keep an exponential moving average of the weights, evaluated and exported (e.g. 0.999)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast (on CUDA and bf16 CPUs)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--save-dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="dtype of the exported weights (float16 halves the file)")
    p.add_argument("--keep-snapshots", type=int, default=0,
                   help="export the weights at each evaluation to STATE/snapshots, keeping the newest N "
                        "(for checkpoint averaging with python -m mtserve.training.average)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of this model directory (same architecture)")
    args = vars(p.parse_args(argv))
    args["eval_sets"] = tuple(s for s in args["eval_sets"].split(",") if s)
    args["source_weights"] = parse_weights(args["source_weights"])
    return TrainConfig(**args)


def parse_weights(text: str) -> dict[str, float]:
    """'a=1,b=0.5' → {'a': 1.0, 'b': 0.5}; ValueError naming the part that is not NAME=NUMBER."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--source-weights: {part!r} is not NAME=NUMBER") from None
    return weights


def main(argv: list[str] | None = None) -> int:
    result = train(parse_args(argv))
    print(json.dumps({"step": result.step, "resumed_from": result.resumed_from, "loss": result.loss,
                      **result.metrics, "out": str(result.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
