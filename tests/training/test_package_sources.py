"""The sources that come out of Debian packages: gettext catalogs, desktop entries, debconf templates,
AppStream data, licences, and the .deb download/extraction around them (no network: apt-get is faked)."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mtserve.training import appstream, debconf_templates, debs, desktop_entries, gettext_catalogs, package_files

# --- .mo files ---------------------------------------------------------------------------------------


def write_mo(messages: list[tuple[str, str]]) -> bytes:
    """A little-endian .mo file of (original, translation) byte-level messages, as msgfmt lays it out."""
    messages = sorted(messages)
    originals = [m[0].encode("utf-8") for m in messages]
    translations = [m[1].encode("utf-8") for m in messages]
    count = len(messages)
    header = 28
    tables = header + 16 * count
    data = b""
    offsets = []
    for text in originals + translations:
        offsets.append((len(text), tables + len(data)))
        data += text + b"\x00"
    out = struct.pack("<7I", 0x950412DE, 0, count, header, header + 8 * count, 0, 0)
    for length, offset in offsets:
        out += struct.pack("<2I", length, offset)
    return out + data


HEADER = ("", "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n")
MESSAGES = [
    HEADER,
    ("Open", "Öffnen"),
    ("menu\x04_File", "_Datei"),  # msgctxt "menu"
    ("%d file\x00%d files", "%d Datei\x00%d Dateien"),  # plural: singular msgid with msgstr[0]
    ("translator-credits", "Anna Müller"),
    ("Usage: tool [OPTION]\n  -a, --all     show all\n  -q, --quiet   be quiet\n",
     "Aufruf: tool [OPTION]\n  -a, --all     alles zeigen\n  -q, --quiet   still sein\n"),
    ("This text is wrapped\nat another word.", "Dieser Text ist an\neinem anderen Wort umbrochen."),
]


def test_mo_parser_reads_messages_without_header_context_or_credits():
    pairs = gettext_catalogs.parse_mo(write_mo(MESSAGES))
    assert ("Open", "Öffnen") in pairs
    assert ("_File", "_Datei") in pairs
    assert ("%d file", "%d Datei") in pairs
    assert not any(english in ("", "translator-credits") for english, _ in pairs)
    assert len(pairs) == 5


def test_mo_parser_reads_big_endian_and_rejects_other_files():
    little = write_mo([HEADER, ("Open", "Öffnen")])
    # Rewrite the seven header words and the two tables (2 messages × 2 words each) big-endian.
    words = struct.unpack("<15I", little[:60])
    big = struct.pack(">15I", *words) + little[60:]
    assert gettext_catalogs.parse_mo(big) == [("Open", "Öffnen")]
    with pytest.raises(ValueError):
        gettext_catalogs.parse_mo(b"not a catalog at all, but long enough")


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="gettext's msgfmt is not installed")
def test_mo_parser_reads_what_msgfmt_writes(tmp_path: Path):
    (tmp_path / "de.po").write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Save"\nmsgstr "Speichern"\n\n'
        '#, fuzzy\nmsgid "Close"\nmsgstr "Schließen"\n\n'  # fuzzy: msgfmt leaves it out
        'msgid "Quit"\nmsgstr ""\n\n'  # untranslated: left out
        'msgctxt "verb"\nmsgid "Print"\nmsgstr "Drucken"\n\n'
        'msgid "%d page"\nmsgid_plural "%d pages"\nmsgstr[0] "%d Seite"\nmsgstr[1] "%d Seiten"\n',
        encoding="utf-8")
    subprocess.run(["msgfmt", "-o", str(tmp_path / "de.mo"), str(tmp_path / "de.po")], check=True)
    assert sorted(gettext_catalogs.parse_mo((tmp_path / "de.mo").read_bytes())) == [
        ("%d page", "%d Seite"), ("Print", "Drucken"), ("Save", "Speichern")]


def test_help_texts_split_into_lines_but_wrapped_prose_stays_whole():
    pairs = gettext_catalogs.split_lines(*MESSAGES[5])
    assert pairs == [("Usage: tool [OPTION]", "Aufruf: tool [OPTION]"),
                     ("  -a, --all     show all", "  -a, --all     alles zeigen"),
                     ("  -q, --quiet   be quiet", "  -q, --quiet   still sein")]
    assert gettext_catalogs.split_lines(*MESSAGES[6]) == [MESSAGES[6]]


def test_selection_prefers_core_packages_and_respects_the_limits():
    candidates = {"big-game-data": [], "coreutils": [], "small": [], "medium": []}
    sizes = {"big-game-data": 400_000_000, "coreutils": 3_000_000, "small": 100_000, "medium": 900_000_000}
    assert gettext_catalogs.select(candidates, sizes, max_deb_mb=25, budget_gb=1) == ["coreutils", "small"]
    assert gettext_catalogs.select(candidates, sizes, max_deb_mb=25, budget_gb=0.0029) == ["small"]


# --- licences ----------------------------------------------------------------------------------------

DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tool

Files: *
Copyright: 2020 Someone
License: GPL-3+

Files: po/*
Copyright: 2021 Translators
License: GPL-3+ or LGPL-2.1+
 The translations may be used under either licence.

License: GPL-3+
 On Debian systems, see /usr/share/common-licenses/GPL-3.
"""


