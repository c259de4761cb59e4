"""The offline API: load a model directory and translate a list of texts.

    from mtserve.engine import Translator
    translator = Translator.load("path/to/opus-mt-de-en", device="auto", dtype="auto")
    translator.translate(["Guten Morgen!"], beam_size=4)[0].text

    nllb = Translator.load("path/to/nllb-200-distilled-600M")
    nllb.translate(["Good morning!", "Thank you."], source_language="en", target_language=["de", "fr"])

It drives the same :class:`EngineCore` step as the server's engine thread (the scheduler's
``longest_first`` order is its only difference), so a text translates the same offline and served.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtserve.model import bundled_model_dir
from mtserve.model.checkpoint import check_model_dir, cpu_has_fast_float16, load_model, model_languages
from mtserve.model.compiled_step import COMPILE_MODES, CompiledStep
from mtserve.model.config import ModelConfig
from mtserve.model.cpu_linear import fold_logits_bias, pack_linears
from mtserve.model.options import SearchOptions, generation_defaults, merge_defaults
from mtserve.model.quantize import QUANTIZE_MODES, quantize_int8
from mtserve.model.search import Hypothesis
from mtserve.model.shortlist import VMAP_FILE, load_shortlist
from mtserve.model.tokenizers import Tokenizer, choose_languages, load_tokenizer
from mtserve.model.transformer import Transformer

from .batch import NewText
from .core import EngineCore
from .memory import release_free_memory
from .scheduler import Request, Scheduler, Text
from .segment import hypothesis_text, join_hypotheses, segment
from .terminology import constraints_for

log = logging.getLogger(__name__)

# Offline, every text of a call is queued at once and newcomers are encoded together, as many as fit.
_UNBOUNDED = 2**62
_request_ids = itertools.count()


@dataclass
class TranslationHypothesis:
    text: str
    token_ids: list[int]
    score: float
    max_length_reached: bool = False
    #: With return_alignments: per token, the index of its aligned source token (see source_tokens).
    alignment: list[int] | None = None


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
    #: The model's codes of the languages used ('' where the model needs none and none was given).
    source_language: str = ""
    target_language: str = ""
    #: Tokens the decoder generated for the best hypothesis, each sentence's </s> included unless the length
    #: limit ended it (what the server reports as output_tokens).
    output_tokens: int = 0
    #: With return_alignments: the best hypothesis's alignment, and the source pieces it points into.
    alignment: list[int] | None = None
    source_tokens: list[str] = field(default_factory=list)


class Translator:
    """A loaded model with its tokenizer."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        *,
        max_batch_rows: int = 256,
        load_seconds: float = 0.0,
        path: Path | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.load_seconds = load_seconds
        self.path = path
        # A single-pair model's source language (OPUS-MT's tokenizer_config.json): the sentence splitter's rules.
        self.source_language = model_languages(path)[0] if path is not None else ""
        #: SearchOptions defaults from the model's generation_config.json; explicit options override them.
        self.defaults = {"max_length": self.default_max_length(), **(defaults or {})}
        self._idle_core: EngineCore | None = None
        self.quantize = "none"  # "int8" when load() quantized the linear layers
        self._core_lock = threading.Lock()
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
        compile: str = "off",
        shortlist: bool = False,
        **kwargs: Any,
    ) -> Translator:
        """Load a model directory (Marian, M2M100/NLLB or MBart). `pack`: on a float32 CPU model, pre-pack
        the linear layers (see cpu_linear.py; same results up to float rounding, about twice as fast).
        `quantize="int8"`: int8 linear layers instead (see quantize.py; faster still, less accurate).
        `compile="on"`: the decoder step compiled with torch.compile (model/compiled_step.py); the linear
        layers then stay torch's, for the compiler to pack. `shortlist`: the output layer is computed for
        the target pieces the model's vmap.txt allows each text (model/shortlist.py); a model without one
        decodes the whole vocabulary (and a warning says so)."""
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        if compile == "on" and quantize != "none":
            raise ValueError("compile and quantize cannot be combined: the compiled step runs float weights")
        started = time.perf_counter()
        path = Path(path)
        config = check_model_dir(path)  # the directory and its config.json first: errors name the directory
        tokenizer = load_tokenizer(path, config)
        _, model = load_model(path, device=device, dtype=dtype)
        if model.device.type == "cpu" and model.dtype == torch.float16 and not cpu_has_fast_float16():
            log.warning("dtype float16 on this CPU (no AVX512-FP16 or AMX): slower than float32 (1.85x measured "
                        "on an AMD EPYC) and its results differ; use --dtype float32, or bfloat16")
        defaults = generation_defaults(path, model.config.max_position_embeddings)
        translator = cls(model, tokenizer, path=path, defaults=defaults, **kwargs)
        model.fuse_projections()
        if shortlist:
            model.shortlist = load_shortlist(path, tokenizer)
            if model.shortlist is None:
                log.warning("%s has no %s: decoding over the whole vocabulary", path, VMAP_FILE)
            else:
                model.keep_output_weight()  # its rows are read for each shortlist; packing drops lm_head's
        if quantize == "int8":
            quantize_int8(model)
        elif compile == "on":
            model.compiled_step = CompiledStep(model)
        elif pack and pack_linears(model):
            fold_logits_bias(model)
        translator.quantize = quantize
        # Loading converts and packs every weight; what the originals held is free but still resident.
        release_free_memory()
        translator.load_seconds = time.perf_counter() - started
        return translator

    @classmethod
    def load_default(cls, device: str | torch.device = "auto", **kwargs: Any) -> Translator:
        """The bundled German→English demo model (``mtserve.model.bundled_model_dir()``)."""
        return cls.load(bundled_model_dir(), device=device, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def generate(
        self,
        sources: Sequence[Sequence[int]],
        options: SearchOptions,
        prefixes: Sequence[tuple[int, ...]] | None = None,
        target_prefixes: Sequence[Sequence[int]] | None = None,
        align: bool = False,
        constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[list[Hypothesis]]:
        """Decode token-id sources (each ending in </s>); returns each source's hypotheses, best first.
        `prefixes`: per source, the tokens its output is forced to start with (a target-language token);
        `target_prefixes`: per source, target ids its output continues from (after `prefixes`), fed in one
        prefill pass; they are part of the hypotheses' tokens and count toward max_length, and the scores
        cover what follows them. `align`: each hypothesis gets its source alignment (model/alignment.py).
        `constraints`: per source, target token sequences its output must contain (model/constrained.py)."""
        # Rows for what is asked, not max_batch_rows; a core (and its KV cache) of that size is kept for
        # the next call, since allocating a cache costs more than zeroing it (page faults on fresh memory).
        rows = max(options.rows, min(self.max_batch_rows, len(sources) * options.rows))
        core = self._take_core(rows)
        works = [NewText(list(source), options, tuple(prefixes[index]) if prefixes else (),
                         target_prefix=tuple(target_prefixes[index]) if target_prefixes else (), align=align,
                         constraints=tuple(tuple(c) for c in constraints[index]) if constraints else ())
                 for index, source in enumerate(sources)]
        for work in works:
            core.check(work.source_ids, options, work.prompt, work.constraints)
        texts = [Text(index, options.rows, len(work.source_ids), options.max_length, work=work)
                 for index, work in enumerate(works)]
        events = core.run_to_end(Request(next(_request_ids), texts, arrival_time=core.clock()))
        self._idle_core = core  # only a core that ran to the end is reused (no rows left in it)
        return [event.hypotheses or [] for event in events]

    def compile_for(self, rows: int, beam_sizes: Sequence[int] = (1,)) -> float:
        """With ``compile="on"``: compile now every decoder-step graph that calls of `rows` KV-cache rows at
        these beam sizes will meet (what the server does before SERVING), so that no call waits for a
        compile; returns the seconds it took (0 without a compiled step)."""
        compiled = getattr(self.model, "compiled_step", None)
        if compiled is None:
            return 0.0
        core = self._take_core(rows)
        try:
            return compiled.warm_up(core.batch.cache, sorted({1, *beam_sizes}), pad_token=self.config.pad_token_id)
        finally:
            self._idle_core = core

    def _take_core(self, rows: int) -> EngineCore:
        """The kept core if it has `rows` rows, else a new one. Taken, not shared: concurrent calls
        (threads) each decode with their own."""
        with self._core_lock:
            core, self._idle_core = self._idle_core, None
        if core is None or core.batch.num_rows != rows:
            scheduler = Scheduler(rows, _UNBOUNDED, _UNBOUNDED, order="longest_first")
            core = EngineCore(self.model, scheduler, name=str(self.path or "offline"))
        return core

    def translate(
        self,
        texts: Sequence[str],
        *,
        source_language: str | Sequence[str] | None = None,
        target_language: str | Sequence[str] | None = None,
        split_sentences: bool = True,
        target_prefix: str | Sequence[str] | None = None,
        return_alignments: bool = False,
        replace_unknowns: bool = False,
        terminology: Mapping[str, str] | None = None,
        **options: Any,
    ) -> list[Translation]:
        """Translate each text. Options are those of :class:`SearchOptions`; the n-best list is
        filled when num_hypotheses > 1. An empty or whitespace-only text gives an empty translation
        without running the model.

        A text of several sentences is split into them (segment.py), each decoded on its own in the same
        batch and joined back, as the server does; ``split_sentences=False`` decodes each text whole.

        ``target_prefix`` (one for all texts or one per text; '' for none): the translation starts with it
        and goes on from there (interactive or post-editing translation). A text with one is not split.
        ``return_alignments``: each hypothesis's source alignment (model/alignment.py) and the source
        pieces it points into; ``replace_unknowns``: each ``<unk>`` in a translation becomes the source
        piece it is aligned to. ``terminology`` (source term → target term): where a source term occurs
        in a text (a sentence, when split), the translation contains its target term (beam search).

        Languages, as the model's own codes or BCP-47 tags, one for all texts or one per text: needed by
        multilingual models (NLLB, M2M100, MBart-50), checked against a single-pair model's own; a
        language the model does not know raises languages.LanguageError (a ValueError).
        """
        search = SearchOptions(**merge_defaults(self.defaults, options))
        sources_asked = _per_text("source_language", source_language, len(texts))
        targets_asked = _per_text("target_language", target_language, len(texts))
        tokenizer = self.tokenizer
        pairs = [choose_languages(tokenizer, s, t) for s, t in zip(sources_asked, targets_asked, strict=True)]
        asked_prefixes = _per_text("target_prefix", target_prefix, len(texts))
        indices = [i for i, text in enumerate(texts) if text.strip()]
        # Every text of several sentences is split, as the server splits it (segment.py), and each sentence
        # decodes as its own group of rows in one batch.
        segments = {
            i: segment(texts[i], functools.partial(tokenizer.encode, source_language=pairs[i][0],
                                                   target_language=pairs[i][1]),
                       self.config.max_position_embeddings, pairs[i][0] or self.source_language,
                       split_sentences and not asked_prefixes[i])
            for i in indices
        }
        owners = [(i, j) for i in indices for j in range(len(segments[i]))]
        sources = [segments[i][j].source_ids for i, j in owners]
        prefixes = [tokenizer.target_prefix(pairs[i][1]) for i, _ in owners]
        target_prefixes = [tokenizer.encode_prefix(asked_prefixes[i]) if asked_prefixes[i] and j == 0 else []
                           for i, j in owners]
        align = return_alignments or replace_unknowns
        constraints = ([constraints_for(segments[i][j].text, terminology, tokenizer.encode_prefix) for i, j in owners]
                       if terminology else None)
        outputs = self.generate(sources, search, prefixes, target_prefixes, align=align, constraints=constraints)
        per_text: dict[int, list[list[Hypothesis]]] = {i: [] for i in indices}
        for (owner, _), hypotheses in zip(owners, outputs, strict=True):
            per_text[owner].append(hypotheses)
        results = [Translation("", [], 0.0, source_language=s or "", target_language=t or "") for s, t in pairs]
        for index in indices:
            pieces = ([tokenizer.source_pieces(s.text, *pairs[index]) for s in segments[index]] if align else [])

            def decode(j: int, hypothesis: Hypothesis, pieces: list[list[str]] = pieces) -> str:
                return hypothesis_text(tokenizer, hypothesis, pieces[j] if replace_unknowns else None)

            joined = join_hypotheses(per_text[index], segments[index], decode, search.num_hypotheses)
            nbest = [TranslationHypothesis(j.text, j.token_ids, j.score, j.max_length_reached,
                                           j.alignment if return_alignments else None) for j in joined]
            best = nbest[0]
            results[index] = Translation(
                best.text, best.token_ids, best.score, nbest if search.num_hypotheses > 1 else [],
                sum(len(piece.source_ids) for piece in segments[index]), best.max_length_reached,
                *(code or "" for code in pairs[index]), joined[0].output_tokens,
                best.alignment, [piece for p in pieces for piece in p] if return_alignments else [],
            )
        return results

    def default_max_length(self) -> int:
        """Marian's own generation default is 512; cap it at what the position table allows."""
        return min(512, self.config.max_position_embeddings)


def _per_text(name: str, value: str | Sequence[str] | None, count: int) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{name}: {len(value)} languages for {count} texts (give one, or one per text)")
    return list(value)
