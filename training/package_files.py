"""What the corpus builder takes out of each downloaded package, extracted once into the cache.

One pass over a ``.deb`` (decompressing it is the expensive part) takes everything any source needs:
German gettext catalogs (:mod:`.gettext_catalogs`), desktop entries (:mod:`.desktop_entries`), the
copyright file (licences) and, from the control archive, debconf templates (:mod:`.debconf_templates`).
The extraction lands in ``<cache>/extracted/<package>/`` with a marker naming the ``.deb`` and
:data:`VERSION`, so a rerun skips packages already extracted by the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import debconf_templates, debs, desktop_entries, gettext_catalogs

VERSION = "1"  # bump when WANTED changes, so that cached extractions are redone
WANTED = re.compile("|".join((
    gettext_catalogs.MO_PATTERN.pattern,
    desktop_entries.PATTERN.pattern,
    r"usr/share/doc/[^/]+/copyright",
    r"usr/share/doc/[^/]+/?",  # a doc directory that is a symlink to another package's
)))


def wanted(path: str) -> bool:
    return WANTED.fullmatch(path) is not None


def control_wanted(path: str) -> bool:
    return path == debconf_templates.CONTROL_FILE


def extract_all(debs_by_package: dict[str, Path], root: Path, workers: int = 1,
                log: Callable[[str], None] = print) -> dict[str, Path]:
    """Extract every package (those already done are skipped); package → its directory under ``root``.

    ``workers`` > 1 runs that many ``dpkg-deb`` processes at once (decompression is the cost); the default
    of one keeps to one core.
    """
    todo = {p: deb for p, deb in debs_by_package.items() if not _done(root / p, deb)}
    if todo:
        log(f"extracting {len(todo)} packages into {root} ({len(debs_by_package) - len(todo)} already done)")

    def one(item: tuple[str, Path]) -> None:
        package, deb = item
        try:
            debs.extract(deb, root / package, wanted, control_wanted, marker=f"{deb.name} {VERSION}")
        except Exception as error:  # a broken .deb costs only itself
            log(f"  {deb.name}: {error}")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, sorted(todo.items())))
    return {p: root / p for p, deb in debs_by_package.items() if _done(root / p, deb)}


def _done(directory: Path, deb: Path) -> bool:
    marker = directory / ".done"
    return marker.exists() and marker.read_text(encoding="utf-8") == f"{deb.name} {VERSION}"
