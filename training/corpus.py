"""Build the German–English corpus v2 from the Debian archive in one command.

    python -m mtserve.training.corpus --out data/de-en-v2 --cache data/cache

Sources, in the order in which they win exact duplicates:

``ding``       the Ding dictionary (:mod:`.data`), as before and uncleaned, so its splits stay as they are;
``ddtp``       translated package descriptions (:mod:`.ddtp`), from apt's lists;
``gettext``    German ``.mo`` catalogs of ~1,700 packages (:mod:`.gettext_catalogs`), downloaded;
``appstream``  the archive's AppStream data (:mod:`.appstream`), one file;
``desktop``    ``.desktop`` entries of the downloaded packages (:mod:`.desktop_entries`);
``debconf``    debconf templates of the downloaded packages (:mod:`.debconf_templates`).

All but Ding go through :class:`.cleaning.Cleaner`. The union is split by the rule of :func:`.data.split_of`
(a hash of the German side), so Ding's pairs land where they always did and its ``dev-sentences`` and
``test-sentences`` are unchanged (checked on every build). ``train`` also gets copy-augmentation pairs
(:mod:`.augment`), never dev or test. Written to ``--out``:

- ``{train,dev,test}.{de,en,source}``: the union (``.source`` names each line's source, for weighting);
- ``{dev,test}-<source>.{de,en}``: each source's own dev and test pairs;
- ``{dev,test}-sentences.{de,en}``: Ding's full sentences, the agreed metric, as before;
  ``train-sentences``: the union's full sentences in train (for ``--oversample-sentences``);
  ``{dev,test}-sentences-all``: the union's full sentences;
- ``sources.json``: per source the pairs and full sentences per split, the licence, and what was dropped
  and why; for gettext every package with its licence and pair count.

Downloads are cached under ``--cache`` and reused (a rerun downloads nothing new and re-extracts nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import (
    alignment,
    appstream,
    augment,
    data,
    ddtp,
    debconf_templates,
    debs,
    desktop_entries,
    gettext_catalogs,
    package_files,
)
from .cleaning import Cleaner

SOURCES = ("ding", "ddtp", "gettext", "appstream", "desktop", "debconf")
AUGMENTED = "augmented"
SPLITS = data.SPLITS

LICENCES = {
    "ding": "GPL-2.0-or-later (Ding dictionary by Frank Richter, Debian package trans-de-en)",
    "ddtp": ddtp.LICENCE,
    "gettext": "per package (see 'packages'): the licence of the package whose catalog it is, as its "
               "debian/copyright says; translations are normally under the package's licence",
    "appstream": "per component: the upstream metadata's licence (see 'components' for ProjectLicense); "
                 "metainfo files are often CC0-1.0 or a permissive licence",
    "desktop": "per package (see 'packages'): the licence of the package that ships the .desktop file",
    "debconf": "per package (see 'packages'): the licence of the package whose debconf templates they are",
    AUGMENTED: "derived from the train pairs of the other sources (their licences apply) and templates "
               "written for this corpus",
}


@dataclass
class Source:
    """The pairs of one source after cleaning, and what the report needs to say about them."""

    name: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)  # package / component of each pair, aligned with pairs
    dropped: Counter[str] = field(default_factory=Counter)
    raw: int = 0
    info: dict[str, object] = field(default_factory=dict)


def _cleaned(name: str, raw: Iterable[tuple[str, str, str]], accelerators: bool = False) -> Source:
    """A source from (german, english, origin) triples, cleaned, exact duplicates inside it dropped."""
    cleaner = Cleaner(accelerators=accelerators)
    source, seen = Source(name), set()
    for german, english, origin in raw:
        source.raw += 1
        pair = cleaner.clean(german, english)
        if pair is None:
            continue
        if pair in seen:
            source.dropped["duplicate within source"] += 1
            continue
        seen.add(pair)
        source.pairs.append(pair)
        source.origin.append(origin)
    source.dropped.update(cleaner.dropped)
    return source


# --- the sources ---------------------------------------------------------------------------------


def ding_source(cache: Path, deb: Path | None = None) -> Source:
    stats = data.ParseStats()
    path = data.dictionary_path(cache / "ding", deb)
    with open(path, encoding="utf-8") as lines:
        pairs = data.parse(lines, stats)
    return Source("ding", pairs, ["trans-de-en"] * len(pairs), raw=stats.sub_entries,
                  dropped=Counter({"empty after cleaning": stats.empty, "duplicate within source": stats.duplicates,
                                   "mismatched sub-entries (lines)": stats.mismatched}))


def ddtp_source(lists_dir: Path = debs.APT_LISTS) -> Source:
    german, english = ddtp.translation_lists("de", lists_dir), ddtp.translation_lists("en", lists_dir)
    if not german or not english:
        raise RuntimeError(f"no Translation-de/-en lists in {lists_dir}: run "
                           "'apt-get update -o Acquire::Languages=de,en' first")
    stats = alignment.Stats()
    source = _cleaned("ddtp", ddtp.pairs(ddtp.aligned(german, english), stats=stats))
    source.info = {"lists": [p.name for p in german + english], **vars(stats)}
    return source


@dataclass
class Packages:
    """The downloaded and extracted packages that ship German catalogs."""

    extracted: dict[str, Path]
    download_bytes: int
    candidates: int
    selected: int


def fetch_packages(cache: Path, max_deb_mb: float, budget_gb: float, workers: int,
                   log: Callable[[str], None]) -> Packages:
    contents = debs.contents_indexes(cache)
    candidates = debs.packages_with_files(contents, gettext_catalogs.MO_PATTERN)
    sizes = debs.package_sizes()
    selected = gettext_catalogs.select(candidates, sizes, max_deb_mb, budget_gb)
    log(f"gettext: {len(candidates)} packages ship German catalogs; {len(selected)} selected, "
        f"{sum(sizes[p] for p in selected) / 1e9:.2f} GB")
    downloaded = debs.download(selected, cache / "debs", log=log)
    extracted = package_files.extract_all(downloaded, cache / "extracted", workers, log=log)
    return Packages(extracted, sum(deb.stat().st_size for deb in downloaded.values()), len(candidates),
                    len(selected))


def _licences(packages: Packages) -> dict[str, list[str]]:
    """Each package's licences; ``see X`` resolved where package X was extracted too."""
    licences = {p: gettext_catalogs.package_licences(d, p) for p, d in packages.extracted.items()}
    for package, names in licences.items():
        if len(names) == 1 and names[0].startswith("see ") and names[0][4:] in licences:
            target = licences[names[0][4:]]
            if not target[0].startswith("see "):
                licences[package] = target
    return licences


