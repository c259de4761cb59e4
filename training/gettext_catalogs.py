"""German gettext catalogs (``.mo``) of Debian packages as English → German segment pairs.

A compiled catalog maps each English message (msgid) to its German translation (msgstr); ``msgfmt`` leaves
out untranslated and fuzzy messages, so what a ``.mo`` holds is what the package's translators approved.

- **Which packages**: those that ship ``usr/share/locale/de/LC_MESSAGES/*.mo`` (or LibreOffice's
  ``usr/lib/libreoffice/program/resource/de/LC_MESSAGES/*.mo``), found in the archive's Contents index.
  Packages over ``max_deb_mb`` are skipped (game and data packages of hundreds of MB that hold one small
  catalog); the rest are taken core tools first (:data:`PREFERRED`), then smallest first, until the
  download budget is spent. With the defaults that is nearly every such package in bookworm main.
- **Messages**: the header (empty msgid) and translator-credit messages go; a message context is dropped
  (it only disambiguates); a plural message gives its singular msgid with ``msgstr[0]``, the German
  singular; a German side equal to the English one is left for the cleaner to count and drop.
- **Multi-line messages** (``--help`` texts) are split into lines when both sides have the same number of
  non-empty lines and the lines visibly correspond (:func:`.alignment.line_pairs`: the same option, or
  both lines complete), since those are line-by-line translations; wrapped prose stays whole (its lines
  break at different words in the two languages) and the length filter decides.
- **Licence**: each package's ``usr/share/doc/<pkg>/copyright`` (see :func:`debs.copyright_licences`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from . import alignment, debs

MO_PATTERN = re.compile(
    r"usr/share/locale/de/LC_MESSAGES/[^/]+\.mo|usr/lib/libreoffice/program/resource/de/LC_MESSAGES/[^/]+\.mo"
)

#: Well-translated, widely used catalogs, taken before the rest whatever their size.
PREFERRED = (
    "coreutils", "apt", "dpkg", "tar", "grep", "sed", "gawk", "findutils", "diffutils", "gettext", "gettext-base",
    "bash", "util-linux", "e2fsprogs", "libc-bin", "wget", "gnupg-l10n", "iso-codes", "libreoffice-l10n-de",
    "nautilus", "gedit", "evince", "gnome-control-center-data", "gimp-data", "inkscape", "vlc-l10n",
    "gnome-shell-common", "gtk2.0-common", "libgtk-3-common", "libgtk-4-common", "libglib2.0-data",
    "plasma-workspace-data", "dolphin", "kate5-data", "okular", "konsole", "kmail", "kdevelop-l10n",
)

# Messages that are not text: the translators' names and addresses (GNOME's and KDE's conventions).
CREDITS = {"translator-credits", "translator_credits", "NAME OF TRANSLATORS", "EMAIL OF TRANSLATORS",
           "Your names", "Your emails", "ROLES_OF_TRANSLATORS", "CREDIT_FOR_TRANSLATORS"}


def select(candidates: dict[str, list[str]], sizes: dict[str, int], max_deb_mb: float = 25.0,
           budget_gb: float = 2.5) -> list[str]:
    """Packages to download: preferred first, then smallest first, each ≤ max_deb_mb, all within the budget."""
    limit, budget = max_deb_mb * 1e6, budget_gb * 1e9
    known = [p for p in candidates if p in sizes and sizes[p] <= limit]
    rank = {name: i for i, name in enumerate(PREFERRED)}
    known.sort(key=lambda p: (rank.get(p, len(rank)), sizes[p], p))
    chosen, total = [], 0
    for package in known:
        if total + sizes[package] > budget:
            continue
        chosen.append(package)
        total += sizes[package]
    return chosen


def parse_mo(data: bytes) -> list[tuple[str, str]]:
    """(msgid, msgstr) of a compiled catalog, as described above; header and credits left out.

    The format (GNU gettext manual, "The Format of GNU MO Files"): a magic number that also gives the byte
    order, the number of strings, and two tables of (length, offset) for the originals and translations.
    An original is ``msgctxt EOT msgid [NUL msgid_plural]``, a translation ``msgstr[0] [NUL msgstr[1] …]``.
    """
    if len(data) < 28:
        raise ValueError("not a .mo file: too short")
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        raise ValueError("not a .mo file: bad magic number")
    _revision, count, originals, translations = struct.unpack(order + "4I", data[4:20])
    raw = []
    for i in range(count):
        length, offset = struct.unpack(order + "2I", data[originals + 8 * i:originals + 8 * i + 8])
        t_length, t_offset = struct.unpack(order + "2I", data[translations + 8 * i:translations + 8 * i + 8])
        raw.append((data[offset:offset + length], data[t_offset:t_offset + t_length]))
    charset = "utf-8"
    for original, translation in raw:
        if original == b"":
            found = re.search(rb"charset=([\w.-]+)", translation)
            if found and found.group(1).lower() not in (b"charset", b"utf-8"):
                charset = found.group(1).decode("ascii")
    pairs = []
    for original, translation in raw:
        if not original:
            continue
        msgid = original.split(b"\x04", 1)[-1].split(b"\x00", 1)[0]
        msgstr = translation.split(b"\x00", 1)[0]
        english, german = msgid.decode(charset, "replace"), msgstr.decode(charset, "replace")
        if english.strip() in CREDITS or not german.strip():
            continue
        pairs.append((english, german))
    return pairs


def split_lines(english: str, german: str) -> list[tuple[str, str]]:
    """A multi-line message as (English, German) line pairs where its lines correspond, else whole."""
    lines = alignment.line_pairs(german, english)
    return [(e, d) for d, e in lines] if lines is not None else [(english, german)]


@dataclass
class Catalog:
    """One package's German catalogs: where the pairs come from, and under which licence."""

    package: str
    files: list[str] = field(default_factory=list)
    licences: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (german, english), raw


def read_package(extracted: Path, package: str) -> Catalog:
    """The catalogs and licence of a package extracted by :func:`debs.extract` into ``extracted``."""
    catalog = Catalog(package, licences=package_licences(extracted, package))
    for mo in sorted(extracted.rglob("*.mo")):
        relative = mo.relative_to(extracted).as_posix()
        if not MO_PATTERN.fullmatch(relative):
            continue
        catalog.files.append(relative)
        try:
            messages = parse_mo(mo.read_bytes())
        except (ValueError, struct.error, LookupError):
            continue  # a corrupt catalog or an unknown charset: the package's other catalogs still count
        for english, german in messages:
            catalog.pairs.extend((de, en) for en, de in split_lines(english, german))
    return catalog


def package_licences(extracted: Path, package: str) -> list[str]:
    """The licences of ``usr/share/doc/<package>/copyright``; where the doc directory is a symlink to
    another package's (a common Debian practice), ``see <that package>``."""
    copyright_file = extracted / "usr/share/doc" / package / "copyright"
    if copyright_file.exists():
        return debs.copyright_licences(copyright_file.read_text(encoding="utf-8", errors="replace"))
    target = debs.links(extracted).get(f"usr/share/doc/{package}")
    if target:
        return [f"see {target.rstrip('/').rsplit('/', 1)[-1]}"]
    return ["unknown"]
