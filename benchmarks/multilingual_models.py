"""Random NLLB-200- and M2M100-shaped models in their published layouts, for the benchmarks.

What makes these families costly is their vocabulary (256k and 128k output pieces), so the random
models have the real vocabulary sizes and a transformer-base body (``Shape``; ``--shape`` picks
another). Their tokenizers are real ones of the family built on the benchmark's 8k SentencePiece
model, padded to the full size with filler pieces no text produces (private-use characters): the
model can still generate every one of the 256k ids, the output layer costs what the real one costs,
and Transformers and CTranslate2 load and convert the directory as they would the published one.

As for the random Marian model (models.py), the output layer is untied from the embeddings (tied, a
random pre-norm decoder repeats its input token), the final layer norm's gain scales the logits and
the cross-attention output is scaled up; ``</s>`` is made likely through the final layer norm's bias
(these families have no final_logits_bias), calibrated so that greedy outputs are as long as the
sources on average.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import CACHE
from .models import SHAPES, ModelSpec, Shape, _calibrate_eos_bias, resolve_vocab

log = logging.getLogger(__name__)

RECIPE = 1  # bump when the way these models are built changes, so that cached ones are rebuilt


@dataclass(frozen=True)
class Family:
    vocab_size: int  # the published model's embedding rows
    source_language: str  # the benchmark texts are German
    target_languages: tuple[str, ...]  # cycled over the texts: every batch mixes them


FAMILIES = {
    "nllb": Family(256204, "deu_Latn", ("eng_Latn", "fra_Latn", "spa_Latn")),
    "m2m100": Family(128112, "__de__", ("__en__", "__fr__", "__es__")),
}
_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def multilingual_model(family_name: str, texts: Sequence[str], shape_name: str = "base", seed: int = 0) -> ModelSpec:
    """The random `family_name` model of ``shape_name``; built once (calibrated on `texts`), then cached."""
    family, shape = FAMILIES[family_name], SHAPES[shape_name]
    vocab_dir, vocab_origin = resolve_vocab()
    name = f"random-{family_name}-{shape_name}"
    out = CACHE / name
    stamp = {"recipe": RECIPE, "family": asdict(family), "shape": asdict(shape), "seed": seed, "vocab": str(vocab_dir)}
    stamp_file = out / "benchmark-stamp.json"
    note = (f"random {family_name}-shaped {shape_name} (vocabulary {family.vocab_size}, d_model {shape.d_model}, "
            f"{shape.layers}+{shape.layers} layers, ffn {shape.ffn}), pieces of {vocab_origin}, "
            f"{family.source_language} → {'/'.join(family.target_languages)} cycled")
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copy(vocab_dir / "source.spm", out / "sentencepiece.bpe.model")
        (_nllb_tokenizer if family_name == "nllb" else _m2m100_tokenizer)(out, family)
        _build_model(out, family, shape, texts, seed)
        stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    return ModelSpec(name, out, note, source_language=family.source_language,
                     target_languages=family.target_languages)


def _filler(i: int) -> str:
    return "\u2581" + chr(0xF0000 + i // 0x1900) + chr(0xE000 + i % 0x1900)  # private-use: never in a text


def _nllb_tokenizer(out: Path, family: Family) -> None:
    """Transformers' NllbTokenizer over the spm, its tokenizer.json padded with fillers before the codes."""
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    tokenizer = NllbTokenizer.from_pretrained(out, extra_special_tokens=list(FAIRSEQ_LANGUAGE_CODES),
                                              mask_token=None, src_lang="eng_Latn")
    tokenizer.add_special_tokens({"mask_token": "<mask>"})
    tokenizer.save_pretrained(out)
    data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    first_added = min(t["id"] for t in data["added_tokens"] if t["id"] >= 4)
    fillers = family.vocab_size - len(tokenizer)
    if isinstance(vocab, dict):
        vocab.update({_filler(i): first_added + i for i in range(fillers)})
    else:  # unigram: [piece, score] in id order
        vocab += [[_filler(i), -1e4] for i in range(fillers)]
    for token in data["added_tokens"]:
        if token["id"] >= first_added:
            token["id"] += fillers
    for special in (data.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [i + fillers if i >= first_added else i for i in special["ids"]]
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("added_tokens_decoder", None)  # numbered before the fillers; tokenizer.json has them
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _m2m100_tokenizer(out: Path, family: Family) -> None:
    """vocab.json: the fairseq specials, the spm pieces, fillers; then 100 codes and 8 madeup words."""
    import sentencepiece
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    processor = sentencepiece.SentencePieceProcessor()
    processor.Load(str(out / "sentencepiece.bpe.model"))
    pieces = [processor.IdToPiece(i) for i in range(processor.GetPieceSize())
              if not (processor.IsControl(i) or processor.IsUnknown(i))]
    vocab = dict(_SPECIALS) | {piece: 4 + i for i, piece in enumerate(pieces)}
    codes = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    size = family.vocab_size - len(codes) - 8
    vocab |= {_filler(i): len(vocab) + i for i in range(size - len(vocab))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "M2M100Tokenizer", "language_codes": "m2m100", "num_madeup_words": 8,
              "additional_special_tokens": codes, "src_lang": None, "tgt_lang": None}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "sep_token": "</s>", "additional_special_tokens": codes}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


def _build_model(out: Path, family: Family, shape: Shape, texts: Sequence[str], seed: int) -> None:
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    from mtserve.model.config import ModelConfig
    from mtserve.model.tokenizers import load_tokenizer

    config = M2M100Config(
        vocab_size=family.vocab_size, d_model=shape.d_model, encoder_layers=shape.layers,
        decoder_layers=shape.layers, encoder_attention_heads=shape.heads, decoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn, decoder_ffn_dim=shape.ffn, max_position_embeddings=1024,
        activation_function="relu", scale_embedding=True, tie_word_embeddings=False, init_std=shape.init_std,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(config).eval()
    decoder = model.model.decoder
    with torch.no_grad():
        decoder.layer_norm.weight.mul_(shape.logit_scale)
        for layer in decoder.layers:
            layer.encoder_attn.out_proj.weight.mul_(shape.cross_attention_scale)
    model.save_pretrained(out)  # the tokenizer needs config.json's vocabulary size
    tokenizer = load_tokenizer(out, ModelConfig.from_dir(out))
    sources = [tokenizer.encode(t, family.source_language) for t in texts[:32]]
    target = tokenizer.target_prefix(family.target_languages[0])[0]
    mean = sum(len(s) - 2 for s in sources) / max(1, len(sources))
    bias = _calibrate_eos_bias(model, sources, eos=2, pad=1, mean_length=max(2.0, mean) + 1, first_steps=2,
                               forced_bos_token_id=target, ban_pad=False)
    with torch.no_grad():
        eos_row = model.lm_head.weight[2]
        decoder.layer_norm.bias += bias * eos_row / eos_row.dot(eos_row)  # raises the </s> logit by `bias`
    model.save_pretrained(out)
    generation = {"decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "bos_token_id": 0,
                  "max_length": 200}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    log.info("built %s: </s> shift %.3f for a mean greedy length of %.1f tokens", out, bias, mean)
