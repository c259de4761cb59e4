"""Debian packages as a data source: the archive's indexes, ``apt-get download`` into a cache, and files out of a .deb.

Everything the corpus builder takes from the Debian archive goes through here, so that the download is
resumable (a package whose ``.deb`` is in the cache is never fetched again) and the rest of the pipeline
works on plain files. ``apt`` must know the archive (``apt-get update``; for the translated package
descriptions also ``-o Acquire::Languages=de,en``); nothing is installed, and no root is needed.
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import subprocess
import tarfile
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

APT_LISTS = Path("/var/lib/apt/lists")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"


def read_index(path: Path) -> str:
    """The text of an apt list or archive index, whatever its compression (lz4, gz, xz or none).

    apt keeps its lists lz4-compressed; ``apt-helper cat-file`` decompresses them without a Python lz4
    module (the ``lz4`` command is the fallback).
    """
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes()).decode("utf-8")
    if path.suffix == ".lz4":
        for command in (["/usr/lib/apt/apt-helper", "cat-file", str(path)], ["lz4", "-dc", str(path)]):
            if shutil.which(command[0]):
                return subprocess.run(command, check=True, capture_output=True).stdout.decode("utf-8")
        raise RuntimeError(f"cannot read {path}: neither apt-helper nor lz4 is installed")
    return path.read_text(encoding="utf-8")


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """The paragraphs of a deb822 file (Packages, Translation-xx, copyright, templates) as field → value.

    A value keeps its continuation lines, newline-separated and with their leading space, as the format
    gives meaning to it (`` .`` is an empty line, two spaces start a verbatim line).
    """
    fields: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, name = {}, ""
        elif line[0] in " \t":
            if name:
                fields[name] += "\n" + line
        elif ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            fields[name] = value.strip()
    if fields:
        yield fields


def apt_lists(kind: str, lists_dir: Path = APT_LISTS) -> list[Path]:
    """apt's lists of one kind, e.g. ``binary-amd64_Packages`` or ``i18n_Translation-de``, sorted by name."""
    return sorted(p for p in lists_dir.glob(f"*_{kind}*") if not p.name.endswith(".diff_Index"))


def package_sizes(lists_dir: Path = APT_LISTS) -> dict[str, int]:
    """Download size in bytes of every binary package apt knows (the largest where suites differ)."""
    sizes: dict[str, int] = {}
    for path in apt_lists("binary-amd64_Packages", lists_dir) + apt_lists("binary-all_Packages", lists_dir):
        for fields in paragraphs(read_index(path)):
            if "Package" in fields and "Size" in fields:
                sizes[fields["Package"]] = max(sizes.get(fields["Package"], 0), int(fields["Size"]))
    return sizes


def fetch(url: str, dest: Path) -> Path:
    """``url`` saved at ``dest`` unless already there (written under a temporary name, renamed when complete)."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=120) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    partial.replace(dest)
    return dest


def contents_indexes(cache: Path, suite: str = SUITE) -> list[Path]:
    """The archive's Contents indexes (file → package) of main, for amd64 and for architecture ``all``."""
    return [fetch(f"{MIRROR}/dists/{suite}/main/{name}", cache / f"{suite}-main-{name}")
            for name in ("Contents-amd64.gz", "Contents-all.gz")]