def gettext_source(packages: Packages, licences: dict[str, list[str]]) -> Source:
    catalogs = [gettext_catalogs.read_package(d, p) for p, d in sorted(packages.extracted.items())]
    source = _cleaned("gettext", ((de, en, c.package) for c in catalogs for de, en in c.pairs), accelerators=True)
    source.info = {
        "packages_shipping_german_catalogs": packages.candidates,
        "packages_downloaded": len(packages.extracted),
        "download_bytes": packages.download_bytes,
        "catalog_files": sum(len(c.files) for c in catalogs),
        "packages": {c.package: {"licence": licences.get(c.package, ["unknown"]), "catalogs": len(c.files)}
                     for c in catalogs if c.files},
    }
    return source


def desktop_source(packages: Packages, licences: dict[str, list[str]]) -> Source:
    def raw() -> Iterable[tuple[str, str, str]]:
        for package, directory in sorted(packages.extracted.items()):
            for path in sorted(directory.rglob("*.desktop")):
                text = path.read_text(encoding="utf-8", errors="replace")
                yield from ((de, en, package) for de, en in desktop_entries.pairs(text))

    source = _cleaned("desktop", raw())
    source.info = {"packages": _package_info(source, licences)}
    return source


def debconf_source(packages: Packages, licences: dict[str, list[str]]) -> Source:
    stats = alignment.Stats()

    def raw() -> Iterable[tuple[str, str, str]]:
        for package, directory in sorted(packages.extracted.items()):
            path = directory / "DEBIAN" / debconf_templates.CONTROL_FILE
            if not path.exists():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            yield from ddtp.pairs(debconf_templates.descriptions(text, package), stats=stats)
            yield from ((de, en, package) for de, en in debconf_templates.choices(text))

    source = _cleaned("debconf", raw())
    source.info = {"packages": _package_info(source, licences), **vars(stats)}
    return source


