"""Copy augmentation (mtserve.training.augment): consistent on both sides, reproducible, train only."""

from __future__ import annotations

import random
import re

from mtserve.training import augment
from mtserve.training.data import split_of

NUMBER = re.compile(r"\d+")


def test_shared_numbers_are_replaced_consistently_on_both_sides():
    rng = random.Random(1)
    german, english = augment.substitution_variant("Er hat 3 Hunde und 1998 ein Haus gekauft.",
                                                   "He has 3 dogs and bought a house in 1998.", rng) or ("", "")
    de_numbers, en_numbers = NUMBER.findall(german), NUMBER.findall(english)
    assert sorted(de_numbers) == sorted(en_numbers) and de_numbers != ["3", "1998"]
    year = next(n for n in de_numbers if len(n) == 4)
    assert 1800 <= int(year) <= 2035  # a year stays a year
    assert german.count(year) == 1 and english.count(year) == 1


def test_decimals_times_and_glued_digits_are_not_touched():
    rng = random.Random(1)
    assert augment.substitution_variant("Es kostet 3,50 Euro.", "It costs 3.50 euros.", rng) is None
    assert augment.substitution_variant("Um 14:30 Uhr.", "At 14:30.", rng) is None
    assert augment.substitution_variant("Version v2 und 2. Platz", "version v2 and 2nd place", rng) is None
    # Different numbers on the two sides (one written out): nothing is substituted.
    assert augment.substitution_variant("Ich habe drei Katzen und 2 Hunde.", "I have 3 cats and 2 dogs.", rng) is None


def test_known_names_are_replaced_by_names_of_the_same_kind():
    rng = random.Random(2)
    german, english = augment.substitution_variant("Anna Schmidt wohnt in Berlin.",
                                                   "Anna Schmidt lives in Berlin.", rng) or ("", "")
    first, last, *_ = english.split()
    city = english.rstrip(".").split()[-1]
    assert first in augment.FIRST_NAMES and last in augment.LAST_NAMES and city in augment.CITIES
    assert german == f"{first} {last} wohnt in {city}."
    assert (first, last, city) != ("Anna", "Schmidt", "Berlin")
    # A name on one side only is not substituted.
    assert augment.substitution_variant("Anna kommt.", "She is coming.", rng) is None


def test_templates_fill_the_same_values_on_both_sides():
    for german, english in augment.templated(len(augment.TEMPLATES) * 3, random.Random(3)):
        assert "{" not in german + english
        assert sorted(NUMBER.findall(german)) == sorted(NUMBER.findall(english)), (german, english)


def test_augmentation_is_reproducible_and_never_lands_in_dev_or_test():
    train = [("Ich habe 12 Bücher.", "I have 12 books."), ("Anna wohnt in Hamburg.", "Anna lives in Hamburg."),
             ("Guten Morgen!", "Good morning!")] * 3
    first = augment.augment(train, seed=7, templates=500)
    assert first == augment.augment(train, seed=7, templates=500)
    assert first != augment.augment(train, seed=8, templates=500)
    assert all(split_of(german) == "train" for german, _ in first)
    assert not set(first) & set(train)
    assert len(set(first)) == len(first)
    assert 400 < len(first) <= 502  # the templates, minus those hashed to dev/test, plus two variants


def test_cap_on_substitution_variants():
    train = [(f"Ich habe {i} Bücher.", f"I have {i} books.") for i in range(100)]
    assert len(augment.augment(train, seed=1, max_substitutions=10, templates=0)) <= 10


def test_numbers_that_name_things_stay():
    rng = random.Random(4)
    assert augment.substitution_variant("Lizenziert unter GPL 2", "Licensed under GPL 2", rng) is None
    german, english = augment.substitution_variant("Python 3 braucht 12 MB.", "Python 3 needs 12 MB.", rng) or ("", "")
    assert german.startswith("Python 3 braucht ") and english.startswith("Python 3 needs ")
    assert german.split()[3] == english.split()[3] != "12"
