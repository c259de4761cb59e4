"""The benchmark models: a random transformer-base Marian model built here, the bundled default model,
and their CTranslate2 conversions. Everything built is cached under benchmarks/.cache.

A random model decodes either to max_length (nothing makes ``</s>`` likely) or stops at once, which
would make throughput numbers meaningless. So the random model (see :class:`Shape` for its weights)
gets a ``final_logits_bias`` on ``</s>`` calibrated so that its greedy outputs are, on average, as
long as the sources: greedy decoding with
``</s>`` forbidden records, per step, how far ``</s>`` is below the best token; with a bias ``b`` the
text would have stopped at the first step where that margin is at most ``b`` (the bias changes no other
choice), so the bias for a wanted mean length is found exactly, from one decoding run.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import CACHE, DEFAULT_MODEL, REPO

log = logging.getLogger(__name__)

VOCAB_FILES = ("vocab.json", "source.spm", "target.spm")
RECIPE = 2  # bump when the way the random model is built changes, so that cached ones are rebuilt


@dataclass(frozen=True)
class Shape:
    """The random model's size (transformer-base by default)."""

    d_model: int = 512
    layers: int = 6
    heads: int = 8
    ffn: int = 2048
    # Transformers' initialisation (weights ~ N(0, 0.02)), with three changes that make a random model
    # decode like a trained one, as far as lengths and clear-cut choices go (see random_model):
    init_std: float = 0.02
    # Untied output projection: tied, the previous token's embedding dominates the next logits, so
    # every text repeats its first token and, past step 0, </s> can never win.
    tie_embeddings: bool = False
    # The last decoder LayerNorm's gain, which scales the logits alone (post-norm: it feeds only the
    # output projection): Transformers' flat logits would leave near-ties to each engine's rounding.
    logit_scale: float = 10.0
    # The cross-attention output projections': so that the source steers the decoder (and so each
    # text's length), without drowning the step-to-step changes.
    cross_attention_scale: float = 3.5


SHAPES = {"base": Shape(), "tiny": Shape(d_model=64, layers=2, heads=4, ffn=128)}