def appstream_source(cache: Path) -> Source:
    stats = alignment.Stats()
    components = list(appstream.components(appstream.download(cache)))
    source = _cleaned("appstream", ((de, en, c.id) for c in components for de, en in appstream.pairs(c, stats=stats)))
    counts = Counter(source.origin)
    source.info = {"components_with_german": len(components), **vars(stats),
                   "components": {c.id: {"package": c.package, "licence": c.licence, "pairs": counts[c.id]}
                                  for c in components if counts[c.id]}}
    return source


def _package_info(source: Source, licences: dict[str, list[str]]) -> dict[str, dict[str, object]]:
    counts = Counter(source.origin)
    return {p: {"licence": licences.get(p, ["unknown"]), "pairs": n} for p, n in sorted(counts.items())}


# --- union, split, writing -----------------------------------------------------------------------


def union(sources: list[Source]) -> list[tuple[str, str, str, str]]:
    """(german, english, source, origin) over all sources; an exact pair goes to the first source that has it."""
    seen: set[tuple[str, str]] = set()
    out = []
    for source in sources:
        for pair, origin in zip(source.pairs, source.origin, strict=True):
            if pair in seen:
                source.dropped["duplicate of an earlier source"] += 1
                continue
            seen.add(pair)
            out.append((*pair, source.name, origin))
    return out


class Writer:
    """Line-aligned ``NAME.de``/``NAME.en`` (and optionally ``NAME.source``) files, renamed into place at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: dict[str, object] = {}
        self.counts: Counter[str] = Counter()
        out.mkdir(parents=True, exist_ok=True)

    def open(self, name: str, with_source: bool = False) -> None:
        """Create ``name``'s files now, so that they exist (empty) even if no line goes into them."""
        for lang in ("de", "en", "source") if with_source else ("de", "en"):
            key = f"{name}.{lang}"
            if key not in self.files:
                self.files[key] = open(self.out / f"{key}.tmp", "w", encoding="utf-8")  # noqa: SIM115

    def write(self, name: str, german: str, english: str, source: str | None = None) -> None:
        self.open(name, source is not None)
        langs = ("de", "en", "source") if source is not None else ("de", "en")
        for lang, text in zip(langs, (german, english, source), strict=False):
            self.files[f"{name}.{lang}"].write(text + "\n")  # type: ignore[attr-defined]
        self.counts[name] += 1

    def close(self) -> None:
        for key, handle in self.files.items():
            handle.close()  # type: ignore[attr-defined]
            (self.out / f"{key}.tmp").replace(self.out / key)


