"""Lexically constrained beam search (model/constrained.py) and the glossary matching (engine/terminology.py):
every constrained output contains its target terms, on tiny random models and on the bundled model;
unconstrained texts in the same batch decode exactly as alone (batch invariance); a term the model says
anyway is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mtserve.engine.terminology import applicable
from mtserve.engine.translator import Translator
from mtserve.model.constrained import _contains
from mtserve.model.options import SearchOptions

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tiny(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> Translator:
    path: Path
    path, _ = make_marian(tmp_path_factory.mktemp("constrained"), seed=11, eos_boost=1.0, tokenizer=True)
    return Translator.load(path, device="cpu", dtype="float32", pack=False)


def _constraints(translator: Translator, count: int, seed: int) -> list[list[list[int]]]:
    """For each text, 1 or 2 random target sequences of 1 to 3 tokens (none for every third text)."""
    config = translator.config
    generator = torch.Generator().manual_seed(seed)
    allowed = [i for i in range(config.target_vocab_size) if i not in (config.pad_token_id, config.eos_token_id)]
    out = []
    for k in range(count):
        if k % 3 == 2:
            out.append([])
            continue
        out.append([[allowed[int(i)] for i in torch.randint(len(allowed), (1 + (k + j) % 3,), generator=generator)]
                    for j in range(1 + k % 2)])
    return out


@pytest.mark.parametrize("beam_size", [2, 4])
def test_every_constrained_output_contains_its_terms(tiny: Translator, helpers: Any, beam_size: int) -> None:
    config = tiny.config
    sources = helpers.random_sources(12, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=8)
    constraints = _constraints(tiny, len(sources), seed=9)
    options = SearchOptions(beam_size=beam_size, max_length=24)
    plain = tiny.generate(sources, options)
    constrained = tiny.generate(sources, options, constraints=constraints)
    for terms, mixed, alone in zip(constraints, constrained, plain, strict=True):
        best = mixed[0].token_ids
        if terms:
            assert all(_contains(tuple(best), tuple(term)) for term in terms), (terms, best)
        else:  # batch invariance: a text without terms decodes as it does with none in the batch
            assert [h.token_ids for h in mixed] == [h.token_ids for h in alone]


def test_a_term_the_model_says_anyway_is_kept(tiny: Translator, helpers: Any) -> None:
    config = tiny.config
    sources = helpers.random_sources(6, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=10)
    options = SearchOptions(beam_size=4, max_length=24)
    plain = tiny.generate(sources, options)
    said = [[h[0].token_ids[:2]] if len(h[0].token_ids) >= 2 else [] for h in plain]
    again = tiny.generate(sources, options, constraints=said)
    for terms, after in zip(said, again, strict=True):
        if terms:
            assert _contains(tuple(after[0].token_ids), tuple(terms[0]))


def test_terminology_on_the_bundled_model() -> None:
    translator = Translator.load_default(device="cpu")
    texts = ["Das Haus ist klein.", "Der Hund schläft im Garten.", "Wo ist der Bahnhof?", "Ich trinke Tee."]
    glossary = {"Haus": "building", "hund": "puppy", "Bahnhof": "railway station"}
    results = translator.translate(texts, beam_size=4, terminology=glossary)
    plain = translator.translate(texts, beam_size=4)
    assert "building" in results[0].text and "building" not in plain[0].text
    assert "puppy" in results[1].text  # the glossary ignores case
    assert "railway station" in results[2].text
    assert results[3].text == plain[3].text  # no term applies: unchanged


def test_which_terms_apply() -> None:
    glossary = {"Haus": "house", "z. B.": "e.g.", "Bank": "bench"}
    assert applicable("Das haus steht, z. B. hier.", glossary) == ["house", "e.g."]
    assert applicable("Die Hausaufgabe und die Bankkarte", glossary) == []  # whole words only


def test_terminology_needs_beam_search(tiny: Translator, helpers: Any) -> None:
    config = tiny.config
    sources = helpers.random_sources(1, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=12)
    with pytest.raises(ValueError, match="terminology needs beam search"):
        tiny.generate(sources, SearchOptions(max_length=8), constraints=[[[5]]])
