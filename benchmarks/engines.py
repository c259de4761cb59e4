"""The three engines behind one interface: load a model directory, decode token-id sources.

Every engine gets the same source ids (mtserve's tokenizer, ending in ``</s>``) and, for a multilingual model,
each source's target prefix (its target-language token: mtserve forces it, Transformers too, with
``forced_bos_token_id`` on batches of one language, CTranslate2 takes it as ``target_prefix``), and returns,
per source, the best hypothesis's target ids without the start token and without ``</s>`` (the prefix
included). Lengths follow mtserve's convention (``max_length`` counts generated tokens, ``</s>`` included, and
the last one is a forced ``</s>``): Transformers gets ``max_length + 1`` (it counts the start token),
CTranslate2 ``max_decoding_length = max_length - 1`` (it counts tokens other than ``</s>`` and forces none),
so that a text that never ends has the same ``max_length - 1`` tokens in all three. ``min_length`` counts
tokens before ``</s>`` (Transformers: + 1 again).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

Ids = list[int]


class Engine(Protocol):
    name: str

    def generate(
        self, sources: Sequence[Ids], beam_size: int, max_length: int, min_length: int, batch_size: int,
        early_stopping: bool = False, prefixes: Sequence[Ids] | None = None,
    ) -> list[Ids]:
        """The best hypothesis of every source, in input order."""
        ...


def _batches(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


class MtserveEngine:
    """mtserve's offline Translator: continuous batching over ``batch_size * beam`` KV-cache rows."""

    name = "mtserve"

    def __init__(self, model_dir: Path, device: str, quantize: str = "none", compile: str = "off") -> None:
        from mtserve.engine import Translator

        dtype = "float16" if device == "cuda" else "float32"
        self.translator = Translator.load(model_dir, device=device, dtype=dtype, quantize=quantize, compile=compile)
        self.name = "mtserve" if quantize == "none" else f"mtserve-{quantize}"
        self.name += "-compiled" if compile == "on" else ""
        self._compiled_for: set[tuple[int, int]] = set()
        self.model_dir = model_dir

    def generate(
        self, sources: Sequence[Ids], beam_size: int, max_length: int, min_length: int, batch_size: int,
        early_stopping: bool = False, prefixes: Sequence[Ids] | None = None,
    ) -> list[Ids]:
        from mtserve.model.options import SearchOptions

        options = SearchOptions(
            beam_size=beam_size, max_length=max_length, min_length=min_length, length_penalty=1.0,
            early_stopping=early_stopping,
        )
        self.translator.max_batch_rows = batch_size * beam_size  # 32 texts in flight, as the others
        rows = self.translator.max_batch_rows
        if (rows, beam_size) not in self._compiled_for:  # every graph of these runs, before the first (untimed)
            self._compiled_for.add((rows, beam_size))
            self.translator.compile_for(rows, [beam_size])
        results = self.translator.generate(sources, options, [tuple(p) for p in prefixes] if prefixes else None)
        return [hypotheses[0].token_ids if hypotheses else [] for hypotheses in results]


class TransformersEngine:
    """``generate`` of the model's class (MarianMTModel, M2M100ForConditionalGeneration) on batches of
    ``batch_size`` sources, sorted by length (as a careful user would, to save padding), with Transformers'
    own defaults otherwise."""

    name = "transformers"

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM

        dtype = torch.float16 if device == "cuda" else torch.float32
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = device
        config = self.model.config
        self.pad, self.eos = config.pad_token_id, config.eos_token_id
        # Marian's generation config bans <pad> (its start token); the fairseq families ban nothing.
        self.bad_words = [[self.pad]] if config.model_type == "marian" else None

    def generate(
        self, sources: Sequence[Ids], beam_size: int, max_length: int, min_length: int, batch_size: int,
        early_stopping: bool = False, prefixes: Sequence[Ids] | None = None,
    ) -> list[Ids]:
        import torch

        # A multilingual model's texts go in groups of one target language, each forced as Transformers'
        # users force it (forced_bos_token_id): a prefix in decoder_input_ids would score beams differently.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in range(len(sources)):
            groups.setdefault(tuple(prefixes[i]) if prefixes else (), []).append(i)
        results: list[Ids] = [[] for _ in sources]
        for prefix, members in groups.items():
            if len(prefix) > 1:
                raise ValueError("Transformers forces one first token; prefixes of several are not supported here")
            forced = {"forced_bos_token_id": prefix[0]} if prefix else {}
            order = sorted(members, key=lambda i: len(sources[i]))
            for batch in _batches(order, batch_size):
                longest = max(len(sources[i]) for i in batch)
                ids = torch.full((len(batch), longest), self.pad, dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(sources[i])] = torch.tensor(sources[i])
                ids = ids.to(self.device)
                with torch.inference_mode():
                    out = self.model.generate(
                        input_ids=ids, attention_mask=ids != self.pad, num_beams=beam_size, do_sample=False,
                        max_length=max_length + 1, min_length=min_length + 1, length_penalty=1.0,
                        early_stopping=early_stopping, bad_words_ids=self.bad_words, num_return_sequences=1,
                        **forced,
                    )
                for row, i in zip(range(len(batch)), batch, strict=True):
                    results[i] = self._strip(out[row, 1:].tolist())
        return results

    def _strip(self, ids: Ids) -> Ids:
        """Up to the first ``</s>`` (or pad: the padding of shorter outputs in the batch)."""
        for k, token in enumerate(ids):
            if token in (self.eos, self.pad):
                return ids[:k]
        return ids


