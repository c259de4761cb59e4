"""The Ding German–English dictionary as parallel training data.

The dictionary ships in Debian's ``trans-de-en`` package (GPL-2+, so the data is
fetched at build time and never committed). Each line reads
``German entries :: English entries``; ``#`` starts a comment. Both sides split
on `` | `` into aligned sub-entries (a line whose counts differ is skipped), and
inside a sub-entry ``;`` separates synonyms.

Choices, fixed so that the splits are reproducible:

- **Synonyms**: one pair per sub-entry, the first German synonym with the first
  English one (the first non-empty one after cleaning). Ding's synonym lists are
  not aligned position by position, and the first entries are the main
  translations; all-combinations pairing would multiply word-level noise
  (about 910k pairs, mostly near-duplicates) for little gain.
- **Cleaning** strips what is annotation, not text: ``{…}`` (gender, part of
  speech), ``[…]`` (register, region, field), ``<…>`` (search keys),
  ``/abbr/`` abbreviations standing alone, and ``(…)`` glosses that start a word
  (explanations that exist on one side only and would teach the model to
  hallucinate them); in-word parentheses like ``h(a)emodynamic`` stay.
  Whitespace is collapsed, and no space is left before ``, . ; : ! ? )``.
- **Full sentence**: both sides start with an upper-case letter, a digit or an
  opening quote, end in ``. ! ?`` (a closing quote may follow) and have at
  least 3 words. This rules out dictionary phrases such as ``to do sth.``.
- **Dedupe**: exact (German, English) pairs, first occurrence kept.
- **Split**: ``int(sha1(german.encode("utf-8")).hexdigest(), 16) % 100`` is 0 for
  test, 1 for dev, anything else for train, on the cleaned German text. All
  translations of one German string land in one split, so nothing from test or
  dev is trained on.

CLI: ``python -m mtserve.training.data --out DIR [--cache DIR] [--deb PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "trans-de-en"
MEMBER = "usr/share/trans/de-en"
SPLITS = ("train", "dev", "test")

# Annotations are removed together with the whitespace before them, so that
# "honour [Br.]/honor [Am.] to" becomes "honour/honor to".
_BRACKETS = re.compile(r"\s*(?:\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>)")
# A gloss starts a word: "Extrawurst (gebraten) haben", not "h(a)emodynamic".
# Innermost first; cleaning repeats until nothing changes, for nested glosses.
_GLOSS = re.compile(r"(?:^|\s+)\([^()]*\)(?!\w)")
# "/HI/", "/p. A.; p. Adr./", "/B&W, b&w, B/W/" stand alone (whitespace before, none just inside,
# the shortest such span); "er/sie hat/hatte" and "to get / receive" are text.
_ABBREV = re.compile(r"(?:^|\s+)/[^/\s](?:.{0,30}?[^/\s])?/(?=[\s.,;:!?)]|$)")
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)])")
_SENTENCE_END = re.compile(r"[.!?][\"'“”’»«)]*$")
_OPENING_QUOTES = "\"'„“‚‘»«"


def strip_annotations(text: str) -> str:
    """Remove ``{…}``, ``[…]``, ``<…>``, standalone ``/abbr/`` and word-initial ``(…)``."""
    previous = None
    while previous != text:
        previous = text
        text = _BRACKETS.sub("", text)
        text = _GLOSS.sub("", text)
        text = _ABBREV.sub("", text)
    return text


def tidy(text: str) -> str:
    """NFC, one space between words, none before closing punctuation, no stray separators."""
    text = unicodedata.normalize("NFC", text)
    text = _SPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    # A gloss stripped from the end can leave "word ," or "word ;" behind.
    return text.strip(" ,;:")


def clean(text: str) -> str:
    """One synonym as it goes into the corpus."""
    return tidy(strip_annotations(text))


def first_synonym(sub_entry: str) -> str:
    """The first synonym that is non-empty after cleaning, or ``""``.

    Annotations are stripped before splitting on ``;`` because an abbreviation
    such as ``/p. A.; p. Adr./`` contains one.
    """
    for synonym in strip_annotations(sub_entry).split(";"):
        text = tidy(synonym)
        if text:
            return text
    return ""


@dataclass
class ParseStats:
    """Why lines and sub-entries were dropped; printed by the CLI."""

    lines: int = 0
    comments: int = 0
    blank: int = 0
    malformed: int = 0  # not exactly one " :: "
    mismatched: int = 0  # different number of " | " sub-entries on the two sides
    sub_entries: int = 0
    empty: int = 0  # a side was empty after cleaning
    duplicates: int = 0


def parse_line(line: str, stats: ParseStats | None = None) -> list[tuple[str, str]]:
    """The (German, English) pairs of one dictionary line; ``[]`` for comments and skipped lines."""
    stats = stats if stats is not None else ParseStats()
    stats.lines += 1
    line = line.rstrip("\r\n")
    if line.startswith("#"):
        stats.comments += 1
        return []
    if not line.strip():
        stats.blank += 1
        return []
    sides = line.split(" :: ")
    if len(sides) != 2:
        stats.malformed += 1
        return []
    german, english = (side.split(" | ") for side in sides)
    if len(german) != len(english):
        stats.mismatched += 1
        return []
    pairs = []
    for de_entry, en_entry in zip(german, english, strict=True):
        stats.sub_entries += 1
        de, en = first_synonym(de_entry), first_synonym(en_entry)
        if not de or not en:
            stats.empty += 1
            continue
        pairs.append((de, en))
    return pairs


def parse(lines: Iterable[str], stats: ParseStats | None = None) -> list[tuple[str, str]]:
    """All pairs of a dictionary, deduplicated, in file order."""
    stats = stats if stats is not None else ParseStats()
    seen: set[tuple[str, str]] = set()
    pairs = []
    for line in lines:
        for pair in parse_line(line, stats):
            if pair in seen:
                stats.duplicates += 1
                continue
            seen.add(pair)
            pairs.append(pair)
    return pairs


def split_of(german: str) -> str:
    """``test``, ``dev`` or ``train`` by a hash of the cleaned German text."""
    bucket = int(hashlib.sha1(german.encode("utf-8")).hexdigest(), 16) % 100
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def _is_sentence(text: str) -> bool:
    first = text.lstrip(_OPENING_QUOTES)[:1]
    starts = first.isupper() or first.isdigit()
    return starts and len(text.split()) >= 3 and bool(_SENTENCE_END.search(text))


def is_full_sentence(german: str, english: str) -> bool:
    """Both sides start upper-case (or digit/quote), end in . ! ? and have ≥ 3 words."""
    return _is_sentence(german) and _is_sentence(english)


def write_splits(pairs: Iterable[tuple[str, str]], out_dir: Path) -> dict[str, int]:
    """Write ``{split}.de``/``{split}.en`` plus ``{split}-sentences.*``; return line counts.

    Only ``test-sentences`` is required by the brief; the dev one is written too
    because it is the natural dev set for a sentence-level model.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [*SPLITS, "dev-sentences", "test-sentences", "train-sentences"]
    counts = dict.fromkeys(names, 0)
    files = {(name, lang): open(out_dir / f"{name}.{lang}.tmp", "w", encoding="utf-8")  # noqa: SIM115
             for name in names for lang in ("de", "en")}
    try:
        for de, en in pairs:
            split = split_of(de)
            targets = [split, f"{split}-sentences"] if is_full_sentence(de, en) else [split]
            for name in targets:
                files[name, "de"].write(de + "\n")
                files[name, "en"].write(en + "\n")
                counts[name] += 1
    finally:
        for handle in files.values():
            handle.close()
    # Rename only once everything is written, so a crash never leaves half a corpus.
    for name, lang in files:
        (out_dir / f"{name}.{lang}.tmp").replace(out_dir / f"{name}.{lang}")
    return counts


