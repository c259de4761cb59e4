"""Every cleaning rule of mtserve.training.cleaning, on strings like the catalogs hold."""

from __future__ import annotations

import pytest

from mtserve.training import cleaning
from mtserve.training.cleaning import Cleaner


def clean(german: str, english: str, accelerators: bool = True) -> tuple[str, str] | None:
    return Cleaner(accelerators=accelerators).clean(german, english)


def reason(german: str, english: str) -> str:
    cleaner = Cleaner()
    assert cleaner.clean(german, english) is None
    (why,) = cleaner.dropped
    return why


def test_whitespace_is_one_line_without_invisible_characters():
    assert cleaning.normalize_space(" Datei\n\töffnen\u00a0jetzt\u200b ") == "Datei öffnen jetzt"
    assert cleaning.normalize_space("Trenn\u00adung") == "Trennung"
    assert cleaning.normalize_space("Sicher?%0ADas ist %%0Aendgültig.") == "Sicher? Das ist endgültig."


def test_known_tags_go_with_their_content_kept_but_metavariables_stay():
    assert cleaning.strip_markup("<b>Fett</b> und <a href='x'>Link</a>") == "Fett und Link"
    assert cleaning.strip_markup("<qt>Die Datei <filename>a.txt</filename> fehlt.</qt>") == "Die Datei a.txt fehlt."
    assert cleaning.normalize_space(cleaning.strip_markup("eins<br/>zwei<p>drei</p>")) == "eins zwei drei"
    assert cleaning.strip_markup("Aufruf: cp <Quelle> <Ziel>") == "Aufruf: cp <Quelle> <Ziel>"
    qt_designer = ('<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.0//EN"><html><head><meta name="qrichtext" '
                   'content="1" /><style type="text/css">p, li { white-space: pre-wrap; }</style></head>'
                   '<body style=" font-size:9pt;"><p style="margin:0px;">Hallo <b>Welt</b></p></body></html>')
    assert cleaning.normalize_space(cleaning.strip_markup(qt_designer)) == "Hallo Welt"


@pytest.mark.parametrize(("german", "english", "expected"), [
    ("_Datei", "_File", ("Datei", "File")),
    ("Spei_chern unter", "Save _As", ("Speichern unter", "Save As")),
    ("&Öffnen", "&Open", ("Öffnen", "Open")),
    ("~Datei", "~File", ("Datei", "File")),
    ("Drucken && Exportieren", "Print && Export", ("Drucken & Exportieren", "Print & Export")),
    ("&UTF-8 erzwingen", "Force &UTF-8", ("UTF-8 erzwingen", "Force UTF-8")),  # shared, but a mnemonic
    ("C&ursor nach Block", "C&ursor after block", ("Cursor nach Block", "Cursor after block")),
    ("_OK", "_OK!", ("OK", "OK!")),
])
def test_accelerators_are_removed(german: str, english: str, expected: tuple[str, str]):
    assert clean(german, english) == expected


def test_identifiers_shared_by_both_sides_keep_their_marker():
    assert clean("Wert von nfnetlink_log ändern", "Change the value of nfnetlink_log") == (
        "Wert von nfnetlink_log ändern", "Change the value of nfnetlink_log")
    assert clean("Verbindung zu AT&T", "Connection to AT&T") == ("Verbindung zu AT&T", "Connection to AT&T")
    assert clean("Suche: https://example.org/?q=a&t=b", "Search: https://example.org/?q=a&t=b") == (
        "Suche: https://example.org/?q=a&t=b", "Search: https://example.org/?q=a&t=b")
    # Two underscores: an identifier, never a mnemonic.
    assert clean("__init__ fehlt", "__init__ missing") == ("__init__ fehlt", "__init__ missing")
    # DDTP and other prose sources have no accelerators: the rule is off for them.
    assert clean("Modul foo_bar", "Module foo_baz", accelerators=False) == ("Modul foo_bar", "Module foo_baz")


def test_entities_are_decoded_after_accelerators():
    assert clean("Suchen &amp; Ersetzen", "Find &amp; Replace") == ("Suchen & Ersetzen", "Find & Replace")
    assert clean("Wert &lt; 5 &#8211; zu klein", "Value &lt; 5 &#8211; too small") == (
        "Wert < 5 – zu klein", "Value < 5 – too small")


def test_placeholders_are_found_and_numbered():
    found = cleaning.placeholders("%s hat %d Dateien, %1$s %(name)s {0} {name} {} %1 %L2 %{count} $HOME %.2f %lu")
    assert [(p.argument, p.kind) for p in found] == [
        (("printf", "1"), "str"), (("printf", "2"), "int"), (("printf", "1"), "str"), (("named", "name"), "str"),
        (("brace", "0"), "any"), (("named", "name"), "any"), (("brace", "0"), "any"), (("printf", "1"), "any"),
        (("printf", "2"), "any"), (("named", "count"), "any"), (("shell", "HOME"), "shell"),
        (("printf", "3"), "float"), (("printf", "4"), "int"),
    ]
    assert [p.argument for p in cleaning.placeholders("Datei '%1%' mit Schlüssel '%2%'")] == [
        ("printf", "1"), ("printf", "2")]
    # Not placeholders: a percentage followed by a space, "%%".
    assert cleaning.placeholders("50 % der Fälle") == []