def test_licences_of_a_machine_readable_copyright_file():
    assert debs.copyright_licences(DEP5) == ["GPL-3+", "GPL-3+ or LGPL-2.1+"]
    assert debs.copyright_licences("This package was debianized by X.\nIt is GPL.\n") == ["see copyright"]


# --- desktop entries, debconf templates, AppStream ---------------------------------------------------

DESKTOP = """\
[Desktop Entry]
Name=Text Editor
Name[de]=Texteditor
Name[fr]=Éditeur de texte
GenericName=Editor
Comment=Edit text files
Comment[de_DE]=Textdateien bearbeiten
Keywords=text;editor;
Keywords[de]=Text;Editor;Bearbeiten;
Exec=gedit %U

[Desktop Action new-window]
Name=New Window
Name[de]=Neues\\sFenster

[Some Other Group]
Name=Ignored
Name[de]=Ignoriert
"""


def test_desktop_entries_pair_localized_keys():
    assert list(desktop_entries.pairs(DESKTOP)) == [
        ("Texteditor", "Text Editor"), ("Textdateien bearbeiten", "Edit text files"), ("Neues Fenster", "New Window")]


TEMPLATES = """\
Template: tool/restart
Type: boolean
Default: true
Description: Restart services during package upgrades without asking?
 There are services installed on your system which need to be restarted.
 .
 Restarting them now is recommended.
Description-de.UTF-8: Dienste bei Paket-Upgrades ohne Nachfrage neu starten?
 Auf Ihrem System sind Dienste installiert, die neu gestartet werden müssen.
 .
 Sie jetzt neu zu starten wird empfohlen.

Template: tool/mode
Type: select
Choices: automatic, manual\\, with help, off
Choices-de.UTF-8: automatisch, manuell\\, mit Hilfe, aus
Description: Mode:
Description-de.UTF-8: Modus:
"""


def test_debconf_templates_pair_descriptions_and_choices():
    pairs = [(g, e) for d in [debconf_templates.descriptions(TEMPLATES, "tool")]
             for g, e, _ in __import__("mtserve.training.ddtp", fromlist=["pairs"]).pairs(d)]
    assert ("Dienste bei Paket-Upgrades ohne Nachfrage neu starten?",
            "Restart services during package upgrades without asking?") in pairs
    assert ("Sie jetzt neu zu starten wird empfohlen.", "Restarting them now is recommended.") in pairs
    assert ("Modus:", "Mode:") in pairs
    assert list(debconf_templates.choices(TEMPLATES)) == [
        ("automatisch", "automatic"), ("manuell, mit Hilfe", "manual, with help"), ("aus", "off")]


DEP11 = """\
---
File: DEP-11
Version: '0.16'
Origin: debian-bookworm-main
---
Type: desktop-application
ID: org.example.Tool
Package: tool
Name:
  C: Tool
  de: Werkzeug
Summary:
  C: Edit your files
  de: Bearbeiten Sie Ihre Dateien
Description:
  C: "<p>Tool edits files. It is fast.</p>\\n<ul>\\n<li>Undo &amp; redo</li>\\n</ul>"
  de: "<p>Tool bearbeitet Dateien. Es ist schnell.</p>\\n<ul>\\n<li>Rückgängig &amp; Wiederholen</li>\\n</ul>"
ProjectLicense: GPL-3.0+
---
Type: font
ID: org.example.Font
Package: fonts-example
Name:
  C: Example Font
"""


def test_appstream_components_give_name_summary_and_description_pairs(tmp_path: Path):
    pytest.importorskip("yaml")
    path = tmp_path / "Components-amd64.yml.gz"
    path.write_bytes(gzip.compress(DEP11.encode("utf-8")))
    (component,) = appstream.components(path)  # the font has no German and is skipped
    assert (component.id, component.package, component.licence) == ("org.example.Tool", "tool", "GPL-3.0+")
    assert list(appstream.pairs(component)) == [
        ("Werkzeug", "Tool"), ("Bearbeiten Sie Ihre Dateien", "Edit your files"),
        ("Tool bearbeitet Dateien.", "Tool edits files."), ("Es ist schnell.", "It is fast."),
        ("Rückgängig & Wiederholen", "Undo & redo")]


# --- download and extraction -------------------------------------------------------------------------