@dataclass
class ModelSpec:
    """A model to benchmark: its directory, how it came about, and (multilingual models) its languages."""

    name: str
    path: Path
    note: str
    source_language: str | None = None
    target_languages: tuple[str, ...] = ()

    def sources_and_prefixes(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        """The texts' source ids with mtserve's tokenizer, and each one's forced target prefix (the target
        languages cycled over the texts), None for a single-pair model."""
        from mtserve.model.config import ModelConfig
        from mtserve.model.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(self.path, ModelConfig.from_dir(self.path))
        if not self.target_languages:
            return [tokenizer.encode(t) for t in texts], None
        targets = [self.target_languages[i % len(self.target_languages)] for i in range(len(texts))]
        sources = [tokenizer.encode(t, self.source_language) for t in texts]
        return sources, [list(tokenizer.target_prefix(t)) for t in targets]


def resolve_vocab() -> tuple[Path, str]:
    """The default model's vocabulary: data/vocab, else model/default, else a new 8k SentencePiece."""
    for candidate in (REPO / "data" / "vocab", DEFAULT_MODEL):
        if all((candidate / f).is_file() for f in VOCAB_FILES):
            return candidate, str(candidate.relative_to(REPO))
    out = CACHE / "vocab"
    if all((out / f).is_file() for f in VOCAB_FILES):
        return out, "a SentencePiece vocabulary built by the harness (cached)"
    return _train_vocab(out), "a SentencePiece vocabulary built by the harness"


def _train_vocab(out: Path) -> Path:
    """8k joint SentencePiece on data/de-en's training text, or on the built-in sample (smaller then)."""
    from mtserve.training.vocab import train_vocab

    from .common import BUILTIN_GERMAN, DATA

    inputs = [p for p in (DATA / "train.de", DATA / "train.en") if p.is_file()]
    if not inputs:
        sample = CACHE / "builtin-sample.txt"
        sample.parent.mkdir(parents=True, exist_ok=True)
        sample.write_text("\n".join(BUILTIN_GERMAN) + "\n", encoding="utf-8")
        inputs = [sample]
    size = 8000
    while True:
        try:
            return train_vocab(inputs, out, size)
        except RuntimeError as exc:  # "Vocabulary size too high" on little text
            if size <= 64:
                raise
            log.warning("vocabulary of %d failed (%s); trying %d", size, exc, size // 2)
            size //= 2


def default_model() -> ModelSpec | None:
    """The bundled model at model/default, when it has been trained and exported."""
    if (DEFAULT_MODEL / "config.json").is_file():
        return ModelSpec("default", DEFAULT_MODEL, "model/default (the bundled model)")
    return None


def random_model(sources: Sequence[Sequence[int]], shape_name: str = "base", seed: int = 0) -> ModelSpec:
    """The random Marian model of ``shape_name`` over the default vocabulary; built once, then cached.

    ``sources`` (token ids ending in ``</s>``) calibrate the ``</s>`` bias.
    """
    shape = SHAPES[shape_name]
    vocab_dir, vocab_origin = resolve_vocab()
    out = CACHE / f"random-{shape_name}"
    stamp = {"recipe": RECIPE, "shape": asdict(shape), "seed": seed, "vocab": str(vocab_dir),
             "vocab_size": (vocab_dir / "vocab.json").stat().st_size}
    stamp_file = out / "benchmark-stamp.json"
    note = (f"random {shape_name} (d_model {shape.d_model}, {shape.layers}+{shape.layers} layers, "
            f"{shape.heads} heads, ffn {shape.ffn}), vocabulary of {vocab_origin}")
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return ModelSpec(f"random-{shape_name}", out, note)
    _build_random(out, vocab_dir, shape, sources, seed)
    stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    return ModelSpec(f"random-{shape_name}", out, note)


def _build_random(out: Path, vocab_dir: Path, shape: Shape, sources: Sequence[Sequence[int]], seed: int) -> None:
    import torch
    from transformers import MarianConfig, MarianMTModel

    from mtserve.training.vocab import copy_vocab

    if out.exists():
        shutil.rmtree(out)
    copy_vocab(vocab_dir, out)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    eos, pad = vocab["</s>"], vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab), d_model=shape.d_model,
        encoder_layers=shape.layers, decoder_layers=shape.layers,
        encoder_attention_heads=shape.heads, decoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn, decoder_ffn_dim=shape.ffn,
        activation_function="swish", max_position_embeddings=512, scale_embedding=True,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=shape.tie_embeddings,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, forced_eos_token_id=eos,
        init_std=shape.init_std, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.model.decoder.layers[-1].final_layer_norm.weight.mul_(shape.logit_scale)
        for layer in model.model.decoder.layers:
            layer.encoder_attn.out_proj.weight.mul_(shape.cross_attention_scale)
    target = sum(len(s) - 1 for s in sources) / max(1, len(sources))
    bias = _calibrate_eos_bias(model, sources, eos, pad, mean_length=max(2.0, target))
    with torch.no_grad():
        model.final_logits_bias[0, eos] += bias
    model.save_pretrained(out)
    generation = {
        "bad_words_ids": [[pad]], "decoder_start_token_id": pad, "eos_token_id": eos,
        "forced_eos_token_id": eos, "pad_token_id": pad, "max_length": 512, "num_beams": 4,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    log.info("built %s: </s> bias %.3f for a mean greedy length of %.1f tokens", out, bias, target)


def _calibrate_eos_bias(
    model: object, sources: Sequence[Sequence[int]], eos: int, pad: int, mean_length: float, steps: int = 96,
    first_steps: int = 1, ban_pad: bool = True, **generate_kwargs: object,
) -> float:
    """The ``</s>`` logit bias that makes greedy outputs ``mean_length`` tokens long on average.
    ``first_steps``: steps that never stop (the first token, and a forced language token before it)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    margins: list[torch.Tensor] = []

    class Record(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if ban_pad:
                scores[:, pad] = -float("inf")
            others = scores.clone()
            others[:, eos] = -float("inf")
            margins.append(others.max(dim=-1).values - scores[:, eos])  # (B,)
            scores[:, eos] = -float("inf")
            return scores

    batch = list(sources[:32])
    longest = max(len(s) for s in batch)
    ids = torch.full((len(batch), longest), pad)
    for i, s in enumerate(batch):
        ids[i, : len(s)] = torch.tensor(s)
    with torch.inference_mode():
        model.generate(  # type: ignore[attr-defined]
            input_ids=ids, attention_mask=ids != pad, num_beams=1, do_sample=False,
            max_length=steps + 1, min_length=0, forced_eos_token_id=None,
            logits_processor=LogitsProcessorList([Record()]), **generate_kwargs,
        )
    table = torch.stack(margins, dim=1)  # (B, steps)
    # The last step's forced </s> (forced_eos_token_id) gives -inf: no information, never a stop.
    table = torch.where(torch.isfinite(table), table, torch.tensor(float("inf")))

    def mean_stop(bias: float) -> float:
        stops = table <= bias  # (B, steps): where </s> would win
        stops[:, :first_steps] = False  # the benchmarks' min_length: empty outputs are not translations
        first = torch.where(stops.any(dim=1), stops.float().argmax(dim=1), torch.tensor(steps))
        return float(first.float().mean())

    finite = table[torch.isfinite(table)]
    low, high = float(finite.min()) - 1, float(finite.max()) + 1  # mean_stop(low) = steps, (high) ≈ 0
    for _ in range(50):
        middle = (low + high) / 2
        if mean_stop(middle) > mean_length:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def ct2_model(spec: ModelSpec) -> Path:
    """The CTranslate2 conversion of ``spec`` (float32 weights; computed in float16 on CUDA), cached."""
    weights = next(p for p in (spec.path / "model.safetensors", spec.path / "pytorch_model.bin") if p.is_file())
    out = CACHE / f"ct2-{spec.name}"
    stamp = {"source": str(weights), "mtime": weights.stat().st_mtime_ns, "size": weights.stat().st_size}
    stamp_file = CACHE / f"ct2-{spec.name}.stamp.json"
    if (out / "model.bin").is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return out
    converter = Path(sys.executable).with_name("ct2-transformers-converter")
    command = [str(converter) if converter.is_file() else "ct2-transformers-converter",
               "--model", str(spec.path), "--output_dir", str(out), "--force"]
    log.info("converting %s for CTranslate2", spec.path)
    subprocess.run(command, check=True, capture_output=True, text=True)
    stamp_file.write_text(json.dumps(stamp) + "\n")
    return out
