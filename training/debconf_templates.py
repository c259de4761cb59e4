"""debconf templates' translated fields (``Description-de.UTF-8``, ``Choices-de.UTF-8``) as pairs.

A package's ``DEBIAN/templates`` (control archive) holds the questions debconf asks at install time, with
translations merged in by po-debconf: ``Description`` (a short line and an extended text in the
Description format of package descriptions) and ``Choices`` (a comma-separated list), each with
``-de.UTF-8`` variants. The descriptions are aligned like DDTP descriptions (:mod:`.ddtp`); choices item
by item when both lists have as many items (``\\,`` is an escaped comma). The licence is the package's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from . import ddtp, debs

CONTROL_FILE = "templates"
_CHOICE_SPLIT = re.compile(r"(?<!\\),\s*")


def descriptions(text: str, package: str) -> Iterator[tuple[ddtp.Description, ddtp.Description]]:
    """(German, English) descriptions of the translated templates in a ``templates`` file."""
    for fields in debs.paragraphs(text):
        german = fields.get("Description-de.UTF-8") or fields.get("Description-de")
        english = fields.get("Description")
        if german and english:
            yield ddtp.parse_description(package, german), ddtp.parse_description(package, english)


def choices(text: str) -> Iterator[tuple[str, str]]:
    """(German, English) choice labels, where both lists have as many items."""
    for fields in debs.paragraphs(text):
        german = fields.get("Choices-de.UTF-8") or fields.get("Choices-de")
        english = fields.get("Choices")
        if not german or not english:
            continue
        de_items, en_items = _CHOICE_SPLIT.split(german.strip()), _CHOICE_SPLIT.split(english.strip())
        if len(de_items) == len(en_items):
            for de, en in zip(de_items, en_items, strict=True):
                yield de.replace("\\,", ","), en.replace("\\,", ",")