def build_deb(root: Path, out_dir: Path, package: str = "tool") -> Path:
    """A real .deb built by dpkg-deb from a directory tree (skipped where dpkg-deb is missing)."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: X <x@example.org>\n"
        "Description: test\n test package\n", encoding="utf-8")
    (root / "DEBIAN" / "templates").write_text(TEMPLATES, encoding="utf-8")
    deb = out_dir / f"{package}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_extraction_takes_catalogs_desktop_files_copyright_and_templates(tmp_path: Path):
    root = tmp_path / "root"
    mo = root / "usr/share/locale/de/LC_MESSAGES/tool.mo"
    mo.parent.mkdir(parents=True)
    mo.write_bytes(write_mo(MESSAGES))
    (root / "usr/share/locale/fr/LC_MESSAGES").mkdir(parents=True)
    (root / "usr/share/locale/fr/LC_MESSAGES/tool.mo").write_bytes(write_mo([HEADER]))
    (root / "usr/share/applications").mkdir(parents=True)
    (root / "usr/share/applications/tool.desktop").write_text(DESKTOP, encoding="utf-8")
    (root / "usr/share/doc/tool").mkdir(parents=True)
    (root / "usr/share/doc/tool/copyright").write_text(DEP5, encoding="utf-8")
    (root / "usr/share/doc/tool-extra").symlink_to("tool")
    debs_dir = tmp_path / "debs"
    debs_dir.mkdir()
    deb = build_deb(root, debs_dir)

    extracted = package_files.extract_all({"tool": deb}, tmp_path / "extracted", log=lambda _: None)
    directory = extracted["tool"]
    assert (directory / "usr/share/locale/de/LC_MESSAGES/tool.mo").exists()
    assert not (directory / "usr/share/locale/fr").exists()
    assert (directory / "DEBIAN/templates").read_text(encoding="utf-8") == TEMPLATES
    assert debs.links(directory) == {"usr/share/doc/tool-extra": "tool"}

    catalog = gettext_catalogs.read_package(directory, "tool")
    assert catalog.files == ["usr/share/locale/de/LC_MESSAGES/tool.mo"]
    assert catalog.licences == ["GPL-3+", "GPL-3+ or LGPL-2.1+"]
    assert ("Öffnen", "Open") in catalog.pairs
    assert ("  -q, --quiet   still sein", "  -q, --quiet   be quiet") in catalog.pairs
    assert gettext_catalogs.package_licences(directory, "tool-extra") == ["see tool"]

    # A second run finds the marker and does not touch the package again.
    (directory / "usr/share/applications/tool.desktop").unlink()
    package_files.extract_all({"tool": deb}, tmp_path / "extracted", log=lambda _: None)
    assert not (directory / "usr/share/applications/tool.desktop").exists()


def test_download_reuses_cached_debs_and_retries_a_failed_batch_one_by_one(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    calls: list[list[str]] = []

    def fake_apt(packages: list[str], cwd: Path) -> int:
        calls.append(packages)
        if "missing" in packages:
            return 100
        for package in packages:
            (cwd / f"{package}_1.0_all.deb").write_bytes(b"deb")
        return 0

    monkeypatch.setattr(debs, "_apt_get_download", fake_apt)
    (tmp_path / "cached_2.0_all.deb").write_bytes(b"deb")
    found = debs.download(["cached", "a", "missing", "b"], tmp_path, log=lambda _: None)
    assert sorted(found) == ["a", "b", "cached"]
    assert calls == [["a", "missing", "b"], ["a"], ["missing"], ["b"]]
    assert debs.cached_deb(tmp_path, "cached") == tmp_path / "cached_2.0_all.deb"


def test_contents_index_lookup(tmp_path: Path):
    index = tmp_path / "Contents-amd64.gz"
    index.write_bytes(gzip.compress(
        b"usr/share/locale/de/LC_MESSAGES/coreutils.mo               utils/coreutils\n"
        b"usr/share/locale/de/LC_MESSAGES/gtk30.mo                   libs/libgtk-3-common,libs/libgtk-4-common\n"
        b"usr/share/locale/fr/LC_MESSAGES/coreutils.mo               utils/coreutils\n"
        b"usr/share/doc/de/readme                                    doc/something\n"))
    found = debs.packages_with_files([index], gettext_catalogs.MO_PATTERN)
    assert found == {"coreutils": ["usr/share/locale/de/LC_MESSAGES/coreutils.mo"],
                     "libgtk-3-common": ["usr/share/locale/de/LC_MESSAGES/gtk30.mo"],
                     "libgtk-4-common": ["usr/share/locale/de/LC_MESSAGES/gtk30.mo"]}


def test_paragraphs_keep_continuation_lines():
    (fields,) = debs.paragraphs("Package: a\nDescription-en: title\n line one\n .\n line two\n")
    assert fields == {"Package": "a", "Description-en": "title\n line one\n .\n line two"}
