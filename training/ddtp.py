"""Debian package descriptions and their German translations (DDTP) as sentence pairs.

``apt-get update -o Acquire::Languages=de,en`` leaves ``*_i18n_Translation-de.lz4`` and ``…-en.lz4`` in
``/var/lib/apt/lists``. Each record has ``Package``, ``Description-md5`` (of the English original) and
``Description-de`` or ``Description-en``: the first line is the short description (title), the continuation
lines start with a space, `` .`` separates paragraphs, lines with two or more leading spaces are verbatim
(preformatted), and `` * `` / `` - `` / `` + `` / `` o `` start bullet items (Debian Policy 5.6.13).

German and English are aligned by ``Description-md5``, so a translation is paired with exactly the English
text it was made from. Pairs, from coarse to fine:

- the **titles**;
- **paragraphs**, only when both descriptions have as many (a translator who merged or split paragraphs
  leaves no safe alignment, and the description is dropped except for its title);
- inside a paragraph pair, **blocks** (flowing text, each bullet item, verbatim lines) when both have
  the same sequence of block kinds, otherwise the paragraph is one text block;
- a text block pair is split into **sentences** (pysbd, German rules for German, English rules for
  English) and paired sentence by sentence when the counts match; when they do not, the block pair is
  kept whole if it is short (≤ ``max_block_words`` words a side: still a good pair, only not one
  sentence), else dropped (a long block whose sentences do not line up is likely to be a loose
  translation). See :mod:`.alignment`.
- bullet items are units as they are; a block of consecutive verbatim lines is paired line by line when
  its lines correspond (a table of options), else like a text block (:mod:`.alignment`).

**Licence.** The English descriptions come from each package's ``debian/control``, under that package's
licence. The German translations were contributed by volunteers through the DDTP/DDTSS
(https://ddtp.debian.org, https://www.debian.org/international/l10n/ddtp) and are distributed by Debian in
its ``main`` archive, whose content must be free under the Debian Free Software Guidelines; the DDTP
publishes no licence statement of its own for them (none could be found), so the usual reading is that a
translation is under the licence of the package whose description it translates. Recorded as such in
``sources.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import alignment, debs

LICENCE = ("per package: the licence of the package whose description is translated (descriptions from "
           "debian/control; German translations contributed through ddtp.debian.org / DDTSS and shipped "
           "in Debian main; no separate licence statement published by the DDTP)")

_BULLET = re.compile(r"^\s*([*+o-])\s+(?=\S)")


@dataclass
class Description:
    """One description: its title and its paragraphs, each a list of (kind, text) blocks."""

    package: str
    title: str
    paragraphs: list[list[tuple[str, str]]] = field(default_factory=list)


def parse_description(package: str, value: str) -> Description:
    """A ``Description-xx`` field value (first line and continuation lines) as a :class:`Description`."""
    lines = value.split("\n")
    description = Description(package, lines[0].strip())
    paragraph: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw[1:] if raw.startswith(" ") else raw.lstrip("\t")
        if line.strip() == ".":
            if paragraph:
                description.paragraphs.append(paragraph)
            paragraph = []
            continue
        bullet = _BULLET.match(line)
        if bullet:
            paragraph.append(("bullet", line[bullet.end():].strip()))
        elif line.startswith(" ") and not (paragraph and paragraph[-1][0] == "bullet"):
            # Consecutive verbatim lines are one block: they may be a table, or prose indented and wrapped.
            if paragraph and paragraph[-1][0] == "verbatim":
                paragraph[-1] = ("verbatim", f"{paragraph[-1][1]}\n{line.strip()}")
            else:
                paragraph.append(("verbatim", line.strip()))
        elif paragraph and paragraph[-1][0] in ("text", "bullet"):
            # A continuation line; for a bullet item that is an indented line under it.
            kind, text = paragraph[-1]
            paragraph[-1] = (kind, join_lines(text, line.strip()))
        else:
            paragraph.append(("text", line.strip()))
    if paragraph:
        description.paragraphs.append(paragraph)
    return description


# A line that ends in a hyphen is a word broken at its hyphen ("Bus-" / "Prüfwerkzeug"), unless the next
# word is a conjunction: then the hyphen marks a shared word part ("Ein- und Ausgabe", "pre- and post-").
_SUSPENDED = {"und", "oder", "bzw.", "sowie", "als", "wie", "and", "or", "to", "nor"}


def join_lines(text: str, line: str) -> str:
    """``text`` continued by the next wrapped ``line``."""
    if text.endswith("-") and len(text) > 1 and text[-2].isalnum() and line.split(" ", 1)[0] not in _SUSPENDED:
        return text + line
    return f"{text} {line}"


def read_translations(path: Path, language: str) -> dict[str, Description]:
    """``Description-md5`` → description, from one Translation-xx list (first record of an md5 wins)."""
    found: dict[str, Description] = {}
    for fields in debs.paragraphs(debs.read_index(path)):
        value = fields.get(f"Description-{language}")
        md5 = fields.get("Description-md5")
        if value is None or md5 is None or md5 in found:
            continue
        found[md5] = parse_description(fields.get("Package", ""), value)
    return found


def translation_lists(language: str, lists_dir: Path = debs.APT_LISTS) -> list[Path]:
    """apt's Translation-xx lists for ``language`` (main, updates, security)."""
    return debs.apt_lists(f"i18n_Translation-{language}", lists_dir)


def aligned(german: Iterable[Path], english: Iterable[Path]) -> list[tuple[Description, Description]]:
    """(German, English) descriptions with the same ``Description-md5``, in the German lists' order."""
    en: dict[str, Description] = {}
    for path in english:
        for md5, description in read_translations(path, "en").items():
            en.setdefault(md5, description)
    de: dict[str, Description] = {}
    for path in german:
        for md5, description in read_translations(path, "de").items():
            de.setdefault(md5, description)
    return [(description, en[md5]) for md5, description in de.items() if md5 in en]


Stats = alignment.Stats


def pairs(descriptions: Iterable[tuple[Description, Description]], max_block_words: int = alignment.MAX_BLOCK_WORDS,
          stats: Stats | None = None) -> Iterator[tuple[str, str, str]]:
    """(german, english, package) segment pairs of aligned descriptions, as described above."""
    stats = stats if stats is not None else Stats()
    for de, en in descriptions:
        stats.descriptions += 1
        if de.title and en.title:
            yield de.title, en.title, en.package
        if len(de.paragraphs) != len(en.paragraphs):
            stats.paragraph_mismatch += 1
            continue
        for de_par, en_par in zip(de.paragraphs, en.paragraphs, strict=True):
            if [kind for kind, _ in de_par] != [kind for kind, _ in en_par]:
                stats.block_mismatch += 1
                de_par = [("text", " ".join(text for _, text in de_par))]
                en_par = [("text", " ".join(text for _, text in en_par))]
            for (kind, de_text), (_, en_text) in zip(de_par, en_par, strict=True):
                if kind == "bullet":
                    yield de_text, en_text, en.package
                    continue
                lines = alignment.line_pairs(de_text, en_text) if kind == "verbatim" else None
                if lines is None:
                    lines = alignment.block_pairs(" ".join(de_text.split()), " ".join(en_text.split()),
                                                  max_block_words, stats)
                yield from ((d.strip(), e.strip(), en.package) for d, e in lines)
