"""Tiny NLLB-200, M2M100 and MBart-50 directories in their published layout, built offline.

Each builder trains a SentencePiece model on the test corpus (English, German and French sentences with
digits, accents and punctuation), writes the tokenizer files the way Transformers saves them for the
real models, and saves a random model with Transformers; it returns the directory, the Transformers
model (eval mode) and its tokenizer, loaded back from the directory as a user would load it.

- NLLB: ``sentencepiece.bpe.model`` + ``tokenizer.json`` (codes ``eng_Latn`` … as added tokens after the
  pieces, ``<mask>`` after them), ``tokenizer_config.json``; the model is an ``M2M100ForConditionalGeneration``.
- M2M100: ``vocab.json`` (the fairseq dictionary, in an order *unlike* the spm ids, so that code which
  uses spm ids is caught), ``sentencepiece.bpe.model``, ``tokenizer_config.json`` listing the 100
  ``__xx__`` codes, which take the ids after the vocabulary, then 8 ``madeupword`` ids.
- MBart-50: a unigram spm saved as ``sentencepiece.bpe.model`` and an ``MBart50Tokenizer``'s files;
  ``final_logits_bias`` non-zero, as the family has one.

Random decoders rarely end by themselves; `eos_boost` shifts the decoder's final layer-norm bias along
the ``</s>`` embedding, which raises that logit by about `eos_boost` for every hidden state (the output
layer is tied to the embeddings), so that texts end at varied lengths; the defaults (12, 8 and 4) leave
about half the test sentences ending before 30 tokens with these seeds.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from _tokenizer_fixtures import source_corpus, target_corpus

# Small enough to decode dozens of texts in a second; the families' real activations and scaling.
TINY: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "max_position_embeddings": 128,
    "scale_embedding": True,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "init_std": 0.5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
}
# Without layerdrop the layers always run (Transformers' M2M100 drops layers at random only in training).
_M2M_EXTRA = {"encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0}


def corpus(n: int = 600, seed: int = 3) -> list[str]:
    """Sentences of all three test languages, shuffled."""
    lines = source_corpus(n // 2, seed) + target_corpus(n - n // 2, seed + 1)
    random.Random(seed).shuffle(lines)
    return lines


def _train_spm(path: Path, model_type: str, vocab_size: int) -> spm.SentencePieceProcessor:
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buffer, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, hard_vocab_limit=True, num_threads=1, minloglevel=2,
    )  # fmt: skip
    path.write_bytes(buffer.getvalue())
    processor = spm.SentencePieceProcessor()
    processor.Load(str(path))
    return processor


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _save(model: Any, path: Path, eos_boost: float | None) -> Any:
    if eos_boost is not None:
        with torch.no_grad():
            eos = model.get_output_embeddings().weight[model.config.eos_token_id]
            model.model.decoder.layer_norm.bias += eos_boost * eos / eos.dot(eos)
    model.eval().save_pretrained(path)
    return model


def build_nllb(
    path: Path, *, seed: int = 0, eos_boost: float | None = 12.0, legacy_behaviour: bool = False, **config: Any
) -> tuple[Path, Any, Any]:
    """An NLLB-200 directory: the 202 codes in Transformers' order, ids from tokenizer.json."""
    from transformers import AutoTokenizer, M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    path = _fresh(Path(path))
    _train_spm(path / "sentencepiece.bpe.model", "bpe", 160)
    tokenizer = NllbTokenizer.from_pretrained(
        path, extra_special_tokens=list(FAIRSEQ_LANGUAGE_CODES), mask_token=None, src_lang="eng_Latn",
        legacy_behaviour=legacy_behaviour,
    )  # fmt: skip
    tokenizer.add_special_tokens({"mask_token": "<mask>"})  # after the codes, as in the published model
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    values = {**TINY, **_M2M_EXTRA, "activation_function": "relu", **config}
    hf_config = M2M100Config(vocab_size=len(tokenizer) + 2, tokenizer_class="NllbTokenizer", **values)
    model = _save(M2M100ForConditionalGeneration(hf_config), path, eos_boost)
    return path, model, AutoTokenizer.from_pretrained(path, src_lang="eng_Latn", legacy_behaviour=legacy_behaviour)


def build_m2m100(path: Path, *, seed: int = 0, eos_boost: float | None = 8.0, **config: Any) -> tuple[Path, Any, Any]:
    """An M2M100 directory: vocab.json in shuffled order, the codes after it, 8 madeup words after those."""
    from transformers import AutoTokenizer, M2M100Config, M2M100ForConditionalGeneration
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    path = _fresh(Path(path))
    processor = _train_spm(path / "sentencepiece.bpe.model", "bpe", 160)
    pieces = [processor.IdToPiece(i) for i in range(3, processor.GetPieceSize())]
    random.Random(seed).shuffle(pieces)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3} | {piece: 4 + i for i, piece in enumerate(pieces)}
    codes = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    _write_json(path / "vocab.json", vocab)
    _write_json(path / "tokenizer_config.json", {
        "tokenizer_class": "M2M100Tokenizer", "language_codes": "m2m100", "num_madeup_words": 8,
        "additional_special_tokens": codes, "src_lang": None, "tgt_lang": None,
    })  # fmt: skip
    _write_json(path / "special_tokens_map.json", {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "sep_token": "</s>",
        "additional_special_tokens": codes,
    })  # fmt: skip
    torch.manual_seed(seed)
    values = {**TINY, **_M2M_EXTRA, "activation_function": "relu", **config}
    model = _save(M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(vocab) + 100 + 8, **values)), path,
                  eos_boost)
    return path, model, AutoTokenizer.from_pretrained(path, src_lang="en")


def build_mbart50(path: Path, *, seed: int = 0, eos_boost: float | None = 4.0, **config: Any) -> tuple[Path, Any, Any]:
    """An MBart-50 many-to-many directory: unigram spm, the 52 xx_YY codes, a non-zero final_logits_bias."""
    from transformers import AutoTokenizer, MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration

    path = _fresh(Path(path))
    _train_spm(path / "sentencepiece.bpe.model", "unigram", 160)
    tokenizer = MBart50Tokenizer.from_pretrained(path, src_lang="en_XX", bos_token="<s>")
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    values = {**TINY, "activation_function": "relu", "forced_eos_token_id": 2, "normalize_before": True,
              "add_final_layer_norm": True, "normalize_embedding": True, **config}
    model = MBartForConditionalGeneration(MBartConfig(vocab_size=len(tokenizer), tokenizer_class="MBart50Tokenizer",
                                                      **values))
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
    _save(model, path, eos_boost)
    return path, model, AutoTokenizer.from_pretrained(path, src_lang="en_XX")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