def write_corpus(pairs: list[tuple[str, str, str, str]], augmented: list[tuple[str, str]],
                 out: Path) -> dict[str, dict[str, dict[str, int]]]:
    """Write the files listed in the module docstring; return source → split → {pairs, sentences}."""
    writer = Writer(out)
    for split in SPLITS:
        writer.open(split, with_source=True)
    for name in ("dev-sentences", "test-sentences", "train-sentences", "dev-sentences-all", "test-sentences-all",
                 *(f"{split}-{source}" for source in dict.fromkeys(p[2] for p in pairs) for split in ("dev", "test"))):
        writer.open(name)
    sizes: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: {s: {"pairs": 0, "sentences": 0}
                                                                      for s in SPLITS})
    try:
        for german, english, source, _origin in pairs:
            split = data.split_of(german)
            sentence = data.is_full_sentence(german, english)
            sizes[source][split]["pairs"] += 1
            sizes[source][split]["sentences"] += sentence
            writer.write(split, german, english, source)
            if split != "train":
                writer.write(f"{split}-{source}", german, english)
            if sentence:
                writer.write(f"{split}-sentences-all" if split != "train" else "train-sentences", german, english)
                if source == "ding" and split != "train":
                    writer.write(f"{split}-sentences", german, english)
        for german, english in augmented:
            sizes[AUGMENTED]["train"]["pairs"] += 1
            sizes[AUGMENTED]["train"]["sentences"] += data.is_full_sentence(german, english)
            writer.write("train", german, english, AUGMENTED)
    finally:
        writer.close()
    return {source: dict(splits) for source, splits in sizes.items()}


def check_ding_metric(ding: Source, out: Path, scratch: Path) -> dict[str, int]:
    """Assert that ``{dev,test}-sentences`` equal what :func:`.data.write_splits` writes for Ding alone."""
    data.write_splits(ding.pairs, scratch)
    counts = {}
    for name in ("dev-sentences", "test-sentences"):
        for lang in ("de", "en"):
            ours, theirs = (out / f"{name}.{lang}").read_bytes(), (scratch / f"{name}.{lang}").read_bytes()
            if ours != theirs:
                raise AssertionError(f"{name}.{lang} differs from the Ding-only build: the agreed metric changed")
        counts[name] = len((out / f"{name}.de").read_text(encoding="utf-8").splitlines())
    return counts


def table(sizes: dict[str, dict[str, dict[str, int]]], sources: list[Source]) -> str:
    """Sizes per source as a text table."""
    raw = {s.name: s.raw for s in sources}
    lines = [f"{'source':<10} {'raw':>9} {'pairs':>9} {'train':>9} {'dev':>7} {'test':>7} {'sentences':>10}"
             f" {'sent. dev':>9} {'sent. test':>10}"]
    totals: Counter[str] = Counter()
    for name in [*SOURCES, AUGMENTED]:
        if name not in sizes:
            continue
        split = sizes[name]
        row = {"raw": raw.get(name, 0), "pairs": sum(split[s]["pairs"] for s in SPLITS),
               "train": split["train"]["pairs"], "dev": split["dev"]["pairs"], "test": split["test"]["pairs"],
               "sentences": sum(split[s]["sentences"] for s in SPLITS), "sdev": split["dev"]["sentences"],
               "stest": split["test"]["sentences"]}
        totals.update(row)
        lines.append(_row(name, row))
    lines.append(_row("total", totals))
    return "\n".join(lines)


def _row(name: str, row: dict[str, int] | Counter[str]) -> str:
    return (f"{name:<10} {row['raw']:>9,} {row['pairs']:>9,} {row['train']:>9,} {row['dev']:>7,} {row['test']:>7,} "
            f"{row['sentences']:>10,} {row['sdev']:>9,} {row['stest']:>10,}")


def samples(pairs: list[tuple[str, str, str, str]], augmented: list[tuple[str, str]], count: int,
            seed: int) -> dict[str, list[tuple[str, str]]]:
    """``count`` random pairs of each source as it is in the corpus (for judging quality by eye)."""
    rng = random.Random(seed)
    by_source: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for german, english, source, _origin in pairs:
        by_source[source].append((german, english))
    by_source[AUGMENTED] = augmented
    return {name: rng.sample(chosen, min(count, len(chosen))) for name, chosen in by_source.items()}


