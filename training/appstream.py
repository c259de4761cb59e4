"""AppStream component metadata of the archive (DEP-11) as German–English pairs.

Debian publishes the AppStream data of all its packages in one file per suite and architecture,
``dists/<suite>/main/dep11/Components-amd64.yml.gz`` (a few MB): for each component (application, font,
add-on…) its ``Name``, ``Summary`` and ``Description`` in the original (``C``, English) and in every
language its translators covered, taken from the upstream metainfo and desktop files and their ``.po``
translations. Pairs:

- ``Name`` and ``Summary``, ``C`` with ``de``;
- ``Description``, an HTML subset (``<p>``, ``<ul>/<ol>`` with ``<li>``): blocks paired when both sides
  have the same sequence of block kinds; paragraph pairs are then split into sentences as for DDTP
  (:func:`.alignment.block_pairs`), list items are units.

The licence of the metadata is the upstream project's (``ProjectLicense``, recorded per component in
``sources.json``); many projects put their metainfo itself under CC0 or a permissive licence.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import alignment, debs

FILE = "Components-amd64.yml.gz"
_BLOCK = re.compile(r"<(p|li)\b[^>]*>(.*?)</\1\s*>", re.DOTALL)


def download(cache: Path, suite: str = debs.SUITE) -> Path:
    """The suite's DEP-11 components file, downloaded into ``cache`` once."""
    return debs.fetch(f"{debs.MIRROR}/dists/{suite}/main/dep11/{FILE}", cache / f"{suite}-main-dep11-{FILE}")


@dataclass
class Component:
    """The fields of one component the pairs come from."""

    id: str
    package: str
    licence: str
    name: dict[str, str]
    summary: dict[str, str]
    description: dict[str, str]


def components(path: Path) -> Iterator[Component]:
    """Every component of a DEP-11 file that has German text (the header document is skipped)."""
    import yaml  # only this source needs it (PyYAML, the ``train`` extra)

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for document in yaml.load_all(debs.read_index(path), Loader=loader):
        if not isinstance(document, dict) or "ID" not in document:
            continue
        fields = {key: document.get(key) or {} for key in ("Name", "Summary", "Description")}
        if not any("de" in value for value in fields.values() if isinstance(value, dict)):
            continue
        yield Component(str(document["ID"]), str(document.get("Package", "")),
                        str(document.get("ProjectLicense", "unknown")),
                        *(_strings(fields[key]) for key in ("Name", "Summary", "Description")))


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def blocks(description: str) -> list[tuple[str, str]]:
    """(kind, text) of the ``<p>`` and ``<li>`` elements of an AppStream description, whitespace collapsed."""
    return [(kind, " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split()))
            for kind, text in _BLOCK.findall(description)]


def pairs(component: Component, max_block_words: int = alignment.MAX_BLOCK_WORDS,
          stats: alignment.Stats | None = None) -> Iterator[tuple[str, str]]:
    """(German, English) pairs of one component."""
    stats = stats if stats is not None else alignment.Stats()
    for field in (component.name, component.summary):
        if field.get("de") and field.get("C"):
            yield field["de"], field["C"]
    german, english = component.description.get("de"), component.description.get("C")
    if not german or not english:
        return
    de_blocks, en_blocks = blocks(german), blocks(english)
    if [k for k, _ in de_blocks] != [k for k, _ in en_blocks]:
        stats.block_mismatch += 1
        return
    for (kind, de), (_, en) in zip(de_blocks, en_blocks, strict=True):
        if kind == "li":
            yield de, en
        else:
            yield from alignment.block_pairs(de, en, max_block_words, stats)