class CTranslate2Engine:
    """``ctranslate2.Translator.translate_batch`` over all sources with ``max_batch_size`` (CTranslate2
    sorts them by length itself); float32 on CPU, float16 on CUDA; ``intra_threads`` = the torch threads."""

    name = "ctranslate2"

    def __init__(self, ct2_dir: Path, device: str, threads: int, compute_type: str | None = None) -> None:
        import ctranslate2

        compute_type = compute_type or ("float16" if device == "cuda" else "float32")
        self.translator = ctranslate2.Translator(
            str(ct2_dir), device=device, compute_type=compute_type, intra_threads=threads, inter_threads=1,
        )
        self.name = "ctranslate2" if compute_type in ("float32", "float16") else f"ctranslate2-{compute_type}"
        self.source_tokens = _ct2_vocabulary(ct2_dir, "source")
        self.target_tokens = _ct2_vocabulary(ct2_dir, "target")
        self.target_ids = {token: i for i, token in enumerate(self.target_tokens)}

    def generate(
        self, sources: Sequence[Ids], beam_size: int, max_length: int, min_length: int, batch_size: int,
        early_stopping: bool = False, prefixes: Sequence[Ids] | None = None,
    ) -> list[Ids]:
        tokens = [[self.source_tokens[i] for i in source] for source in sources]
        target_prefix = [[self.target_tokens[i] for i in prefix] for prefix in prefixes] if prefixes else None
        results = self.translator.translate_batch(
            tokens, beam_size=beam_size, max_decoding_length=max_length - 1, min_decoding_length=min_length,
            max_batch_size=batch_size, target_prefix=target_prefix,
            batch_type="examples", length_penalty=1.0, num_hypotheses=1,
        )
        return [[self.target_ids[t] for t in result.hypotheses[0]] for result in results]


def _ct2_vocabulary(ct2_dir: Path, side: str) -> list[str]:
    """The token of each id on one side: the converter keeps vocab.json's order (and drops ``<pad>``)."""
    for name in ("shared_vocabulary", f"{side}_vocabulary"):
        if (ct2_dir / f"{name}.json").is_file():
            return json.loads((ct2_dir / f"{name}.json").read_text(encoding="utf-8"))
        if (ct2_dir / f"{name}.txt").is_file():
            return (ct2_dir / f"{name}.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")
    raise FileNotFoundError(f"{ct2_dir}: no CTranslate2 vocabulary file")


ENGINES = ("mtserve", "transformers", "ctranslate2", "mtserve-int8", "ctranslate2-int8", "ctranslate2-int8_float32",
           "mtserve-compiled")
DEFAULT_ENGINES = ENGINES[:3]  # int8 is opt-in: it trades accuracy for speed, the others do not


def load_engine(name: str, model_dir: Path, ct2_dir: Path | None, device: str, threads: int) -> Engine:
    if name == "mtserve":
        return MtserveEngine(model_dir, device)
    if name == "mtserve-int8":
        return MtserveEngine(model_dir, device, quantize="int8")
    if name == "mtserve-compiled":
        return MtserveEngine(model_dir, device, compile="on")
    if name == "transformers":
        return TransformersEngine(model_dir, device)
    if name.startswith("ctranslate2"):
        if ct2_dir is None:
            raise ValueError("ctranslate2 needs the converted model")
        return CTranslate2Engine(ct2_dir, device, threads, name.partition("-")[2] or None)
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