def count_in_corpus(sources: list[Source], pairs: list[tuple[str, str, str, str]]) -> None:
    """Set each package's (component's) ``pairs`` in the report to what it contributes to the union."""
    counts = Counter((source, origin) for _, _, source, origin in pairs)
    for source in sources:
        for key in ("packages", "components"):
            for origin, entry in source.info.get(key, {}).items():  # type: ignore[union-attr]
                entry["pairs"] = counts[source.name, origin]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus directory")
    parser.add_argument("--cache", type=Path, default=Path("data/cache"), help="downloads and extractions")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of {SOURCES}")
    parser.add_argument("--ding-deb", type=Path, default=None, help="use this trans-de-en .deb, no download")
    parser.add_argument("--max-deb-mb", type=float, default=25.0, help="skip packages larger than this")
    parser.add_argument("--budget-gb", type=float, default=2.5, help="total download of packages at most")
    parser.add_argument("--workers", type=int, default=1, help="packages extracted at once")
    parser.add_argument("--seed", type=int, default=1, help="augmentation seed")
    parser.add_argument("--max-augmented", type=int, default=60_000, help="substitution variants at most")
    parser.add_argument("--templates", type=int, default=6_000, help="templated augmentation pairs")
    parser.add_argument("--samples", type=int, default=0, help="print this many random pairs per source")
    args = parser.parse_args(argv)

    wanted = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = set(wanted) - set(SOURCES)
    if unknown or "ding" not in wanted:
        parser.error(f"--sources: unknown {sorted(unknown)}" if unknown else "--sources must include ding")
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {message}", flush=True)

    sources = [ding_source(args.cache, args.ding_deb)]
    log(f"ding: {len(sources[0].pairs):,} pairs")
    if "ddtp" in wanted:
        sources.append(ddtp_source())
        log(f"ddtp: {len(sources[-1].pairs):,} pairs")
    if {"gettext", "desktop", "debconf"} & set(wanted):
        packages = fetch_packages(args.cache, args.max_deb_mb, args.budget_gb, args.workers, log)
        licences = _licences(packages)
        for name, build in (("gettext", gettext_source), ("desktop", desktop_source), ("debconf", debconf_source)):
            if name in wanted:
                sources.append(build(packages, licences))
                log(f"{name}: {len(sources[-1].pairs):,} pairs")
    if "appstream" in wanted:
        sources.append(appstream_source(args.cache))
        log(f"appstream: {len(sources[-1].pairs):,} pairs")
    order = {name: i for i, name in enumerate(SOURCES)}
    sources.sort(key=lambda s: order[s.name])

    pairs = union(sources)
    count_in_corpus(sources, pairs)
    train = [(de, en) for de, en, _, _ in pairs if data.split_of(de) == "train"]
    augmented = augment.augment(train, args.seed, args.max_augmented, args.templates)
    log(f"union: {len(pairs):,} pairs; augmented: {len(augmented):,}")
    sizes = write_corpus(pairs, augmented, args.out)
    metric = check_ding_metric(sources[0], args.out, args.out / ".ding-check")
    for path in (args.out / ".ding-check").iterdir():
        path.unlink()
    (args.out / ".ding-check").rmdir()

    report = {
        name: {"splits": sizes.get(name, {}), "licence": LICENCES[name],
               **({"raw_pairs": s.raw, "dropped": dict(s.dropped.most_common()), **s.info} if s else {})}
        for name, s in [(src.name, src) for src in sources] + [(AUGMENTED, None)]
    }
    report["_build"] = {"seconds": round(time.monotonic() - started), "ding_metric": metric,
                        "command": " ".join(["python -m mtserve.training.corpus", *(argv or sys.argv[1:])])}
    (args.out / "sources.json").write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    print(table(sizes, sources))
    for source in sources:
        if source.dropped:
            print(f"{source.name} dropped: " + ", ".join(f"{k} {v:,}" for k, v in source.dropped.most_common()))
    print(f"Ding metric unchanged: dev-sentences {metric['dev-sentences']}, test-sentences {metric['test-sentences']}")
    if args.samples:
        for name, chosen in samples(pairs, augmented, args.samples, args.seed).items():
            print(f"\n--- {name} ---")
            for german, english in chosen:
                print(f"  {german}\n  = {english}")
    log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
