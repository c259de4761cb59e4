"""Language codes: a caller's tag (BCP-47, ISO 639-1/2/3, another family's code) to the model's own code.

The model code sets are Transformers' lists of the real models' codes (NLLB-200: 202, M2M100: 100,
MBart-50: 52), so the cases below are the mappings a user of the published models gets.
"""

from __future__ import annotations

import pytest

from mtserve.model.languages import LanguageCodes, LanguageError, UnknownLanguageError, choose_language, code_tag


@pytest.fixture(scope="module")
def nllb() -> LanguageCodes:
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    return LanguageCodes(FAIRSEQ_LANGUAGE_CODES)


@pytest.fixture(scope="module")
def m2m() -> LanguageCodes:
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    return LanguageCodes(f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"])


@pytest.fixture(scope="module")
def mbart() -> LanguageCodes:
    from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES

    return LanguageCodes(FAIRSEQ_LANGUAGE_CODES)


NLLB_CASES = {
    "deu_Latn": "deu_Latn", "DEU_LATN": "deu_Latn",  # the model's own code, any case
    "de": "deu_Latn", "deu": "deu_Latn", "ger": "deu_Latn", "de-CH": "deu_Latn", "de-DE": "deu_Latn",
    "__de__": "deu_Latn", "de_DE": "deu_Latn",  # other families' codes mean their language
    "en-US": "eng_Latn", "en-GB": "eng_Latn", "pt-BR": "por_Latn",
    "zh": "zho_Hans", "cmn": "zho_Hans", "zh-CN": "zho_Hans", "zh-Hans": "zho_Hans",
    "zh-TW": "zho_Hant", "zh-HK": "zho_Hant", "zh-Hant": "zho_Hant", "yue": "yue_Hant",
    "ar": "arb_Arab", "fa": "pes_Arab", "fa-AF": "prs_Arab", "ms": "zsm_Latn", "no": "nob_Latn",
    "nb": "nob_Latn", "iw": "heb_Hebr", "he": "heb_Hebr", "sw": "swh_Latn", "tl": "tgl_Latn", "fil": "tgl_Latn",
    "sr": "srp_Cyrl", "bs": "bos_Latn",
    # The overrides: macrolanguages whose NLLB member langcodes measures far away (or maps elsewhere).
    "ps": "pbt_Arab", "qu": "quy_Latn", "tw": "twi_Latn",
}  # fmt: skip


@pytest.mark.parametrize(("requested", "expected"), sorted(NLLB_CASES.items()))
def test_nllb_mapping(nllb: LanguageCodes, requested: str, expected: str) -> None:
    assert nllb.resolve(requested) == expected


@pytest.mark.parametrize(("requested", "m2m_code", "mbart_code"), [
    ("de", "__de__", "de_DE"), ("deu_Latn", "__de__", "de_DE"), ("en-US", "__en__", "en_XX"),
    ("zh", "__zh__", "zh_CN"), ("iw", "__he__", "he_IL"), ("fil", "__tl__", "tl_XX"), ("ps", "__ps__", "ps_AF"),
    ("fa-AF", "__fa__", "fa_IR"), ("pt-BR", "__pt__", "pt_XX"),
])  # fmt: skip
def test_m2m100_and_mbart_mapping(m2m: LanguageCodes, mbart: LanguageCodes, requested: str, m2m_code: str,
                                  mbart_code: str) -> None:
    assert m2m.resolve(requested) == m2m_code
    assert mbart.resolve(requested) == mbart_code


@pytest.mark.parametrize("requested", [
    "sr-Latn",  # NLLB has Serbian in Cyrillic only: another script is another output
    "xx", "tlh", "zz-ZZ",  # no such language in the model
    "klingon", "", "12", "de--", "a" * 64,  # not language tags
])  # fmt: skip
def test_nllb_refuses(nllb: LanguageCodes, requested: str) -> None:
    with pytest.raises(UnknownLanguageError):
        nllb.resolve(requested)


@pytest.mark.parametrize(("codes", "requested"), [
    ("m2m", "zh-TW"),  # M2M100 and MBart-50 know Simplified Chinese only
    ("mbart", "zh-Hant"),
    ("mbart", "sr-Latn"),  # langcodes would call Croatian close (9); that is another language
    ("mbart", "no"),  # MBart-50 has no Norwegian
])  # fmt: skip
def test_near_misses_are_refused(codes: str, requested: str, request: pytest.FixtureRequest) -> None:
    with pytest.raises(UnknownLanguageError):
        request.getfixturevalue(codes).resolve(requested)


def test_tags_of_model_codes() -> None:
    assert [code_tag(c) for c in ("deu_Latn", "zho_Hant", "__de__", "de_DE", "en_XX", ">>deu<<", ">>zho_Hans<<")] == [
        "de", "zh-Hant", "de", "de-DE", "en", "de", "zh-Hans"]


def test_choose_language_messages(nllb: LanguageCodes) -> None:
    with pytest.raises(LanguageError, match=r"needs the language named: one of its 202 codes \('ace_Arab'"):
        choose_language("source_language", "", nllb, required=True)
    assert choose_language("source_language", "", nllb, required=False) is None
    single = LanguageCodes(["de"])
    assert choose_language("source_language", "deu", single, required=False) == "de"
    with pytest.raises(LanguageError, match="'fr' does not match the model's language 'de'") as error:
        choose_language("source_language", "fr", single, required=False)
    assert error.value.field == "source_language"
    # A model that declares no languages takes any request at its word.
    assert choose_language("target_language", "anything", LanguageCodes([]), required=False) is None
