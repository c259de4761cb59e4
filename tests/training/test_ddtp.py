"""The DDTP parser and aligner (mtserve.training.ddtp) on Translation-de/-en snippets in the real format."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtserve.training import alignment, ddtp, debs

# Real records of bookworm's Translation-en / Translation-de (0ad-data), plus invented ones that exercise
# bullets, verbatim lines, a mismatched paragraph count and a hyphenated line break.
TRANSLATION_EN = """\
Package: 0ad-data
Description-md5: 26581e685027d5ae84824362a4ba59ee
Description-en: Real-time strategy game of ancient warfare (data files)
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare. In short, it is a
 historically-based war/economy game that allows players to relive or rewrite
 the history of Western civilizations, focusing on the years between 500 B.C.
 and 500 A.D. The project is highly ambitious, involving state-of-the-art 3D
 graphics, detailed artwork, sound, and a flexible and powerful custom-built
 game engine.
 .
 This package contains the main data files needed by 0 A.D.

Package: frobnicate
Description-md5: 00000000000000000000000000000001
Description-en: tool to frobnicate widgets
 Frobnicate turns widgets into gadgets. It is fast.
 .
 Features:
  * reads XML input
  * writes gadget files
 .
   frobnicate --all
 .
 This package is a bus-
 probing tool.

Package: mismatch
Description-md5: 00000000000000000000000000000002
Description-en: a package
 One paragraph.
 .
 Two paragraphs.

Package: untranslated
Description-md5: 00000000000000000000000000000003
Description-en: nobody translated this
 Nothing.
"""

TRANSLATION_DE = """\
Package: 0ad-data
Description-md5: 26581e685027d5ae84824362a4ba59ee
Description-de: Echtzeit-Strategiespiel über antike Kriegsführung (Datendateien)
 0 A.D. ist ein freies, quelloffenes, plattformübergreifendes
 Echtzeit-Strategiespiel (RTS) über antike Kriegsführung. In Kürze: es ist
 ein Kriegs-/Wirtschaftsspiel, in dem Spieler die Geschichte westlicher
 Zivilisationen zwischen 500 vor Christus und 500 nach Christus nacherleben
 oder neu schreiben können. Das Projekt ist sehr ambitioniert, verfügt über
 aktuelle 3D-Grafiken, detailliertes Artwork, Sound sowie eine flexible und
 leistungsfähige selbst erstellte Spielengine.
 .
 Dieses Paket enthält die wichtigsten von 0 A.D. benötigten Datendateien.

Package: frobnicate
Description-md5: 00000000000000000000000000000001
Description-de: Werkzeug zum Frobnizieren von Widgets
 Frobnicate macht aus Widgets Gadgets. Es ist schnell.
 .
 Funktionen:
  * liest XML-Eingaben
  * schreibt Gadget-Dateien
 .
   frobnicate --all
 .
 Dieses Paket ist ein Bus-
 Prüfwerkzeug.

Package: mismatch
Description-md5: 00000000000000000000000000000002
Description-de: ein Paket
 Ein Absatz. Zwei Absätze.
