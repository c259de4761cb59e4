"""``.desktop`` files' localized keys (``Name[de]``, ``Comment[de]``…) as German–English pairs.

A desktop entry (freedesktop.org Desktop Entry Specification) holds ``Key=value`` lines in groups; a
localized value is ``Key[de]=…`` next to the untranslated ``Key=…``, which by convention is English. The
pairs are ``Name``, ``GenericName``, ``Comment`` and ``X-GNOME-FullName`` of the main group and of each
action group (``[Desktop Action …]``). ``Keywords`` are left out: they are ``;``-separated lists whose
German items do not correspond one-to-one to the English ones. ``Key[de_DE]`` is used when there is no
``Key[de]``. The licence is that of the package that ships the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

PATTERN = re.compile(r"usr/share/applications/(?:[^/]+/)*[^/]+\.desktop")
KEYS = ("Name", "GenericName", "Comment", "X-GNOME-FullName")
_ENTRY = re.compile(r"^\s*([A-Za-z0-9-]+)(?:\[([^\]]+)\])?\s*=\s*(.*?)\s*$")


def parse(text: str) -> dict[str, dict[str, str]]:
    """Group → {``Key`` or ``Key[locale]``: value}, escapes (``\\s``, ``\\n``, ``\\t``, ``\\\\``) decoded."""
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("[") and line.rstrip().endswith("]"):
            current = groups.setdefault(line.strip()[1:-1], {})
            continue
        match = _ENTRY.match(line)
        if current is None or match is None or line.lstrip().startswith("#"):
            continue
        key, locale, value = match.groups()
        current[f"{key}[{locale}]" if locale else key] = _unescape(value)
    return groups


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"s": " ", "n": " ", "t": " ", "r": " "}.get(m.group(1), m.group(1)), value)


def pairs(text: str) -> Iterator[tuple[str, str]]:
    """(German, English) pairs of one desktop file."""
    for name, entries in parse(text).items():
        if name != "Desktop Entry" and not name.startswith("Desktop Action"):
            continue
        for key in KEYS:
            english = entries.get(key)
            german = entries.get(f"{key}[de]") or entries.get(f"{key}[de_DE]")
            if english and german:
                yield german, english
