"""Vocabulary shortlists: CTranslate2's vmap format both ways, the table built from a corpus, and decoding
restricted to the shortlist (nothing outside it, the same results when it allows everything)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from mtserve.engine.translator import Translator
from mtserve.model.options import SearchOptions
from mtserve.model.shortlist import VMAP_FILE, Shortlist
from mtserve.training.shortlist import build

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SOURCE = {"▁Haus": 0, "▁das": 1, "▁rote": 2, "▁Auto": 3, "2": 4}
TARGET = {"</s>": 0, "▁the": 1, "▁house": 2, "▁red": 3, "▁car": 4, "2": 5, "▁building": 6}


def test_a_vocabulary_map_reads_and_writes_ctranslate2s_format(tmp_path: Path) -> None:
    path = tmp_path / VMAP_FILE
    path.write_text("\t</s> ▁the\n▁Haus\t▁house ▁building\n▁rote ▁Auto\t▁red ▁car\n▁unseen\t▁house\n"
                    "▁Auto\t▁car ▁notatoken\n", encoding="utf-8")
    shortlist = Shortlist.load(path, SOURCE, TARGET)
    assert shortlist.always == {0, 1}
    assert shortlist.entries == {(0,): {2, 6}, (2, 3): {3, 4}, (3,): {4}}  # unknown tokens are skipped
    assert shortlist.allowed([1, 0]) == {0, 1, 2, 6}
    assert shortlist.allowed([2, 3], extra=[5]) == {0, 1, 3, 4, 5}  # the bigram, the unigram, the extra
    copy = Shortlist.load(shortlist.write(tmp_path / "again.txt", list(SOURCE), list(TARGET)), SOURCE, TARGET)
    assert copy == shortlist
    path.write_text("▁Haus ▁house\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vmap.txt:1: expected 'source tokens<TAB>target tokens'"):
        Shortlist.load(path, SOURCE, TARGET)


def test_the_table_ranks_each_source_pieces_translations_above_the_frequent_pieces() -> None:
    """'the' occurs with everything; Dice still ranks 'house' first for 'Haus', and copies stay allowed."""
    corpus = [([1, 0], [1, 2]), ([1, 2, 3], [1, 3, 4]), ([1, 3], [1, 4]), ([0, 4], [2, 5]), ([1, 0], [1, 2])]
    shortlist = build(corpus, 5, 7, top=1, frequent=1, identical={4: 5, 2: 6}, always=[0])
    assert shortlist.entries[(0,)] == {2} and shortlist.entries[(3,)] == {4} and shortlist.entries[(4,)] == {5}
    assert shortlist.entries[(2,)] == {3, 6}  # its best, and the same token on the target side (a copy)
    assert shortlist.always == {1, 0}  # the most frequent target piece, and what was asked for


@pytest.fixture(scope="module")
def model_dir(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shortlist")
    make_marian(path, tokenizer=True, init_std=0.5, eos_boost=1.0, seed=5)
    return path


def _vmap(model_dir: Path, allowed: set[int] | None) -> None:
    """A map allowing `allowed` target ids always (None: every id), with no per-source entries."""
    translator = Translator.load(model_dir, device="cpu")
    names = translator.tokenizer.vocabulary("target")
    ids = set(names.values()) if allowed is None else allowed
    by_id = {i: token for token, i in names.items()}
    (model_dir / VMAP_FILE).write_text("\t" + " ".join(by_id[i] for i in sorted(ids)) + "\n", encoding="utf-8")


def test_a_shortlist_of_everything_decodes_as_no_shortlist(model_dir: Path, helpers: Any) -> None:
    _vmap(model_dir, None)
    plain, listed = Translator.load(model_dir), Translator.load(model_dir, shortlist=True)
    config = plain.config
    sources = helpers.random_sources(8, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=2)
    for options in (SearchOptions(max_length=16), SearchOptions(beam_size=3, max_length=16)):
        ours = listed.generate(sources, options)
        reference = plain.generate(sources, options)
        assert [h[0].token_ids for h in ours] == [h[0].token_ids for h in reference]
        torch.testing.assert_close(torch.tensor([h[0].score for h in ours]),
                                   torch.tensor([h[0].score for h in reference]), atol=1e-4, rtol=1e-4)


def test_nothing_outside_the_shortlist_is_produced(model_dir: Path, helpers: Any) -> None:
    plain = Translator.load(model_dir)
    config = plain.config
    sources = helpers.random_sources(8, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=3)
    produced = {t for h in plain.generate(sources, SearchOptions(max_length=16)) for t in h[0].token_ids}
    allowed = set(sorted(produced)[: len(produced) // 2]) | {config.eos_token_id}  # half of what it says
    _vmap(model_dir, allowed)
    listed = Translator.load(model_dir, shortlist=True)
    for options in (SearchOptions(max_length=16), SearchOptions(beam_size=2, max_length=16)):
        outputs = {t for h in listed.generate(sources, options) for t in h[0].token_ids}
        assert outputs and outputs <= allowed


def test_a_model_without_a_map_decodes_its_whole_vocabulary(make_marian: Any, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    make_marian(tmp_path, tokenizer=True)
    with caplog.at_level(logging.WARNING, logger="mtserve.engine.translator"):
        translator = Translator.load(tmp_path, shortlist=True)
    assert translator.model.shortlist is None
    assert f"has no {VMAP_FILE}: decoding over the whole vocabulary" in caplog.text