def packages_with_files(contents: Iterable[Path], pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """Package → its paths that match ``pattern``, from Contents indexes (``path  section/pkg,section/pkg``)."""
    found: dict[str, list[str]] = {}
    for path in contents:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                # Most of the 10+ million lines are rejected by this cheap test before the regex.
                if "/de/" not in line:
                    continue
                file, _, owners = line.rstrip("\n").rpartition(" ")
                file = file.strip()
                if not pattern.fullmatch(file):
                    continue
                for owner in owners.split(","):
                    found.setdefault(owner.rsplit("/", 1)[-1], []).append(file)
    return found


def cached_deb(debs_dir: Path, package: str) -> Path | None:
    """The newest cached ``.deb`` of ``package`` (file names are ``name_version_arch.deb``)."""
    matches = sorted(p for p in debs_dir.glob(f"{package}_*.deb") if p.name.split("_", 1)[0] == package)
    return matches[-1] if matches else None


def download(packages: Iterable[str], debs_dir: Path, batch: int = 50,
             log: Callable[[str], None] = print) -> dict[str, Path]:
    """``apt-get download`` the packages not yet cached; return package → .deb for all that are there.

    Packages go in batches (one apt-get run fetches in parallel); a batch that fails is retried one package
    at a time, so one package apt cannot find costs only itself.
    """
    debs_dir.mkdir(parents=True, exist_ok=True)
    packages = list(dict.fromkeys(packages))
    missing = [p for p in packages if cached_deb(debs_dir, p) is None]
    if missing:
        log(f"downloading {len(missing)} packages into {debs_dir} ({len(packages) - len(missing)} cached)")
    for start in range(0, len(missing), batch):
        chunk = missing[start:start + batch]
        if _apt_get_download(chunk, debs_dir) != 0:
            for package in chunk:
                if cached_deb(debs_dir, package) is None and _apt_get_download([package], debs_dir) != 0:
                    log(f"  apt-get download {package} failed; skipped")
    found = {p: cached_deb(debs_dir, p) for p in packages}
    return {p: deb for p, deb in found.items() if deb is not None}


def _apt_get_download(packages: list[str], cwd: Path) -> int:
    return subprocess.run(["apt-get", "download", "-qq", *packages], cwd=cwd, capture_output=True).returncode


# Members are streamed out of ``dpkg-deb --fsys-tarfile``: dpkg-deb knows every compression a .deb may use
# (zstd included), and streaming never holds the decompressed data in memory.
Member = tuple[str, bytes | None, str | None]  # (path without "./", content or None, link target or None)


def members(deb: Path, wanted: Callable[[str], bool], control: bool = False) -> Iterator[Member]:
    """Files (and symlinks) of ``deb`` whose path satisfies ``wanted``; ``control=True`` reads control.tar."""
    option = "--ctrl-tarfile" if control else "--fsys-tarfile"
    with subprocess.Popen(["dpkg-deb", option, str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if not wanted(name):
                    continue
                if info.issym():
                    yield name, None, info.linkname
                elif info.isfile():
                    handle = tar.extractfile(info)
                    yield name, handle.read() if handle else b"", None
        process.stdout.close()


def extract(deb: Path, dest: Path, wanted: Callable[[str], bool],
            control_wanted: Callable[[str], bool] | None = None, marker: str | None = None) -> Path:
    """Write the wanted files of ``deb`` under ``dest`` (control files under ``dest/DEBIAN``), once.

    A ``.done`` marker (``marker``, by default the .deb's name) makes a rerun skip packages already
    extracted from the same file by the same rules;
    symlinks are recorded in ``dest/.links`` (``path -> target`` lines) rather than created, since their
    targets are usually in another package.
    """
    done, marker = dest / ".done", marker or deb.name
    if done.exists() and done.read_text(encoding="utf-8") == marker:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    links = []
    sources = [(members(deb, wanted), dest)]
    if control_wanted is not None:
        sources.append((members(deb, control_wanted, control=True), dest / "DEBIAN"))
    for stream, root in sources:
        for name, content, target in stream:
            if target is not None:
                links.append(f"{name} -> {target}\n")
                continue
            out = root / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(content or b"")
    (dest / ".links").write_text("".join(links), encoding="utf-8")
    done.write_text(marker, encoding="utf-8")
    return dest


def links(extracted: Path) -> dict[str, str]:
    """The symlinks :func:`extract` recorded: path → target."""
    path = extracted / ".links"
    if not path.exists():
        return {}
    return dict(line.split(" -> ", 1) for line in path.read_text(encoding="utf-8").splitlines() if " -> " in line)


_LICENSE = re.compile(r"^License:[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)


def copyright_licences(text: str) -> list[str]:
    """The licence short names of a DEP-5 (machine-readable) copyright file, or ``["see copyright"]``.

    The names are the first lines of its ``License:`` fields, in order of first appearance, expressions such
    as ``GPL-2+ or Artistic`` kept whole. A free-form copyright file has no names to take, and guessing
    them from prose is how licences get misreported, so it is only pointed at.
    """
    if not re.match(r"\s*Format:\s*\S*(copyright-format|dep5|DEP-5)", text, re.IGNORECASE):
        return ["see copyright"]
    names = list(dict.fromkeys(_LICENSE.findall(text)))
    return names or ["see copyright"]
