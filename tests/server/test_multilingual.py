"""A served NLLB-style model: per-text target languages through gRPC, checked against Transformers.

The model is a tiny random NLLB-200 directory in the published layout (sentencepiece.bpe.model,
tokenizer.json, config.json with model_type m2m_100, model.safetensors holding model.shared.weight only),
served by a real server beside a Marian model; the reference for each text is Transformers'
``generate(forced_bos_token_id=...)`` and ``batch_decode`` on the same directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from mtserve.client import TranslationClient
from mtserve.engine.segment import split_sentences
from mtserve.proto.api import pb2, pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model"))
from _multilingual_fixtures import build_nllb, corpus

sys.path.pop(0)

MAX_LENGTH = 24
TARGETS = ["deu_Latn", "fra_Latn", "zho_Hant", "spa_Latn"]


@pytest.fixture(scope="module")
def nllb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    torch.manual_seed(0)
    return build_nllb(tmp_path_factory.mktemp("nllb"), eos_boost=14.0)


@pytest.fixture(scope="module")
def served(nllb: tuple[Path, Any, Any], model_dirs: dict[str, Path], helpers: Any) -> Any:
    dirs = {**model_dirs, "nllb": nllb[0]}
    with helpers.running_server(helpers.server_config(dirs, "nllb", "tiny", max_batch_rows=32)) as server:
        yield server


def _reference(nllb: tuple[Path, Any, Any], texts: list[str], source: str, target: str, beams: int) -> list[str]:
    from transformers import AutoTokenizer

    path, model, _ = nllb
    tokenizer = AutoTokenizer.from_pretrained(path, src_lang=source)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(**batch, forced_bos_token_id=tokenizer.convert_tokens_to_ids(target),
                                   num_beams=beams, max_new_tokens=MAX_LENGTH, do_sample=False)
    return tokenizer.batch_decode(generated, skip_special_tokens=True)


@pytest.mark.parametrize("beams", [1, 4])
def test_per_text_target_languages_match_transformers(served: Any, nllb: Any, beams: int) -> None:
    """One request fans out to four languages, given as BCP-47 tags and as the model's codes alike."""
    texts = corpus(16, seed=13)
    asked = ["de", "fr", "zh-TW", "spa_Latn"] * 4
    with TranslationClient(served.address) as client:
        results = client.translate(texts, "nllb", source_language="en", target_language=asked, beam_size=beams,
                                   max_length=MAX_LENGTH, split_sentences=False)  # as generate() takes them
    assert [r.target_language for r in results] == [TARGETS[i % 4] for i in range(16)]
    assert {r.source_language for r in results} == {"eng_Latn"}
    for k, target in enumerate(TARGETS):
        expected = _reference(nllb, texts[k::4], "eng_Latn", target, beams)
        assert [r.text for r in results[k::4]] == expected


def test_a_text_of_several_sentences_is_its_sentences_translated_alone(served: Any, nllb: Any) -> None:
    """Split by default: each sentence gets the language tags and decodes as Transformers decodes it alone;
    the translations are joined with the whitespace that followed each sentence."""
    candidates = [s for s in corpus(80, seed=17) if s[-1] in ".?!" and len(s) < 50 and len(split_sentences(s)) == 1]
    alone = {s: _reference(nllb, [s], "eng_Latn", "deu_Latn", 2)[0] for s in candidates[:12]}
    sentences = [s for s in alone if alone[s]][:2] + [s for s in alone if not alone[s]][:1]
    assert len(sentences) == 3  # the random model says something for some sentences, nothing for others
    text = f"{sentences[0]}  {sentences[2]}\n{sentences[1]}"
    with TranslationClient(served.address) as client:
        [split] = client.translate([text], "nllb", source_language="en", target_language="de", beam_size=2,
                                   max_length=MAX_LENGTH)
        [whole] = client.translate([text], "nllb", source_language="en", target_language="de", beam_size=2,
                                   max_length=MAX_LENGTH, split_sentences=False)
    assert split.text == f"{alone[sentences[0]]}  {alone[sentences[2]]}\n{alone[sentences[1]]}"
    assert whole.text == _reference(nllb, [text], "eng_Latn", "deu_Latn", 2)[0]
    assert whole.input_tokens < 128  # decoded whole: the model's positions hold it
    assert split.input_tokens > whole.input_tokens  # each sentence has its own tags and </s>


def test_list_models_lists_the_languages(served: Any) -> None:
    with grpc.insecure_channel(served.address) as channel:
        listed = pb2_grpc.TranslationServiceStub(channel).ListModels(pb2.ListModelsRequest()).models
    models = {m.name: m for m in listed}
    languages = models["nllb"].languages
    assert len(languages) == 202
    assert (languages[0].code, languages[0].tag) == ("ace_Arab", "ace-Arab")
    by_code = {language.code: language.tag for language in languages}
    assert by_code["deu_Latn"] == "de" and by_code["zho_Hant"] == "zh-Hant"
    assert models["nllb"].architecture.model_type == "m2m_100"
    assert models["nllb"].source_language == "" and models["nllb"].target_language == ""
    assert [language.code for language in models["tiny"].languages] == [">>deu<<", ">>fra<<"]


@pytest.mark.parametrize(("request_fields", "field", "message"), [
    ({"target_language": "de"}, "source_language", "the model needs the language named"),
    ({"source_language": "en"}, "target_language", "the model needs the language named"),
    ({"source_language": "en", "target_language": "tlh"}, "target_language",
     "'tlh' is not one of the model's 202 languages (ListModels lists the languages of model 'nllb')"),
    ({"source_language": "en", "target_language": "sr-Latn"}, "target_language", "'sr-Latn' is not one of"),
    ({"source_language": "en", "target_languages": ["de", "x y"]}, "target_languages[1]",
     "'x y' is not a language code"),
])  # fmt: skip
def test_language_errors_name_the_field(served: Any, request_fields: dict[str, Any], field: str,
                                        message: str) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Translate(pb2.TranslateRequest(texts=["a.", "b."], model="nllb", **request_fields), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details().startswith(f"{field}: ")
    assert message in failed.value.details()


def test_languages_beside_a_marian_model(served: Any, offline: Any) -> None:
    """The Marian model on the same server is unchanged; its target language picks its >>xxx<< token."""
    texts = corpus(4, seed=3)
    with TranslationClient(served.address) as client:
        plain = client.translate(texts, "tiny", max_length=MAX_LENGTH)
        french = client.translate(texts, "tiny", target_language="fr", max_length=MAX_LENGTH, split_sentences=False)
    translator = offline("tiny")
    assert [r.text for r in plain] == [t.text for t in translator.translate(texts, max_length=MAX_LENGTH)]
    assert [r.text for r in french] == [t.text for t in translator.translate([f">>fra<< {t}" for t in texts],
                                                                               max_length=MAX_LENGTH,
                                                                               split_sentences=False)]
    assert {r.target_language for r in french} == {">>fra<<"}


def test_bench_mixes_target_languages(served: Any, capsys: Any) -> None:
    """`mtserve bench --target-languages` cycles them over the texts: every request below mixes three."""
    import json

    from mtserve.client.bench import main as bench

    assert bench(["--server", served.address, "--model", "nllb", "-c", "2", "-n", "6", "--texts-per-request", "3",
                  "--source-language", "en", "--target-languages", "de,fr,ja", "--max-length", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == 6 and report["texts"] == 18
    assert bench(["--server", served.address, "--model", "nllb", "-n", "1", "--source-language", "en",
                  "--target-languages", "de,tlh", "--texts-per-request", "2", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["codes"] == {"INVALID_ARGUMENT": 1}
