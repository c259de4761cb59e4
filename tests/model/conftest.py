"""Fixtures for the model tests: tiny random Transformers Marian models saved in the Marian layout.

Everything is built here on CPU from fixed seeds; nothing is downloaded. Transformers is a test-only
dependency, so its import is deferred to the fixtures that need it.

Random tiny decoders tend to lock onto one repeated token and run to max_length. A ``final_logits_bias``
whose ``</s>`` entry sits `eos_boost` above the largest bias makes some texts end, and the per-model seeds,
``init_std`` and boosts in the test modules are picked so that texts end at varied lengths and no beam
decision is a near-tie.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from _engine_helpers import decode_all, engine_core, run_jobs, submit_text

from mtserve.model.options import SearchOptions

if TYPE_CHECKING:
    from transformers import MarianMTModel

# A model small enough to decode 20+ texts in well under a second, wide enough not to be degenerate.
TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 120,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "activation_function": "swish",
    "max_position_embeddings": 256,
    "scale_embedding": True,  # as in OPUS-MT models (Transformers defaults to False)
    "eos_token_id": 0,
    "forced_eos_token_id": 0,
    "init_std": 0.5,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
}


def _tokenizer_helper() -> Callable[..., Path] | None:
    """tests/model/_tokenizer_fixtures.build_tokenizer_dir, when that helper exists."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from _tokenizer_fixtures import build_tokenizer_dir
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    return build_tokenizer_dir


def build_marian(
    path: Path,
    *,
    seed: int = 0,
    eos_boost: float | None = 0.5,
    tokenizer: bool = False,
    separate_vocabs: bool = False,
    spm_vocab_size: int = 150,
    **config_overrides: Any,
) -> tuple[Path, MarianMTModel]:
    """Save a random ``MarianMTModel`` (model.safetensors + config.json) in `path`; return (path, model in eval mode).

    `config_overrides` are Transformers ``MarianConfig`` fields over :data:`TINY_CONFIG`. ``pad_token_id`` and
    ``decoder_start_token_id`` default to the last id of the smaller vocabulary. ``final_logits_bias`` is
    random normal; with `eos_boost` the ``</s>`` entry is set to the largest bias plus `eos_boost`.
    With `tokenizer`, real tokenizer files are written first and the vocabulary sizes and pad id are taken
    from them (`separate_vocabs` gives a target_vocab.json and unshared embeddings).
    """
    from transformers import MarianConfig as HFMarianConfig
    from transformers import MarianMTModel

    path = Path(path)
    values = {**TINY_CONFIG}
    if tokenizer:
        build_tokenizer_dir = _tokenizer_helper()
        if build_tokenizer_dir is None:
            pytest.skip("tests/model/_tokenizer_fixtures.py (build_tokenizer_dir) is not there yet")
        from mtserve.model.tokenizers import MarianTokenizer

        build_tokenizer_dir(path, separate_vocabs=separate_vocabs, vocab_size=spm_vocab_size)
        tok = MarianTokenizer.from_dir(path)
        values.update(
            vocab_size=tok.source_vocab_size,
            decoder_vocab_size=tok.target_vocab_size,
            share_encoder_decoder_embeddings=not separate_vocabs,
            pad_token_id=tok.pad_id,
            eos_token_id=tok.eos_id,
            forced_eos_token_id=tok.eos_id,
        )
    values.update(config_overrides)
    smallest = min(values["vocab_size"], values.get("decoder_vocab_size") or values["vocab_size"])
    values.setdefault("pad_token_id", smallest - 1)
    values.setdefault("decoder_start_token_id", values["pad_token_id"])

    torch.manual_seed(seed)
    hf = MarianMTModel(HFMarianConfig(**values)).eval()
    with torch.no_grad():
        bias = hf.final_logits_bias
        bias.normal_()
        if eos_boost is not None:
            bias[0, values["eos_token_id"]] = bias[0].max() + eos_boost
    hf.save_pretrained(path)
    return path, hf


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("single_torch_thread")``).

    The models are tiny, so threads buy nothing, and on a shared machine they contend: ten times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_marian() -> Callable[..., tuple[Path, MarianMTModel]]:
    """:func:`build_marian`: ``make_marian(tmp_path, **config_overrides) -> (model_dir, hf_model)``.

    Session-scoped so that module- and class-scoped fixtures can use it with ``tmp_path_factory`` paths.
    """
    return build_marian


# -- helpers shared by the test modules ---------------------------------------------------------------


def random_sources(
    count: int, *, vocab_size: int, pad_id: int, eos_id: int, seed: int, max_len: int = 24
) -> list[list[int]]:
    """`count` token-id sources of mixed lengths (1 .. max_len words), each ending in ``</s>``."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in (pad_id, eos_id)])
    sources = []
    for _ in range(count):
        length = int(torch.randint(1, max_len + 1, (1,), generator=generator))
        picks = torch.randint(len(allowed), (length,), generator=generator)
        sources.append([*allowed[picks].tolist(), eos_id])
    return sources


def pad_batch(sources: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, S) and their boolean mask (B, S)."""
    longest = max(len(s) for s in sources)
    ids = torch.full((len(sources), longest), pad_id, dtype=torch.long)
    for row, source in enumerate(sources):
        ids[row, : len(source)] = torch.tensor(source)
    return ids, ids != pad_id


def strip_hf(sequence: Sequence[int], *, pad_id: int, eos_id: int) -> list[int]:
    """A Transformers output row in mtserve's convention: no start token, no padding, no trailing ``</s>``."""
    tokens = [t for t in list(sequence)[1:] if t != pad_id]
    if tokens and tokens[-1] == eos_id:
        tokens.pop()
    return tokens


def hf_generate(hf: MarianMTModel, sources: Sequence[Sequence[int]], options: SearchOptions, **extra: Any) -> Any:
    """Transformers' generate() with mtserve's options translated: lengths + 1, pad banned, no sampling."""
    pad_id = hf.config.pad_token_id
    ids, mask = pad_batch(sources, pad_id)
    kwargs: dict[str, Any] = {
        "num_beams": options.beam_size,
        "max_length": options.max_length + 1,
        "length_penalty": options.length_penalty,
        "bad_words_ids": [[pad_id]],
        "do_sample": False,
        "early_stopping": options.early_stopping,
        "return_dict_in_generate": True,
        "output_scores": True,
    }
    if options.min_length:
        kwargs["min_length"] = options.min_length + 1
    kwargs.update(extra)
    with torch.no_grad():
        return hf.generate(input_ids=ids, attention_mask=mask.long(), **kwargs)


@pytest.fixture(scope="session")
def helpers() -> Any:
    """The helper functions above, for test modules (conftest itself is not importable by name)."""

    class _Helpers:
        random_sources = staticmethod(random_sources)
        engine_core = staticmethod(engine_core)
        submit_text = staticmethod(submit_text)
        run_jobs = staticmethod(run_jobs)
        decode_all = staticmethod(decode_all)
        pad_batch = staticmethod(pad_batch)
        strip_hf = staticmethod(strip_hf)
        hf_generate = staticmethod(hf_generate)

    return _Helpers
