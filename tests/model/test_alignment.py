"""Alignments from cross-attention (model/alignment.py): the weights equal Transformers' cross_attentions
of the same layer, the engine's alignments are those of its own hypotheses, a hand-checked sentence on the
bundled model aligns word to word, and replace_unknowns copies the aligned source piece for <unk>."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mtserve.engine.translator import Translator
from mtserve.model.alignment import align, alignment_layer, cross_attention
from mtserve.model.checkpoint import load_model
from mtserve.model.options import SearchOptions

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tiny(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return make_marian(tmp_path_factory.mktemp("align"), seed=7, decoder_layers=2, tokenizer=True)


def test_weights_equal_transformers_cross_attentions(tiny: tuple[Path, Any], helpers: Any) -> None:
    path, hf = tiny
    config, model = load_model(path, device="cpu", dtype="float32")
    [source] = helpers.random_sources(1, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                      eos_id=config.eos_token_id, seed=3)
    outputs = [[5, 9, 11, 4], [7, 7]]
    ours = cross_attention(model, source, outputs)
    hf.set_attn_implementation("eager")  # the one that returns attention weights
    assert alignment_layer(model) == 1  # the last of two
    for output, weights in zip(outputs, ours, strict=True):
        decoder_inputs = torch.tensor([[config.decoder_start_token_id, *output[:-1]]])
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([source]), decoder_input_ids=decoder_inputs, output_attentions=True)
        reference = out.cross_attentions[1][0].mean(dim=0)  # (T, S): heads averaged
        torch.testing.assert_close(weights, reference, atol=1e-5, rtol=1e-4)


def test_the_engine_aligns_its_own_hypotheses(tiny: tuple[Path, Any], helpers: Any) -> None:
    path, _ = tiny
    translator = Translator.load(path, device="cpu", dtype="float32", pack=False)
    config = translator.config
    sources = helpers.random_sources(6, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=4)
    options = SearchOptions(beam_size=3, num_hypotheses=2, max_length=12)
    plain = translator.generate(sources, options)
    aligned = translator.generate(sources, options, align=True)
    for source, ours, without in zip(sources, aligned, plain, strict=True):
        assert [h.token_ids for h in ours] == [h.token_ids for h in without]  # aligning changes no result
        returned = ours[: options.num_hypotheses]  # the ones a caller gets are aligned
        assert [h.alignment for h in returned] == align(translator.model, source, [h.token_ids for h in returned])
        assert all(len(h.alignment) == len(h.token_ids) for h in returned)


def test_a_hand_checked_sentence_on_the_bundled_model() -> None:
    translator = Translator.load_default(device="cpu")
    [result] = translator.translate(["Das Haus ist klein."], beam_size=4, return_alignments=True)
    assert result.source_tokens == ["▁Das", "▁Haus", "▁ist", "▁klein", ".", "</s>"]
    assert translator.tokenizer.target_tokens(result.token_ids) == ["▁The", "▁house", "▁is", "▁small", "."]
    # The → Das, house → Haus, is → ist, small → klein; the full stop looks at </s>, as stops often do.
    assert result.alignment[:4] == [0, 1, 2, 3]


def test_replace_unknowns_copies_the_aligned_source_piece() -> None:
    translator = Translator.load_default(device="cpu")
    text = "Ærøskøbing ist schön."  # Æ and ø are not in the bundled vocabulary
    [plain] = translator.translate([text], beam_size=4)
    [replaced] = translator.translate([text], beam_size=4, replace_unknowns=True)
    [aligned] = translator.translate([text], beam_size=4, return_alignments=True)
    tokens = translator.tokenizer.target_tokens(aligned.token_ids)
    unknowns = [i for i, token in enumerate(tokens) if token == "<unk>"]
    assert unknowns and "Æ" not in plain.text  # decode drops <unk>
    expected = [aligned.source_tokens[aligned.alignment[i]] for i in unknowns]
    assert all(piece.strip("▁") in replaced.text for piece in expected)
    assert replaced.token_ids == plain.token_ids  # the same decoding, another rendering