# --- getting the dictionary out of the Debian package ---------------------------------


def read_split(data_dir: Path, name: str) -> tuple[list[str], list[str]]:
    """``name.de`` and ``name.en`` (as written by :func:`write_splits`) as two aligned lists of lines."""
    src = (data_dir / f"{name}.de").read_text(encoding="utf-8").splitlines()
    tgt = (data_dir / f"{name}.en").read_text(encoding="utf-8").splitlines()
    if len(src) != len(tgt):
        raise ValueError(f"{data_dir}/{name}.de has {len(src)} lines, {name}.en has {len(tgt)}")
    return src, tgt


def find_deb(cache_dir: Path) -> Path | None:
    """The newest ``trans-de-en_*.deb`` in ``cache_dir``, if any."""
    debs = sorted(cache_dir.glob(f"{PACKAGE}_*.deb"))
    return debs[-1] if debs else None


def download_deb(cache_dir: Path) -> Path:
    """``apt-get download trans-de-en`` into ``cache_dir`` (no root needed, no install)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", PACKAGE], cwd=cache_dir, capture_output=True, text=True)
    deb = find_deb(cache_dir)
    if result.returncode != 0 or deb is None:
        raise RuntimeError(
            f"apt-get download {PACKAGE} failed (exit {result.returncode}): {result.stderr.strip()!r}; "
            "run 'apt-get update' first, or pass --deb with a downloaded copy"
        )
    return deb


def _ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Members of a Unix ar archive (the container format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb (ar) archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        pos += 60
        yield name, data[pos : pos + size]
        pos += size + (size & 1)  # members are 2-byte aligned


def extract_dictionary(deb: Path, dest: Path) -> Path:
    """Write the dictionary text of ``deb`` to ``dest`` and return it.

    Reads the ar/tar archive in Python (gz, xz, bz2); for a zstd-compressed
    package, which the standard library cannot read, falls back to ``dpkg-deb -x``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    for name, payload in _ar_members(deb.read_bytes()):
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            return _extract_with_dpkg(deb, dest)
        if name.endswith(".xz"):
            payload = lzma.decompress(payload)
        with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
            for member in tar.getmembers():
                if member.name.lstrip("./") == MEMBER:
                    source = tar.extractfile(member)
                    assert source is not None
                    dest.write_bytes(source.read())
                    return dest
        raise FileNotFoundError(f"{MEMBER} not in {deb}")
    raise FileNotFoundError(f"no data.tar.* member in {deb}")


