"""Copy augmentation: extra training pairs that teach the model to carry numbers and names over unchanged.

A small model trained on a dictionary and software strings sees few numbers and names, and those it sees
are always the same ones ("2", "Debian"); faced with "0171 234567" or "Jana" it paraphrases them. Two
kinds of extra pairs, all marked ``augmented`` in ``train.source`` and only ever added to ``train``:

- **Substitution**: a training pair whose two sides contain the same plain digit strings (as multisets)
  or the same known names gets a copy with each of those replaced consistently on both sides by a random
  one. Only digit strings that stand alone are touched (``3.5``/``3,5``, ``14:30``, ``v2``, ``2nd`` are
  not plain: German and English write decimals and thousands differently, so such forms are not copied
  verbatim). A replacement keeps the rough shape of the original: a year stays a year, a one- or
  two-digit number stays small (it may be a day or an ordinal: ``am 5. Mai`` / ``on 5 May``), longer
  numbers get as many digits. Numbers that name a thing rather than count (``GPL 2``, ``version 3``,
  ``Python 3``) are left alone. Names are replaced within their kind (first name, surname, city) from
  lists of names written the same in German and English (so no ``München``/``Munich``).
- **Templates**: a few dozen German/English sentence templates around numbers in formats the data
  hardly has (phone numbers ``0171 234567``, times ``14:30``, years, prices, room and house numbers,
  flight numbers) and names, filled with random values.

Everything is drawn from one seeded generator over the input in its given order, so the same corpus and
seed give the same pairs. An augmented pair whose German side would hash into dev or test
(:func:`.data.split_of`) is dropped, so no augmented German sentence can equal a dev or test one.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable

from .data import split_of

FIRST_NAMES = (
    "Anna", "Maria", "Laura", "Julia", "Sarah", "Lisa", "Lena", "Sophie", "Emma", "Mia", "Hannah", "Lea", "Clara",
    "Paula", "Emily", "Olivia", "Charlotte", "Alice", "Helen", "Nina", "Eva", "Petra", "Sabine", "Monika", "Jana",
    "Thomas", "Michael", "Peter", "Andreas", "Stefan", "Markus", "Daniel", "Martin", "Frank", "Tim", "Tom",
    "Paul", "Lukas", "Jonas", "Felix", "David", "John", "James", "Robert", "William", "Richard",
    "George", "Oliver", "Harry", "Leon", "Ben", "Finn", "Noah", "Elias", "Klaus", "Jürgen", "Uwe", "Dirk",
    "Karin", "Ursula", "Susan", "Linda", "Karen", "Kevin", "Brian", "Steven", "Anton", "Otto", "Emil", "Greta",
)
LAST_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
    "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann", "Braun", "Krüger",
    "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner", "Krause", "Meier", "Lehmann", "Schmid", "Schulze",
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Taylor", "Clark", "Walker",
    "Wright", "Thompson", "White", "Harris", "Cooper", "Evans", "Turner", "Baker", "Kowalski", "Novak",
)
CITIES = (
    "Berlin", "Hamburg", "Frankfurt", "Stuttgart", "Dresden", "Leipzig", "Bremen", "Dortmund", "Düsseldorf",
    "Bonn", "Mainz", "Kiel", "Potsdam", "Freiburg", "Heidelberg", "Münster", "Augsburg", "Regensburg", "Ulm",
    "Karlsruhe", "London", "Paris", "Madrid", "Amsterdam", "Oslo", "Stockholm", "Boston", "Chicago", "Sydney",
    "Toronto", "Dublin", "Edinburgh", "Manchester", "Liverpool", "Salzburg", "Graz", "Bern", "Basel", "Innsbruck",
    "Rostock", "Erfurt", "Jena", "Weimar", "Trier", "Passau",
)
# Left out on purpose: first names that are also UI words in both languages ("Max", "Jan", "Jack", "Mark"
# as in maximum, January, audio jack), which would turn "Max" / "Max" pairs into nonsense.
NAMES = {"first": FIRST_NAMES, "last": LAST_NAMES, "city": CITIES}
_KIND_OF = {name: kind for kind, names in NAMES.items() for name in names}
_NAME = re.compile(r"\b(" + "|".join(sorted(_KIND_OF, key=len, reverse=True)) + r")\b")
# A plain number: digits not glued to letters, and not part of 3.5, 3,5, 14:30, 1/2, 2023-05-01.
_NUMBER = re.compile(r"(?<![\w.,:/-])\d{1,9}(?![\w]|[.,:/-]\d)")
# Numbers that name something rather than count it ("GPL 2", "version 3", "Python 3", "IPv 6") stay.
_NAMING = re.compile(r"(?:version|v|GPL|LGPL|Python|Qt|GTK|KDE|Plasma|Windows|Linux|IPv|C\+\+|Level|Stufe)\s*$",
                     re.IGNORECASE)

MONTHS = (("Januar", "January"), ("Februar", "February"), ("März", "March"), ("April", "April"), ("Mai", "May"),
          ("Juni", "June"), ("Juli", "July"), ("August", "August"), ("September", "September"),
          ("Oktober", "October"), ("November", "November"), ("Dezember", "December"))

# (German, English); fields: {first} {last} {city} {n} (2–99) {big} (100–99999) {year} {time} {phone} {room}
# {house} {price} {flight} {day} {month_de}/{month_en} (a month in the language of the side).
TEMPLATES = (
    ("Meine Telefonnummer ist {phone}.", "My phone number is {phone}."),
    ("Bitte rufen Sie {first} unter {phone} an.", "Please call {first} at {phone}."),
    ("Sie erreichen mich unter {phone}.", "You can reach me at {phone}."),
    ("Der Zug fährt um {time} ab.", "The train leaves at {time}."),
    ("Wir treffen uns um {time} in Raum {room}.", "We are meeting at {time} in room {room}."),
    ("Die Besprechung beginnt um {time}.", "The meeting starts at {time}."),
    ("Der Flug {flight} landet um {time} in {city}.", "Flight {flight} lands in {city} at {time}."),
    ("{first} wohnt in {city}.", "{first} lives in {city}."),
    ("{first} {last} wurde {year} in {city} geboren.", "{first} {last} was born in {city} in {year}."),
    ("Im Jahr {year} zog {first} nach {city}.", "In {year}, {first} moved to {city}."),
    ("{first} {last} ist {n} Jahre alt.", "{first} {last} is {n} years old."),
    ("Ich habe {n} Bücher gekauft.", "I bought {n} books."),
    ("Sie hat {n} Kinder.", "She has {n} children."),
    ("Das kostet {price} Euro.", "That costs {price} euros."),
    ("Die Rechnung beträgt {big} Euro.", "The invoice amounts to {big} euros."),
    ("Das Haus hat die Nummer {house}.", "The house is number {house}."),
    ("Mein Zimmer ist Zimmer {room}.", "My room is room {room}."),
    ("Ich wohne in der Hauptstraße {house}.", "I live at Hauptstraße {house}."),
    ("Die Stadt hat {big} Einwohner.", "The town has {big} inhabitants."),
    ("Das Paket wiegt {n} Kilogramm.", "The parcel weighs {n} kilograms."),
    ("Der Termin ist am {day}. {month_de} {year}.", "The appointment is on {day} {month_en} {year}."),
    ("{first} kommt am {day}. {month_de} nach {city}.", "{first} is coming to {city} on {day} {month_en}."),
    ("Herr {last} ist bis {time} im Büro.", "Mr {last} is in the office until {time}."),
    ("Frau {last} hat die Durchwahl {room}.", "Ms {last} has extension {room}."),
    ("{first} und {first2} fahren nach {city}.", "{first} and {first2} are going to {city}."),
    ("Die Bestellnummer lautet {big}.", "The order number is {big}."),
    ("Es sind noch {n} Plätze frei.", "There are {n} seats left."),
    ("Der Bus Nummer {n} fährt nach {city}.", "Bus number {n} goes to {city}."),
    ("Grüße aus {city}, {first}", "Greetings from {city}, {first}"),
    ("Ich heiße {first} {last}.", "My name is {first} {last}."),
)


def _replacement_number(original: str, rng: random.Random) -> str:
    """A random plain number of the same rough shape as ``original``."""
    digits = len(original)
    if digits == 4 and 1000 <= int(original) <= 2099:  # most likely a year
        return str(rng.randint(1800, 2035))
    if digits <= 2:
        return str(rng.randint(1, 31) if rng.random() < 0.5 else rng.randint(1, 99))
    if original.startswith("0") and digits >= 5:  # keeps a leading zero: an area code or a postcode
        return "0" + "".join(rng.choice("0123456789") for _ in range(digits - 1))
    low = 10 ** (digits - 1)
    return str(rng.randint(low, 10 * low - 1))


def _substitute(text: str, pattern: re.Pattern[str], mapping: dict[str, str]) -> str:
    return pattern.sub(lambda m: mapping.get(m.group(), m.group()), text)


def substitution_variant(german: str, english: str, rng: random.Random) -> tuple[str, str] | None:
    """The pair with its shared plain numbers and known names replaced consistently, or ``None`` if it has none.

    Numbers must occur equally often on both sides (else the two sides do not say the same numbers, or a
    number is written out on one side); a name must occur on both sides.
    """
    de_numbers, en_numbers = Counter(_NUMBER.findall(german)), Counter(_NUMBER.findall(english))
    numbers = set(de_numbers) if de_numbers == en_numbers else set()
    numbers -= {m.group() for text in (german, english) for m in _NUMBER.finditer(text)
                if _NAMING.search(text, 0, m.start())}
    names = set(_NAME.findall(german)) & set(_NAME.findall(english))
    if not numbers and not names:
        return None
    number_map = {n: _replacement_number(n, rng) for n in sorted(numbers)}
    name_map = {}
    for name in sorted(names):
        choices = [c for c in NAMES[_KIND_OF[name]] if c != name]
        name_map[name] = rng.choice(choices)
    de = _substitute(_substitute(german, _NUMBER, number_map), _NAME, name_map)
    en = _substitute(_substitute(english, _NUMBER, number_map), _NAME, name_map)
    if (de, en) == (german, english):
        return None
    return de, en


def _fields(rng: random.Random) -> dict[str, str]:
    month = rng.randrange(12)
    first, first2 = rng.sample(FIRST_NAMES, 2)
    return {
        "first": first, "first2": first2, "last": rng.choice(LAST_NAMES), "city": rng.choice(NAMES["city"]),
        "n": str(rng.randint(2, 99)), "big": str(rng.randint(100, 99999)), "year": str(rng.randint(1900, 2035)),
        "time": f"{rng.randint(0, 23)}:{rng.choice(range(0, 60, 5)):02d}",
        "phone": rng.choice(("0171", "0151", "0160", "030", "040", "089", "0221", "0711")) + " "
        + str(rng.randint(100000, 9999999)),
        "room": str(rng.randint(1, 9)) + f"{rng.randint(0, 30):02d}",
        "house": str(rng.randint(1, 200)) + rng.choice(("", "", "", "a", "b")),
        "price": str(rng.randint(2, 999)), "flight": rng.choice(("LH", "BA", "EW", "KL", "AF")) + str(
            rng.randint(100, 9999)),
        "day": str(rng.randint(1, 28)), "month_de": MONTHS[month][0], "month_en": MONTHS[month][1],
    }


def templated(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` filled template pairs, templates taken in turn."""
    out = []
    for i in range(count):
        german, english = TEMPLATES[i % len(TEMPLATES)]
        fields = _fields(rng)
        out.append((german.format(**fields), english.format(**fields)))
    return out


def augment(train: Iterable[tuple[str, str]], seed: int = 1, max_substitutions: int = 60_000,
            templates: int = 6_000) -> list[tuple[str, str]]:
    """Augmented pairs for ``train`` (the real training pairs, in corpus order); see the module docstring.

    At most ``max_substitutions`` substitution variants (one per eligible pair; a random subset of them
    when there are more) and ``templates`` templated pairs; deduplicated against ``train`` and each other.
    """
    rng = random.Random(seed)
    train = list(train)
    seen = set(train)
    variants = []
    for german, english in train:
        variant = substitution_variant(german, english, rng)
        if variant is not None:
            variants.append(variant)
    if len(variants) > max_substitutions:
        variants = rng.sample(variants, max_substitutions)
    out = []
    for pair in variants + templated(templates, rng):
        if pair in seen or split_of(pair[0]) != "train":
            continue
        seen.add(pair)
        out.append(pair)
    return out