"""


@pytest.fixture
def lists(tmp_path: Path) -> tuple[Path, Path]:
    de = tmp_path / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-de"
    en = tmp_path / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en"
    de.write_text(TRANSLATION_DE, encoding="utf-8")
    en.write_text(TRANSLATION_EN, encoding="utf-8")
    return de, en


def test_description_structure():
    (fields,) = [f for f in debs.paragraphs(TRANSLATION_EN) if f["Package"] == "frobnicate"]
    description = ddtp.parse_description("frobnicate", fields["Description-en"])
    assert description.title == "tool to frobnicate widgets"
    assert description.paragraphs == [
        [("text", "Frobnicate turns widgets into gadgets. It is fast.")],
        [("text", "Features:"), ("bullet", "reads XML input"), ("bullet", "writes gadget files")],
        [("verbatim", "frobnicate --all")],
        [("text", "This package is a bus-probing tool.")],
    ]


def test_hyphenated_line_breaks_join_but_suspended_hyphens_keep_their_space():
    assert ddtp.join_lines("ein Bus-", "Prüfwerkzeug") == "ein Bus-Prüfwerkzeug"
    assert ddtp.join_lines("Ein-", "und Ausgabe") == "Ein- und Ausgabe"
    assert ddtp.join_lines("pre-", "and post-processing") == "pre- and post-processing"


def test_descriptions_align_by_md5_and_give_sentence_pairs(lists: tuple[Path, Path]):
    de, en = lists
    aligned = ddtp.aligned([de], [en])
    assert [(d.package, e.package) for d, e in aligned] == [("0ad-data", "0ad-data"), ("frobnicate", "frobnicate"),
                                                             ("mismatch", "mismatch")]
    stats = ddtp.Stats()
    pairs = [(german, english) for german, english, _ in ddtp.pairs(aligned, stats=stats)]
    assert ("Echtzeit-Strategiespiel über antike Kriegsführung (Datendateien)",
            "Real-time strategy game of ancient warfare (data files)") in pairs
    assert ("Dieses Paket enthält die wichtigsten von 0 A.D. benötigten Datendateien.",
            "This package contains the main data files needed by 0 A.D.") in pairs
    # Sentences pair up one by one when pysbd finds as many on both sides.
    assert ("Frobnicate macht aus Widgets Gadgets.", "Frobnicate turns widgets into gadgets.") in pairs
    assert ("Es ist schnell.", "It is fast.") in pairs
    assert ("liest XML-Eingaben", "reads XML input") in pairs  # bullet items are units
    assert ("frobnicate --all", "frobnicate --all") in pairs  # verbatim (the cleaner drops it as untranslated)
    assert ("Dieses Paket ist ein Bus-Prüfwerkzeug.", "This package is a bus-probing tool.") in pairs
    # Different paragraph counts: only the title of "mismatch" is used.
    assert ("ein Paket", "a package") in pairs and not any(g.startswith("Ein Absatz") for g, _ in pairs)
    assert stats.paragraph_mismatch == 1 and stats.descriptions == 3


def test_blocks_with_different_sentence_counts_are_kept_when_short_and_dropped_when_long():
    stats = alignment.Stats()
    short = alignment.block_pairs("Es ist schnell und gut.", "It is fast. It is good.", stats=stats)
    assert short == [("Es ist schnell und gut.", "It is fast. It is good.")]
    long_de = "Es ist schnell und gut, " + " ".join(["sehr"] * 60) + "."
    long_en = "It is fast. It is " + " ".join(["very"] * 60) + " good."
    assert alignment.block_pairs(long_de, long_en, stats=stats) == []
    assert (stats.short_blocks, stats.long_blocks) == (1, 1)


def test_german_abbreviations_do_not_split_sentences():
    assert alignment.sentences("Das gilt z. B. am 15. August. Danach nicht.", "de") == [
        "Das gilt z. B. am 15. August.", "Danach nicht."]


def test_verbatim_lines_pair_one_by_one_only_when_they_correspond():
    table_de = "  -a  alle Dateien zeigen\n  -q  still sein"
    table_en = "  -a  show all files\n  -q  be quiet"
    assert alignment.line_pairs(table_de, table_en) == [("  -a  alle Dateien zeigen", "  -a  show all files"),
                                                        ("  -q  still sein", "  -q  be quiet")]
    # Wrapped prose: as many lines, but broken at different words.
    assert alignment.line_pairs("die Erstellung einer Konfiguration\nmittels debconf wird nicht empfohlen.",
                                "creation of the configuration using debconf is\nnot recommended.") is None
    de = ddtp.parse_description("x", "Titel\n Text:\n .\n   die Erstellung einer Konfiguration\n   mittels "
                                     "debconf wird nicht empfohlen.")
    en = ddtp.parse_description("x", "title\n Text:\n .\n   creation of the configuration using debconf is\n"
                                     "   not recommended.")
    assert de.paragraphs[1] == [
        ("verbatim", "die Erstellung einer Konfiguration\nmittels debconf wird nicht empfohlen.")]
    pairs = [(g, e) for g, e, _ in ddtp.pairs([(de, en)])]
    assert pairs[-1] == ("die Erstellung einer Konfiguration mittels debconf wird nicht empfohlen.",
                         "creation of the configuration using debconf is not recommended.")


REAL_LISTS = ddtp.translation_lists("de"), ddtp.translation_lists("en")


@pytest.mark.skipif(not all(REAL_LISTS), reason="no Translation-de/-en in /var/lib/apt/lists "
                    "(apt-get update -o Acquire::Languages=de,en)")
def test_real_translation_lists_parse():
    # The main suite's lists are the large ones (updates and security hold a few records each).
    german = ddtp.read_translations(max(REAL_LISTS[0], key=lambda p: p.stat().st_size), "de")
    assert len(german) > 5000
    description = next(iter(german.values()))
    assert description.title and description.package
    english = ddtp.read_translations(max(REAL_LISTS[1], key=lambda p: p.stat().st_size), "en")
    assert len(set(german) & set(english)) > 0.9 * len(german)
