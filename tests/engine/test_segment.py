"""Sentence splitting (server/segment.py, pysbd): German and English abbreviations and ordinals, whitespace."""

from __future__ import annotations

import pytest

from mtserve.engine.segment import rules_for, split_sentences


@pytest.mark.parametrize(("language", "text", "sentences"), [
    ("de", "Dr. Müller kommt am 15. August nach Berlin. Er bleibt z. B. drei Tage.",
     ["Dr. Müller kommt am 15. August nach Berlin.", "Er bleibt z. B. drei Tage."]),
    ("de", "Das ist der 3. Versuch. Wir treffen uns um 10 Uhr.",
     ["Das ist der 3. Versuch.", "Wir treffen uns um 10 Uhr."]),
    ("de", "Er sagte: „Komm!“ Dann ging er.", ["Er sagte: „Komm!“", "Dann ging er."]),
    ("de", "Preis: 3,50 €. Danke.", ["Preis: 3,50 €.", "Danke."]),
    ("en", "Dr. Smith arrived on Aug. 15. He stayed e.g. three days.",
     ["Dr. Smith arrived on Aug. 15.", "He stayed e.g. three days."]),
    ("en", "Mr. Brown paid $3.50. That was cheap.", ["Mr. Brown paid $3.50.", "That was cheap."]),
    ("deu_Latn", "Zeile eins\nZeile zwei", ["Zeile eins", "Zeile zwei"]),
])  # fmt: skip
def test_sentences(language: str, text: str, sentences: list[str]) -> None:
    assert [s for s, _ in split_sentences(text, language)] == sentences


def test_whitespace_is_kept_for_the_join() -> None:
    text = "  Hallo.\n\nWie geht's?   Gut"
    pieces = split_sentences(text, "de")
    assert pieces == [("Hallo.", "\n\n"), ("Wie geht's?", "   "), ("Gut", "")]
    assert "".join(s + after for s, after in pieces) == text.lstrip()


def test_rules_by_language_and_fallback() -> None:
    assert rules_for("de") == rules_for("deu_Latn") == rules_for("de-AT") == "de"
    assert rules_for("xx") == rules_for("") == rules_for("not a tag!") == "en"


def test_blank_and_single() -> None:
    assert split_sentences("   ") == [("", "")]
    assert split_sentences("Ein Satz ohne Ende", "de") == [("Ein Satz ohne Ende", "")]
