"""Parity with Transformers for NLLB-200, M2M100 and MBart-50: the same directory gives the same logits,
the same greedy and beam tokens with the target language forced, and the same token ids and text.

Each case is a tiny random model saved by Transformers in the family's published layout
(_multilingual_fixtures.py), with its own depths, heads and ffn sizes; the references are Transformers'
forward pass, ``generate(forced_bos_token_id=...)`` on the padded batch, and its tokenizer loaded from the
same directory. mtserve loads the directory through the Translator, so its decoding runs on the engine
core with the packed CPU layers, as served.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from _multilingual_fixtures import build_m2m100, build_mbart50, build_nllb, corpus
from safetensors import safe_open

from mtserve.engine import Translator
from mtserve.model.checkpoint import load_model
from mtserve.model.config import ModelConfig
from mtserve.model.tokenizers import FairseqTokenizer, load_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_LENGTH = 30  # ours counts generated tokens; Transformers' max_new_tokens is the same number
BEAMS = 4
TEXTS = corpus(24, seed=11)  # 24 sentences of 4 to 30 tokens, English, German and French


@dataclass(frozen=True)
class Family:
    build: Any
    source: str  # the model's code of the source language
    targets: tuple[str, ...]  # three target codes
    shape: dict[str, Any]

    def language_id(self, tokenizer: Any, code: str) -> int:
        return tokenizer.convert_tokens_to_ids(code)


FAMILIES = {
    # Deeper decoder than encoder, heads differing per side.
    "nllb": Family(build_nllb, "eng_Latn", ("deu_Latn", "fra_Latn", "zho_Hant"),
                   dict(encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=48, eos_boost=14.0)),
    # One encoder layer, wide ffn.
    "m2m100": Family(build_m2m100, "__en__", ("__de__", "__fr__", "__ja__"),
                     dict(encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=4,
                          encoder_ffn_dim=96, decoder_ffn_dim=80, seed=1)),
    # GELU (MBart's default) and a non-zero final_logits_bias.
    "mbart50": Family(build_mbart50, "en_XX", ("de_DE", "fr_XX", "ru_RU"),
                      dict(encoder_layers=3, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=48, decoder_ffn_dim=64, activation_function="gelu", seed=2)),
}  # fmt: skip


@dataclass
class Case:
    family: Family
    path: Path
    hf_model: Any
    hf_tokenizer: Any
    translator: Translator

    def generate(self, texts: list[str], target: str, **kwargs: Any) -> Any:
        batch = self.hf_tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            return self.hf_model.generate(
                **batch, forced_bos_token_id=self.family.language_id(self.hf_tokenizer, target),
                max_new_tokens=MAX_LENGTH, do_sample=False, **kwargs,
            )  # fmt: skip


def _tokens(row: list[int]) -> list[int]:
    """A generated row without the decoder start token, padding and the final </s> (as ours reports it)."""
    row = row[1:]
    while row and row[-1] == 1:
        row = row[:-1]
    return row[:-1] if row and row[-1] == 2 else row


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    from transformers import AutoTokenizer

    family = FAMILIES[request.param]
    shape = dict(family.shape)
    seed = shape.pop("seed", 0)
    path, model, _ = family.build(tmp_path_factory.mktemp(request.param), seed=seed, **shape)
    tokenizer = AutoTokenizer.from_pretrained(path, src_lang=_hf_code(family.source))
    return Case(family, path, model, tokenizer, Translator.load(path, device="cpu", dtype="float32"))


def _hf_code(code: str) -> str:
    return code.strip("_") if code.startswith("__") else code  # M2M100Tokenizer takes "en" for __en__


def test_checkpoint_holds_only_the_shared_table(case: Case) -> None:
    """Transformers saves one embedding table (model.shared.weight) for encoder, decoder and output layer:
    that alone must load, tied as it was."""
    with safe_open(str(case.path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.shared.weight" in names
    assert not names & {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
    _, model = load_model(case.path, "cpu", "float32")
    assert model.lm_head.weight is model.decoder.embed_tokens.weight is model.encoder.embed_tokens.weight


def test_forward_logits_match(case: Case) -> None:
    _, model = load_model(case.path, "cpu", "float32")
    batch = case.hf_tokenizer(TEXTS[:8], return_tensors="pt", padding=True)
    generator = torch.Generator().manual_seed(0)
    decoder_input_ids = torch.randint(4, 100, (8, 12), generator=generator)
    decoder_input_ids[:, 0] = 2
    with torch.no_grad():
        reference = case.hf_model(**batch, decoder_input_ids=decoder_input_ids).logits
        ours = model(batch.input_ids, batch.attention_mask.bool(), decoder_input_ids)
    assert reference.abs().max() > 1  # not a degenerate comparison
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


# The comparisons with generate() decode each text whole (split_sentences=False), as generate() does: they
# test the decoder, not the sentence splitter.
@pytest.mark.parametrize("beams", [1, BEAMS])
def test_decoding_matches_generate(case: Case, beams: int) -> None:
    """Three target languages, 8 sentences each, one call per language on Transformers' side and one
    call for all 24 on ours (texts of different languages decode in the same steps)."""
    targets = [case.family.targets[i % 3] for i in range(len(TEXTS))]
    ours = case.translator.translate(TEXTS, split_sentences=False, source_language=case.family.source,
                                     target_language=targets,
                                     beam_size=beams, max_length=MAX_LENGTH)
    mismatches = []
    for k, target in enumerate(case.family.targets):
        indices = range(k, len(TEXTS), 3)
        reference = case.generate([TEXTS[i] for i in indices], target, num_beams=beams)
        for i, row in zip(indices, reference.tolist(), strict=True):
            expected = _tokens(row)
            assert expected[0] == case.family.language_id(case.hf_tokenizer, target)
            if ours[i].token_ids != expected:
                mismatches.append(f"text {i} → {target}: ours {ours[i].token_ids}, Transformers {expected}")
            assert ours[i].target_language == target
    assert not mismatches, "\n".join(mismatches)
    lengths = {len(t.token_ids) for t in ours}
    # Some end early, some run to the end (MBart ends there with a forced </s>, which token_ids leave out).
    assert min(lengths) < MAX_LENGTH // 2 and max(lengths) >= MAX_LENGTH - 1


def test_beam_nbest_and_scores_match(case: Case) -> None:
    texts, target = TEXTS[:6], case.family.targets[0]
    ours = case.translator.translate(texts, split_sentences=False, source_language=case.family.source,
                                     target_language=target,
                                     beam_size=BEAMS, num_hypotheses=BEAMS, max_length=MAX_LENGTH)
    with torch.no_grad():
        reference = case.generate(texts, target, num_beams=BEAMS, num_return_sequences=BEAMS,
                                  output_scores=True, return_dict_in_generate=True)
    rows = reference.sequences.tolist()
    for i, translation in enumerate(ours):
        expected = [_tokens(rows[i * BEAMS + k]) for k in range(BEAMS)]
        assert [h.token_ids for h in translation.hypotheses] == expected
        scores = reference.sequences_scores[i * BEAMS:(i + 1) * BEAMS]
        torch.testing.assert_close(torch.tensor([h.score for h in translation.hypotheses]), scores,
                                   atol=1e-4, rtol=1e-4)


def test_text_matches_transformers_decode(case: Case) -> None:
    ours = case.translator.translate(TEXTS, split_sentences=False, source_language=case.family.source,
                                     target_language=case.family.targets[1], max_length=MAX_LENGTH)
    reference = case.generate(TEXTS, case.family.targets[1])
    expected = case.hf_tokenizer.batch_decode(reference, skip_special_tokens=True)
    assert [t.text for t in ours] == expected


def test_tokenizer_ids_and_decoding_match(case: Case) -> None:
    ours = load_tokenizer(case.path, ModelConfig.from_dir(case.path))
    assert isinstance(ours, FairseqTokenizer)
    varied = [
        *corpus(150, seed=21),
        "", "x", "  leading spaces", "a  b   c", "tab\there", "new\nline", "ﬁne Ａ 日本 ½", "Ünïcödé ça va? ß",
        "a </s> b", "x<unk>y", "<s>start", "<pad>", "1/2 #42 50% x@y.z", "'quoted' \"Q\"", "a\u00a0b", "emoji 🙂",
        f"{case.family.targets[0]} inside", "deu_Latn __de__ de_DE", "<mask> z",
    ]
    mismatched = [t for t in varied if ours.encode(t.rstrip(), case.family.source)
                  != case.hf_tokenizer(t.rstrip()).input_ids]
    assert not mismatched
    rng = random.Random(0)
    vocab = case.translator.config.target_vocab_size
    batches = [[rng.randrange(vocab) for _ in range(rng.randint(0, 16))] for _ in range(300)]
    assert [ours.decode(ids) for ids in batches] == case.hf_tokenizer.batch_decode(batches, skip_special_tokens=True)


def test_trailing_whitespace_is_stripped(case: Case) -> None:
    """Transformers' fast tokenizers turn trailing whitespace into a piece of its own; mtserve strips it,
    so "text " translates like "text"."""
    ours = case.translator.tokenizer
    assert ours.encode("The cat sees the house.  \n", case.family.source) == ours.encode(
        "The cat sees the house.", case.family.source)


def test_mixed_languages_batch_equals_each_alone(case: Case) -> None:
    """Batch invariance across languages: a text's tokens are the same alone or beside texts with other
    source and target languages."""
    texts = TEXTS[:9]
    sources = [case.family.source, case.family.targets[1], case.family.targets[2]] * 3
    targets = [case.family.targets[(i * 2) % 3] for i in range(9)]
    for beams in (1, BEAMS):
        together = case.translator.translate(texts, source_language=sources, target_language=targets,
                                             beam_size=beams, max_length=MAX_LENGTH)
        alone = [case.translator.translate([t], source_language=s, target_language=g, beam_size=beams,
                                           max_length=MAX_LENGTH)[0]
                 for t, s, g in zip(texts, sources, targets, strict=True)]
        assert [t.token_ids for t in together] == [t.token_ids for t in alone]
        assert [t.source_language for t in together] == sources


def test_languages_are_needed_and_mapped(case: Case) -> None:
    from mtserve.model.languages import LanguageError

    translator = case.translator
    with pytest.raises(LanguageError, match="needs the language named") as missing:
        translator.translate(["hello"], target_language=case.family.targets[0])
    assert missing.value.field == "source_language"
    with pytest.raises(LanguageError, match="not one of the model's") as unknown:
        translator.translate(["hello"], source_language="en", target_language="tlh")
    assert unknown.value.field == "target_language"
    by_tag = translator.translate(["The cat."], source_language="en-US", target_language="de-CH", max_length=8)
    by_code = translator.translate(["The cat."], source_language=case.family.source,
                                   target_language=case.family.targets[0], max_length=8)
    assert by_tag[0].token_ids == by_code[0].token_ids
    assert by_tag[0].target_language == case.family.targets[0]


def test_nllb_legacy_behaviour_puts_the_code_last(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path, _, _ = build_nllb(tmp_path, legacy_behaviour=True)
    reference = AutoTokenizer.from_pretrained(path, src_lang="fra_Latn", legacy_behaviour=True)
    ours = load_tokenizer(path, ModelConfig.from_dir(path))
    for text in TEXTS[:10]:
        assert ours.encode(text, "fra_Latn") == reference(text).input_ids
        assert ours.encode(text, "fra_Latn")[-2:] == [2, reference.convert_tokens_to_ids("fra_Latn")]


def test_spm_only_directory_numbers_like_transformers(tmp_path: Path) -> None:
    """An NLLB/MBart-50 directory without tokenizer.json: fairseq's offset and the configured code order."""
    from transformers import AutoTokenizer

    path, _, _ = build_mbart50(tmp_path)
    reference = AutoTokenizer.from_pretrained(path, src_lang="en_XX")
    (path / "tokenizer.json").unlink()
    ours = load_tokenizer(path, ModelConfig.from_dir(path))
    assert [ours.encode(t, "en_XX") for t in TEXTS] == [reference(t).input_ids for t in TEXTS]
    assert ours.codes == {code: reference.convert_tokens_to_ids(code) for code in ours.codes}
