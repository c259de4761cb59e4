"""Language detection among the served languages (server/detection.py, py3langid)."""

from __future__ import annotations

from mtserve.server.detection import detect, supported


def test_detects_among_candidates_with_confidence() -> None:
    german = detect("Das Haus ist groß und sehr alt.", ["de", "en"])
    english = detect("The house is big and very old.", ["de", "en"])
    assert german is not None and german.language == "de" and 0.5 < german.confidence <= 1
    assert english is not None and english.language == "en"
    # Restricted to the candidates: French text, only German and English offered, is one of them.
    found = detect("La maison est grande.", ["de", "en"])
    assert found is not None and found.language in ("de", "en")


def test_nothing_to_detect() -> None:
    assert detect("12345 !!", ["de", "en"]) is None
    assert detect("Hallo", []) is None
    assert detect("Hallo", ["xx"]) is None
    assert supported(["de", "en", "xx", "de"]) == ["de", "en"]
