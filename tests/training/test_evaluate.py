"""The evaluation's number check and its everyday-sentence set."""

from __future__ import annotations

from mtserve.training.evaluate import numbers_kept, read_everyday


def test_numbers_kept_counts_outputs_with_every_digit_group_of_their_source() -> None:
    sources = ["Meine Nummer ist 0171 234567.", "Es kostet 3,5 Euro.", "Zimmer 104 und 104.", "Guten Tag!",
               "Am 3. Mai 2024."]
    outputs = ["My number is 2135.", "It costs 3.5 euros.", "Rooms 104 and 105.", "Hello!", "On May 3, 2024."]
    # The phone number is lost, the decimal separator may change, 104 twice needs 104 twice.
    assert numbers_kept(sources, outputs) == (2, 4)


def test_the_everyday_set_has_forty_sentences_with_references() -> None:
    german, english = read_everyday()
    assert len(german) == len(english) == 40 and all(german) and all(english)
    assert sum(any(c.isdigit() for c in s) for s in german) >= 10  # numbers, dates, times, prices
