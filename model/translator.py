"""The offline API: load a Marian directory and translate a list of texts.

    from mtserve.model import Translator
    translator = Translator.load("path/to/opus-mt-de-en", device="auto", dtype="auto")
    translator.translate(["Guten Morgen!"], beam_size=4)[0].text

The server, the benchmarks and the parity tests all go through the same :class:`BatchDecoder`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_model
from .config import MarianConfig
from .cpu_linear import fold_logits_bias, pack_linears
from .generation import BatchDecoder
from .quantize import QUANTIZE_MODES, quantize_int8
from .search import Hypothesis, SearchOptions, asks_for_sampling
from .tokenizer import MarianTokenizer
from .transformer import MarianTransformer


@dataclass
class TranslationHypothesis:
    text: str
    token_ids: list[int]
    score: float
    max_length_reached: bool = False


@dataclass
class Translation:
    """The best hypothesis of one text, and the n-best list (best first) when more were asked for."""

    text: str
    token_ids: list[int]
    score: float
    hypotheses: list[TranslationHypothesis] = field(default_factory=list)
    input_tokens: int = 0
    #: The translation is max_length tokens long: decoding stopped at the limit (see search.Hypothesis).
    max_length_reached: bool = False


class Translator:
    """A loaded model with its tokenizer."""

    def __init__(
        self,
        model: MarianTransformer,
        tokenizer: MarianTokenizer,
        *,
        max_batch_rows: int = 256,
        load_seconds: float = 0.0,
        path: Path | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.config: MarianConfig = model.config
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.load_seconds = load_seconds
        self.path = path
        #: SearchOptions defaults from the model's generation_config.json; explicit options override them.
        self.defaults = {"max_length": self.default_max_length(), **(defaults or {})}
        self._idle_decoder: BatchDecoder | None = None
        self.quantize = "none"  # "int8" when load() quantized the linear layers
        self._decoder_lock = threading.Lock()
        #: Counted before any inference packing replaces the linear layers' parameters.
        self.num_parameters = model.num_parameters()

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        *,
        pack: bool = True,
        quantize: str = "none",
        **kwargs: Any,
    ) -> Translator:
        """Load a Marian directory. `pack`: on a float32 CPU model, pre-pack the linear layers for
        oneDNN (see cpu_linear.py; same results up to float rounding, about twice as fast).
        `quantize="int8"`: int8 linear layers instead (see quantize.py; faster still, less accurate)."""
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
        started = time.perf_counter()
        path = Path(path)
        tokenizer = MarianTokenizer.from_dir(path)
        _, model = load_model(path, device=device, dtype=dtype)
        defaults = generation_defaults(path, model.config.max_position_embeddings)
        translator = cls(model, tokenizer, path=path, defaults=defaults, **kwargs)
        if quantize == "int8":
            quantize_int8(model)
        elif pack and pack_linears(model):
            fold_logits_bias(model)
        translator.quantize = quantize
        translator.load_seconds = time.perf_counter() - started
        return translator

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def generate(self, sources: Sequence[Sequence[int]], options: SearchOptions) -> list[list[Hypothesis]]:
        """Decode token-id sources (each ending in </s>); returns each source's hypotheses, best first."""
        # Rows for what is asked, not max_batch_rows; a decoder (and its KV cache) of that size is kept for
        # the next call, since allocating a cache costs more than zeroing it (page faults on fresh memory).
        rows = max(options.rows, min(self.max_batch_rows, len(sources) * options.rows))
        decoder = self._take_decoder(rows)
        for source in sources:
            decoder.check(source, options)
        results: list[list[Hypothesis] | None] = [None] * len(sources)
        # Admitted longest first, so texts that decode together have similar lengths: less padding in the
        # encoder pass and in cross-attention, which reads up to the longest source in the batch. (The
        # server admits in arrival order instead: fairness comes first there.) pop() takes from the end.
        waiting = sorted(range(len(sources)), key=lambda i: (len(sources[i]), -i))
        while waiting or decoder.has_work():
            while waiting and decoder.free_rows >= options.rows:
                index = waiting.pop()
                decoder.add(index, sources[index], options)
            for event in decoder.step():
                if event.hypotheses is not None:
                    results[event.group_id] = event.hypotheses  # type: ignore[index]
        self._idle_decoder = decoder  # only a decoder that ran to the end is reused (no rows left in it)
        return [r or [] for r in results]

    def _take_decoder(self, rows: int) -> BatchDecoder:
        """The kept decoder if it has `rows` rows, else a new one. Taken, not shared: concurrent calls
        (threads) each decode with their own."""
        with self._decoder_lock:
            decoder, self._idle_decoder = self._idle_decoder, None
        if decoder is None or decoder.num_rows != rows:
            decoder = BatchDecoder(self.model, rows)
        return decoder

    def translate(self, texts: Sequence[str], **options: Any) -> list[Translation]:
        """Translate each text. Options are those of :class:`SearchOptions`; the n-best list is
        filled when num_hypotheses > 1. An empty or whitespace-only text gives an empty translation
        without running the model."""
        search = SearchOptions(**merge_defaults(self.defaults, options))
        indices = [i for i, text in enumerate(texts) if text.strip()]
        sources = [self.tokenizer.encode(texts[i]) for i in indices]
        outputs = self.generate(sources, search)
        results = [Translation("", [], 0.0) for _ in texts]
        for index, source, hypotheses in zip(indices, sources, outputs, strict=True):
            nbest = [
                TranslationHypothesis(self.tokenizer.decode(h.token_ids), h.token_ids, h.score, h.max_length_reached)
                for h in hypotheses[: search.num_hypotheses]
            ]
            best = nbest[0]
            results[index] = Translation(
                best.text, best.token_ids, best.score, nbest if search.num_hypotheses > 1 else [], len(source),
                best.max_length_reached,
            )
        return results

    def default_max_length(self) -> int:
        """Marian's own generation default is 512; cap it at what the position table allows."""
        return min(512, self.config.max_position_embeddings)


def merge_defaults(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """SearchOptions fields: `defaults` overridden by `options`; a default yields where it conflicts with
    them (sampling asked without a beam size gets one beam; a default min_length stays below max_length)."""
    values = {**defaults, **options}
    if asks_for_sampling(options) and "beam_size" not in options:
        values["beam_size"] = 1
    if "min_length" not in options and "min_length" in values:
        values["min_length"] = min(values["min_length"], values["max_length"] - 1)
    return values


def generation_defaults(path: Path, max_positions: int) -> dict[str, Any]:
    """SearchOptions defaults from generation_config.json (OPUS-MT ships num_beams, max_length there).

    Transformers counts the decoder start token in max_length/min_length; SearchOptions does not.
    """
    try:
        values = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    defaults: dict[str, Any] = {}
    if isinstance(values.get("num_beams"), int) and values["num_beams"] >= 1:
        defaults["beam_size"] = values["num_beams"]
    if isinstance(values.get("max_length"), int) and values["max_length"] > 1:
        defaults["max_length"] = min(values["max_length"] - 1, max_positions)
    if isinstance(values.get("min_length"), int) and values["min_length"] > 1:
        defaults["min_length"] = values["min_length"] - 1
    if values.get("early_stopping") is True:  # Transformers also allows "never", which is our False
        defaults["early_stopping"] = True
    if isinstance(values.get("length_penalty"), int | float):
        defaults["length_penalty"] = float(values["length_penalty"])
    return defaults