def test_mismatched_placeholders_drop_the_pair():
    assert reason("Datei %s nicht gefunden", "File %s not found in %s") == "placeholders differ"
    assert reason("%d Dateien", "%s files") == "placeholders differ"
    assert reason("Variable $HOME", "Variable $PATH") == "placeholders differ"


def test_placeholders_are_substituted_consistently_and_reproducibly():
    german, english = clean("%2$d Zeilen in Datei %1$s", "File %s has %d lines") or ("", "")
    assert "%" not in german + english
    # The reordered German placeholders got the values of the same arguments.
    name, number = english.split()[1], english.split()[3]
    assert number.isdigit() and german.split()[0] == number
    assert german.split()[-1] == name
    assert clean("%2$d Zeilen in Datei %1$s", "File %s has %d lines") == (german, english)
    # Same-numbered arguments with a different kind do not match.
    assert reason("Kopiere %2$d Dateien nach %1$s", "Copying %d files to %s") == "placeholders differ"


def test_numeric_context_gets_numbers_and_floats_get_a_german_comma():
    german, english = clean("%1 Dateien ausgewählt", "%1 files selected") or ("", "")
    assert english.split()[0].isdigit() and german.split()[0] == english.split()[0]
    german, english = clean("Fortschritt: %.1f Prozent", "Progress: %.1f percent") or ("", "")
    assert german.split()[1] == english.split()[1].replace(".", ",")


def test_shell_variables_are_compared_but_kept_and_percent_escapes_decoded():
    assert clean("Setzen Sie $HOME auf 100%%", "Set $HOME to 100%%") == (
        "Setzen Sie $HOME auf 100%", "Set $HOME to 100%")


def test_gcc_quote_directives_become_quotes():
    assert clean("%<for%>-Schleifen sind nur mit %<-std=c++11%> verfügbar",
                 "range-based %<for%> loops only available with %<-std=c++11%>") == (
        "‘for’-Schleifen sind nur mit ‘-std=c++11’ verfügbar",
        "range-based ‘for’ loops only available with ‘-std=c++11’")


def test_strftime_formats_are_dropped():
    assert reason("%A, %d. %B %Y", "%A, %B %d, %Y") == "placeholders differ"
    assert reason("Fenster verschieben %e %w", "Window move %e %w") == "leftover %-sequence"


def test_gcc_glib_libreoffice_and_errno_placeholders():
    german, english = clean("Typdefinition von %qs bei %C wurde bereits definiert",
                            "Derived type definition of %qs at %C has already been defined") or ("", "")
    assert "%" not in german + english
    assert clean("Soll der Assistent die Datenbank in %PRODUCTNAME anmelden?",
                 "Do you want the wizard to register the database in %PRODUCTNAME?") == (
        "Soll der Assistent die Datenbank in LibreOffice anmelden?",
        "Do you want the wizard to register the database in LibreOffice?")
    german, english = clean("konnte Ausgabedatei nicht öffnen: %m", "could not open output file: %m") or ("", "")
    assert (german.split(": ", 1)[1], english.split(": ", 1)[1]) in cleaning.ERRNO


def test_empty_untranslated_long_and_lopsided_pairs_are_dropped():
    assert reason("", "File") == "empty or no letters"
    assert reason("123 ...", "123 !") == "empty or no letters"
    assert reason("Server", "server") == "untranslated"
    long = " ".join(["Wort"] * (cleaning.MAX_WORDS + 1))
    assert reason(long, "Some English text") == "too long"
    assert reason("Das Abrechnungsdatum, an dem die bis dahin aufgelaufenen Zinsen berechnet werden",
                  "The settlement") == "length ratio"
    # Short strings are exempt from the ratio: a German compound may be long against a short English word.
    assert clean("Zeitüberschreitung", "Timeout") == ("Zeitüberschreitung", "Timeout")


def test_language_check_drops_untranslated_sides_of_four_words_or_more():
    assert reason("Interner Fehler: true/false edge after a non-GIMPLE_COND block",
                  "true/false edge after a non-GIMPLE_COND block") == "German side not German"
    assert reason("Die Datei konnte nicht gelesen werden.",
                  "Die Datei konnte nicht gespeichert werden.") == "English side not English"
    # Three words: too short to judge, kept.
    assert clean("Open File Dialog", "Open file dialog box") is not None
    # Technical but English: not mistaken for another language.
    assert clean("Name der DBM-Quota-Datenbankdatei.", "Name of DBM quota database file.") is not None


def test_cleaner_counts_reasons():
    cleaner = Cleaner()
    cleaner.clean("Server", "Server")
    cleaner.clean("Datei", "File")
    assert cleaner.kept == 1 and cleaner.dropped == {"untranslated": 1}
