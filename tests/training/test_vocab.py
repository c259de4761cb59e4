"""Digit splitting in new vocabularies (mtserve.training.vocab)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm

from mtserve.training.vocab import DIGITS, train_vocab

# Numbers repeat often enough that an unsplit vocabulary would learn "▁2023" or "12" as pieces; 6, 8, 9 and
# 0 outside "2023"/"100" never occur, and must be pieces all the same.
LINES = ["Ich habe 12 Bücher und 345 Stifte im Jahr 2023 gekauft.", "The cat sat on the mat 77 times in 2023.",
         "Es kostet 100 Euro.", "Das sind 12 Äpfel.", "Wir fahren morgen mit dem Zug nach Hamburg.",
         "Please close the window before you leave the room.", "Der Hund schläft unter dem Tisch.",
         "Where is the nearest railway station?", "Die Besprechung wurde auf Donnerstag verschoben.",
         "She reads a book every week and writes letters to her friends."] * 40


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "train.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def _pieces(vocab_dir: Path, text: str) -> list[str]:
    return spm.SentencePieceProcessor(model_file=str(vocab_dir / "source.spm")).encode(text, out_type=str)


def test_new_vocabularies_split_digits_and_hold_all_ten(text: Path, tmp_path: Path):
    vocab_dir = train_vocab([text], tmp_path / "vocab", size=100, threads=1)
    vocab = json.loads((vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    assert all(digit in vocab for digit in DIGITS)
    assert not any(len(piece.strip("▁")) > 1 and any(c.isdigit() for c in piece) for piece in vocab)
    pieces = _pieces(vocab_dir, "Im Jahr 2023 kostet es 96 Euro")
    assert "<unk>" not in pieces
    assert [p for p in pieces if p.strip("▁").isdigit()] == ["2", "0", "2", "3", "9", "6"]


def test_split_digits_can_be_turned_off(text: Path, tmp_path: Path):
    vocab_dir = train_vocab([text], tmp_path / "vocab", size=100, threads=1, split_digits=False)
    pieces = _pieces(vocab_dir, "Im Jahr 2023")
    assert any(len(p.strip("▁")) > 1 and p.strip("▁").isdigit() for p in pieces)