def _extract_with_dpkg(deb: Path, dest: Path) -> Path:
    staging = dest.parent / "deb-root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
    shutil.move(staging / MEMBER, dest)
    shutil.rmtree(staging)
    return dest


def dictionary_path(cache_dir: Path, deb: Path | None = None) -> Path:
    """The extracted dictionary, downloading and extracting the package as needed."""
    text = cache_dir / "de-en.txt"
    if text.exists() and deb is None:
        return text
    deb = deb or find_deb(cache_dir) or download_deb(cache_dir)
    return extract_dictionary(deb, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for train/dev/test .de/.en")
    parser.add_argument("--cache", type=Path, default=None, help="where the .deb lives (default: OUT/cache)")
    parser.add_argument("--deb", type=Path, default=None, help="use this trans-de-en .deb, no download")
    args = parser.parse_args(argv)

    cache = args.cache or args.out / "cache"
    path = dictionary_path(cache, args.deb)
    stats = ParseStats()
    with open(path, encoding="utf-8") as lines:
        pairs = parse(lines, stats)
    counts = write_splits(pairs, args.out)

    print(f"dictionary: {path}")
    print(f"lines: {stats.lines} (comments {stats.comments}, blank {stats.blank}, "
          f"malformed {stats.malformed}, mismatched ' | ' counts {stats.mismatched})")
    print(f"sub-entries: {stats.sub_entries} (empty after cleaning {stats.empty}, "
          f"duplicate pairs {stats.duplicates})")
    print(f"pairs: {len(pairs)}")
    for name, count in counts.items():
        print(f"  {name}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
