"""Cleaning of (German, English) segment pairs from software translations, one rule at a time.

Software strings are not prose: they carry markup, keyboard accelerators and format placeholders that a
translation model must not learn to produce out of nothing, and catalogs contain untranslated or partly
translated entries. Each rule below says what it does and why. :meth:`Cleaner.clean` applies them in this
order and returns the cleaned pair, or ``None`` with the reason counted in :attr:`Cleaner.dropped`.

1. **Whitespace** – NFC, line breaks/tabs/no-break spaces (and GnuPG's escaped line breaks ``%0A``) to
   spaces, zero-width characters and soft hyphens removed, runs of spaces collapsed: the model sees
   one-line text, and invisible characters would only add vocabulary pieces.
2. **Markup** – HTML and KDE/Qt rich-text tags (``<b>``, ``<a href=…>``, ``<br/>``, ``<qt>``,
   ``<filename>``…) are removed, keeping their content; only known tag names are, so that ``<file>`` in a
   usage message (a metavariable the translator translates) stays text.
3. **Accelerators** – the mnemonic markers ``&File`` (Qt/KDE), ``_File`` (GTK) and ``~File`` (LibreOffice)
   are removed (``&&`` becomes ``&``). They sit at arbitrary places in the German word (``Spei_chern``) and
   would teach the model to scatter them. Not accelerators: ``&`` between capitals or digits (``AT&T``)
   or in a URL, and ``_``/``~`` inside a token that appears verbatim on both sides (``nfnetlink_log``) or
   that holds the marker more than once (``__init__``).
4. **Entities** – ``&amp;``, ``&lt;``, ``&#39;``… are decoded after accelerators are gone (so that
   ``&amp;`` is never read as an accelerator before ``amp;``).
5. **Placeholders** – printf (``%s``, ``%d``, ``%1$s``, ``%.2f``, ``%lu``), Python (``%(name)s``,
   ``{0}``, ``{name}``, ``{}``), Qt (``%1``, ``%L1``), Boost.Format (``%1%``), Ruby (``%{name}``), shell
   (``$VAR``, ``${VAR}``), GCC's and GLib's one-letter directives (``%qD``, ``%C``, ``%B``: untyped, numbered
   with the printf ones), LibreOffice's ``%PRODUCTNAME`` (filled in as LibreOffice fills it) and
   ``%m`` (glibc's error message: German and English texts of a common error, from glibc's catalog).
   A pair whose placeholders differ as multisets of (argument, kind) is dropped: one side says something
   the other does not. Unnumbered printf placeholders take argument numbers in order of appearance, so
   ``%s … %d`` matches a reordered ``%2$d … %1$s``. Where they match, each argument is replaced on both
   sides by one value – a number for numeric conversions and for any placeholder in a counting context
   (``%1 files``), otherwise a plausible word, name or file name (by the words around it) – drawn with a
   seed derived from the pair. The model then learns to copy such values, rather than to produce ``%s``
   from ordinary input. Floats get the German decimal comma on the German side, as a German locale prints
   them. ``$VAR`` names are compared but kept: they are literal names a user types, and copying them
   verbatim is already the right behaviour. ``%%`` becomes ``%``, GCC's quote directives ``%<``/``%>``
   become ``‘``/``’`` (as GCC prints them). A pair that still contains a
   ``%``-sequence afterwards (strftime formats like ``%A, %B``) is dropped.
6. **Empty / no letters** – a side that is empty or has no letter is not text.
7. **Untranslated** – German equal to English (case-insensitively) is an untranslated catalog entry or a
   name; it teaches nothing but copying, which the placeholder values and the augmentation teach better.
8. **Too long** – more than :data:`MAX_WORDS` words (≈ 100 SentencePiece-ish words, the longest segments
   a sentence-level model is trained on) or :data:`MAX_CHARS` characters on a side.
9. **Length ratio** – German text is on average ~1.2× as long as English in characters, and 0.7–2×
   covers nearly all real translations, compounds included. A pair whose longer side is more than
   :data:`MAX_RATIO` times the shorter one is a partial translation or carries an explanation on one side.
   Pairs whose longer side has fewer than :data:`RATIO_MIN_CHARS` characters are exempt: a one-word UI
   string against a German compound ("Zeitüberschreitung"/"Timeout") is legitimately lopsided.
10. **Language** – py3langid restricted to German and English: a German side that is English with
    probability ≥ :data:`LANGID_MIN_CONFIDENCE` (untranslated or half-translated, e.g. ``Interner Fehler:
    true/false edge after …``) is dropped, and an English side that is German likewise. Only for sides of
    at least :data:`LANGID_MIN_WORDS` words: on shorter strings the identifier is guessing. Restricting to
    the two languages and asking for confidence is deliberate: over all 97 languages, or with a bare
    arg-max, technical strings such as ``Name of DBM quota database file.`` or ``Usage: %s [OPTION]...
    FILE PATTERN...`` are called Dutch or German (3× as many drops in a sample of 60,000 catalog
    messages, most of them good pairs). Text in a third language is rare in German catalogs and not
    looked for.
"""

from __future__ import annotations

import copy
import hashlib
import html
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier

MAX_WORDS = 100
MAX_CHARS = 800
MAX_RATIO = 3.0
RATIO_MIN_CHARS = 20
LANGID_MIN_WORDS = 4
LANGID_LANGUAGES = ("de", "en")
LANGID_MIN_CONFIDENCE = 0.7

# --- 1. whitespace -------------------------------------------------------------------------------

# GnuPG writes line breaks in its prompts as URL escapes, "%0A" (in format strings "%%0A").
_ESCAPED_NEWLINE = re.compile(r"%%?0[AaDd]")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[\s\u00a0\u202f\u2007]+")


def normalize_space(text: str) -> str:
    """NFC, one line, no invisible characters, single spaces."""
    text = _ESCAPED_NEWLINE.sub(" ", unicodedata.normalize("NFC", text).translate(_INVISIBLE))
    return _SPACES.sub(" ", text).strip()


# --- 2. markup -----------------------------------------------------------------------------------

_TAG_NAMES = (
    # HTML
    "a|abbr|b|big|blockquote|body|br|center|meta|cite|code|dd|div|dl|dt|em|font|h[1-6]|head|hr|html|i|img|kbd|li|"
    "nobr|ol|p|pre|q|s|samp|small|span|strike|strong|sub|sup|table|tbody|td|th|thead|tr|tt|u|ul|var|"
    # Qt rich text and KDE's semantic markup (KUIT), Pango
    "qt|filename|interface|shortcut|command|application|emphasis|link|note|warning|title|subtitle|para|"
    "placeholder|resource|icode|bcode|message|numid|email|envar|nl|item|list|envvar|"
    # DocBook-ish and AppStream description markup
    "literal|replaceable|option|userinput|computeroutput|systemitem|ulink|guilabel|guimenu|guimenuitem|"
    "guibutton|keycap|keycombo|menuchoice|productname|quote|phrase"
)
_TAG = re.compile(rf"</?(?:{_TAG_NAMES})(?:\s[^<>]*)?/?>", re.IGNORECASE)
# Tags that separate text rather than mark it up become a space, so "one<br/>two" stays two words.
_BREAKING_TAG = re.compile(r"</?(?:br|p|div|li|tr|td|th|h[1-6]|nl|para|title|ul|ol|dl|dt|dd|hr|table)\b[^<>]*>",
                           re.IGNORECASE)


# Qt Designer's rich text starts with a doctype and a <head> holding <meta> and a CSS <style>: not text.
_HEAD = re.compile(r"<!DOCTYPE[^>]*>|<head\b.*?</head\s*>|<style\b.*?</style\s*>", re.IGNORECASE | re.DOTALL)


def strip_markup(text: str) -> str:
    """Known HTML / rich-text tags removed, their content kept (a document head and CSS go entirely)."""
    return _TAG.sub("", _BREAKING_TAG.sub(" ", _HEAD.sub(" ", text)))


# --- 3. accelerators and 4. entities -----------------------------------------------------------

_ENTITY = re.compile(r"&(?:#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_ACCELERATOR = {
    "&": re.compile(r"&(?!&)(?!(?:#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);)(?=\w)"),
    "_": re.compile(r"_(?=[^\W_])"),
    "~": re.compile(r"~(?=[^\W_])"),
}


_PUNCTUATION = "\"'„“”‚‘’«»()[]{}<>,.;:!?…"


# An ampersand between capitals or digits is part of a name (AT&T, R&D, B&W); in a URL it joins parameters.
_AMPERSAND_WORD = re.compile(r"[A-Z0-9]&[A-Z0-9]|://|=")


def strip_accelerators(text: str, other: str) -> str:
    """``text`` without mnemonic markers.

    ``&`` is a mnemonic wherever it precedes a letter, except between capitals or digits (``AT&T``) and in
    URLs. ``_`` and ``~`` are mnemonics unless the token holding them also occurs verbatim on the other
    side (``nfnetlink_log``), or holds them more than once (``__init__``); a single ``_`` at the start of
    a token is a mnemonic even then (``_OK`` / ``_OK``).
    """
    shared = {token.strip(_PUNCTUATION) for token in other.split()}
    tokens = []
    for token in text.split(" "):
        core = token.strip(_PUNCTUATION)
        for marker, pattern in _ACCELERATOR.items():
            if marker not in token or token.count(marker) != 1 or not pattern.search(token):
                continue
            if marker == "&":
                mnemonic = not _AMPERSAND_WORD.search(token)
            else:
                mnemonic = core not in shared or (marker == "_" and core.startswith("_"))
            if mnemonic:
                token = pattern.sub("", token, count=1)
        tokens.append(token.replace("&&", "&"))  # Qt's escaped ampersand
    return " ".join(tokens)


def decode_entities(text: str) -> str:
    """``&amp;`` → ``&`` and the like (only complete, ``;``-terminated references)."""
    return _ENTITY.sub(lambda m: html.unescape(m.group()), text)


# --- 5. placeholders -----------------------------------------------------------------------------

_PLACEHOLDER = re.compile(
    r"%(?:(?P<pos>\d+)\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|Z|t|I64|I32)?(?P<conv>[diouxXeEfFgGcsSp])"
    r"|%\((?P<pyname>\w+)\)[-+#0]*\d*(?:\.\d+)?(?P<pyconv>[diouxXeEfFgGcrs])"
    r"|%(?P<boost>\d{1,2})%"
    r"|%(?P<upper>[A-Z][A-Z_]+)\b"
    r"|%q?(?P<letter>[A-Z])(?![A-Za-z0-9])"
    r"|%(?P<errno>m)(?![A-Za-z0-9])"
    r"|%L?(?P<qt>\d{1,2})(?![\d$])"
    r"|%\{(?P<ruby>\w+)\}"
    r"|(?<!\{)\{(?P<brace>\d+|[A-Za-z_]\w*)?(?:![rsa])?(?::[^{}]*)?\}(?!\})"
    r"|\$\{?(?P<shell>[A-Za-z_][A-Za-z0-9_]*)\}?"
)
_PERCENT_ESCAPE = "\x00"  # "%%" while placeholders are looked for
_GCC_QUOTES = re.compile(r"%([<>])")  # GCC's diagnostics quote with %< and %>, printed as ‘ and ’


def _gcc_quotes(text: str) -> str:
    return _GCC_QUOTES.sub(lambda m: "‘" if m.group(1) == "<" else "’", text)
_LEFTOVER = re.compile(r"%[A-Za-z]")

NUMERIC = "diouxX"
FLOAT = "eEfFgG"


@dataclass(frozen=True)
class Placeholder:
    """One placeholder occurrence: its argument (namespace, name) and the kind of value it takes."""

    start: int
    end: int
    argument: tuple[str, str]
    kind: str  # "int", "float", "char", "str", "any" (untyped), "shell"


def placeholders(text: str) -> list[Placeholder]:
    """The placeholders of ``text`` (with ``%%`` already escaped), numbering unnumbered ones in order."""
    found, sequential = [], {"printf": 0, "brace": 0}
    for match in _PLACEHOLDER.finditer(text):
        groups = match.groupdict()
        if groups["conv"]:
            if groups["pos"]:
                name = groups["pos"]
            else:
                sequential["printf"] += 1
                name = str(sequential["printf"])
            argument, conv = ("printf", name), groups["conv"]
        elif groups["letter"]:
            sequential["printf"] += 1
            argument, conv = ("printf", str(sequential["printf"])), ""
        elif groups["upper"]:
            argument, conv = ("named", groups["upper"]), ""
        elif groups["errno"]:
            argument, conv = ("errno", "m"), "m"
        elif groups["pyname"]:
            argument, conv = ("named", groups["pyname"]), groups["pyconv"]
        elif groups["qt"] or groups["boost"]:
            argument, conv = ("printf", str(int(groups["qt"] or groups["boost"]))), ""
        elif groups["ruby"]:
            argument, conv = ("named", groups["ruby"]), ""
        elif groups["shell"]:
            argument, conv = ("shell", groups["shell"]), "$"
        else:
            brace = groups["brace"]
            if brace is None:
                brace = str(sequential["brace"])
                sequential["brace"] += 1
            argument, conv = ("named" if not brace.isdigit() else "brace", brace), ""
        kind = ("any" if not conv else "int" if conv in NUMERIC else "float" if conv in FLOAT
                else "char" if conv == "c" else "shell" if conv == "$" else "errno" if conv == "m" else "str")
        found.append(Placeholder(match.start(), match.end(), argument, kind))
    return found


_COUNT_WORDS = re.compile(
    r"\s*(?:%|[kKMGT]i?B\b|bytes?\b|bits?\b|files?\b|folders?\b|director(?:y|ies)\b|items?\b|entries\b|entry\b|"
    r"seconds?\b|secs?\b|minutes?\b|mins?\b|hours?\b|days?\b|weeks?\b|months?\b|years?\b|ms\b|times\b|lines?\b|"
    r"pages?\b|messages?\b|columns?\b|rows?\b|pixels?\b|px\b|characters?\b|chars?\b|words?\b|packages?\b|"
    r"errors?\b|warnings?\b|tracks?\b|images?\b|photos?\b|songs?\b|points?\b|percent\b|users?\b|tasks?\b|"
    r"objects?\b|selected\b|of\s+(?:%|\{)|x\s*%|×)"
)
_NUMBER_BEFORE = re.compile(r"(?:#|\bNo\.|\bnumber|\bpage|\bline|\bcolumn|\bstep|\bversion|\bof|\bport|\bx)\s*$",
                            re.IGNORECASE)

VALUES: dict[str, tuple[str, ...]] = {
    "file": ("bericht.pdf", "notes.txt", "/home/anna/daten.csv", "config.yaml", "foto_0042.jpg", "index.html",
             "/etc/fstab", "backup.tar.gz", "main.c", "Rechnung_2023.odt", "~/Dokumente/plan.ods", "README.md"),
    "user": ("anna", "thomas", "jsmith", "maria", "root", "kai", "lena.schmidt", "peter"),
    "host": ("example.org", "mail.example.com", "192.168.1.10", "server01", "localhost", "ftp.debian.org"),
    "package": ("libfoo", "nginx", "python3-numpy", "firefox-esr", "openssh-server", "vim", "gimp"),
    "device": ("/dev/sda1", "eth0", "wlan0", "/dev/nvme0n1", "hci0", "/dev/sdb", "enp3s0"),
    "url": ("https://example.org", "https://www.debian.org/", "http://localhost:8080/", "ftp://ftp.example.com/pub"),
    "version": ("2.1.3", "1.0", "4.18.1", "12", "3.11.2", "0.9.7"),
    "name": ("Anna", "Thomas", "Berlin", "Müller", "Sarah", "Hamburg", "Michael", "Laura", "London", "Klaus",
             "Firefox", "Projekt X", "Musik", "Urlaub", "Main", "Standard", "Gast", "Büro", "Jonas", "Emma"),
    "word": ("foo", "bar", "xyz", "abc123", "alpha", "example", "demo", "main", "beta2", "qux"),
}
_CONTEXT = [
    ("file", re.compile(r"\b(?:file|files|folder|directory|path|image|document|archive|script|font|theme)\b", re.I)),
    ("user", re.compile(r"\b(?:user|username|login|account|owner)\b", re.I)),
    ("host", re.compile(r"\b(?:host|hostname|server|domain|address|mirror)\b", re.I)),
    ("package", re.compile(r"\b(?:package|packages|module|plugin|library)\b", re.I)),
    ("device", re.compile(r"\b(?:device|interface|disk|partition|drive|adapter)\b", re.I)),
    ("url", re.compile(r"\b(?:url|uri|link|website|web site|location)\b", re.I)),
    ("version", re.compile(r"\b(?:version)\b", re.I)),
]


def _numeric_context(text: str, placeholder: Placeholder) -> bool:
    return bool(_COUNT_WORDS.match(text, placeholder.end) or _NUMBER_BEFORE.search(text[:placeholder.start]))


def _number(rng: random.Random) -> int:
    return rng.choice((rng.randint(1, 9), rng.randint(2, 99), rng.randint(10, 999), rng.randint(1000, 99999)))


# glibc's messages for the commonest errno values, as its German catalog has them: what %m prints.
ERRNO = (("Keine Berechtigung", "Permission denied"), ("Datei oder Verzeichnis nicht gefunden",
         "No such file or directory"), ("Auf dem Gerät ist kein Speicherplatz mehr verfügbar",
         "No space left on device"), ("Eingabe-/Ausgabefehler", "Input/output error"),
         ("Die Operation ist nicht erlaubt", "Operation not permitted"), ("Ist ein Verzeichnis", "Is a directory"))
# LibreOffice's product placeholders, as LibreOffice itself fills them in.
FIXED = {"PRODUCTNAME": "LibreOffice", "PRODUCTVERSION": "7.4"}


def _value(kind: str, numeric: bool, context: str, rng: random.Random) -> tuple[str, str]:
    """(German, English) text of one argument."""
    if kind == "errno":
        return rng.choice(ERRNO)
    if kind == "int" or (numeric and kind in ("str", "any")):
        value = str(_number(rng))
        return value, value
    if kind == "float":
        whole, fraction = rng.randint(0, 999), rng.randint(0, 99)
        return f"{whole},{fraction:02d}", f"{whole}.{fraction:02d}"
    if kind == "char":
        value = rng.choice("abcdefghijklmnopqrstuvwxyz")
        return value, value
    category = next((name for name, pattern in _CONTEXT if pattern.search(context)),
                    rng.choice(("name", "name", "word", "file")))
    value = rng.choice(VALUES[category])
    return value, value


def pair_seed(german: str, english: str) -> int:
    """A seed that depends only on the pair, so cleaning is reproducible whatever the order of pairs."""
    return int(hashlib.sha1(f"{german}\x00{english}".encode()).hexdigest()[:16], 16)


def substitute_placeholders(german: str, english: str) -> tuple[str, str] | None:
    """Both sides with each placeholder argument replaced by one value, or ``None`` when they disagree."""
    de = _gcc_quotes(german).replace("%%", _PERCENT_ESCAPE)
    en = _gcc_quotes(english).replace("%%", _PERCENT_ESCAPE)
    de_found, en_found = placeholders(de), placeholders(en)
    if Counter((p.argument, p.kind) for p in de_found) != Counter((p.argument, p.kind) for p in en_found):
        return None
    rng = random.Random(pair_seed(german, english))
    values: dict[tuple[str, str], tuple[str, str]] = {}
    for placeholder in sorted(en_found, key=lambda p: p.argument):
        if placeholder.argument in values or placeholder.kind == "shell":
            continue
        context = en[max(0, placeholder.start - 40):placeholder.end + 20]
        fixed = FIXED.get(placeholder.argument[1]) if placeholder.argument[0] == "named" else None
        values[placeholder.argument] = ((fixed, fixed) if fixed else
                                        _value(placeholder.kind, _numeric_context(en, placeholder), context, rng))

    def replace(text: str, found: list[Placeholder], side: int) -> str:
        out, last = [], 0
        for p in found:
            out.append(text[last:p.start])
            out.append(text[p.start:p.end] if p.kind == "shell" else values[p.argument][side])
            last = p.end
        out.append(text[last:])
        return "".join(out).replace(_PERCENT_ESCAPE, "%")

    return replace(de, de_found, 0), replace(en, en_found, 1)


# --- 10. language --------------------------------------------------------------------------------


@cache
def _identifier() -> LanguageIdentifier:
    identifier = copy.copy(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True))
    identifier.set_languages(LANGID_LANGUAGES)
    return identifier


def language(text: str) -> tuple[str, float]:
    """py3langid's guess among :data:`LANGID_LANGUAGES`, and its probability."""
    code, probability = _identifier().classify(text)
    return str(code), float(probability)


def is_other_language(text: str, expected: str) -> bool:
    """Whether ``text`` is confidently not in ``expected`` (see rule 10)."""
    code, probability = language(text)
    return code != expected and probability >= LANGID_MIN_CONFIDENCE


# --- the whole -----------------------------------------------------------------------------------


@dataclass
class Cleaner:
    """Applies the rules above and counts why pairs were dropped."""

    accelerators: bool = True  # rule 3 only where the text is UI strings (gettext catalogs)
    dropped: Counter[str] = field(default_factory=Counter)
    kept: int = 0

    def clean(self, german: str, english: str) -> tuple[str, str] | None:
        de, en = clean_text(german), clean_text(english)
        if self.accelerators:
            de, en = strip_accelerators(de, en), strip_accelerators(en, de)
        de, en = normalize_space(decode_entities(de)), normalize_space(decode_entities(en))
        reason = rejection(de, en)
        if reason is None:
            substituted = substitute_placeholders(de, en)
            if substituted is None:
                reason = "placeholders differ"
            else:
                de, en = substituted
                reason = ("leftover %-sequence" if _LEFTOVER.search(de) or _LEFTOVER.search(en)
                          else rejection(de, en, check_language=True))
        if reason is not None:
            self.dropped[reason] += 1
            return None
        self.kept += 1
        return de, en


def clean_text(text: str) -> str:
    """Rules 1 and 2 on one side."""
    return normalize_space(strip_markup(normalize_space(text)))


def rejection(german: str, english: str, check_language: bool = False) -> str | None:
    """Why the pair is dropped by rules 6–10 (10 only with ``check_language``), or ``None``."""
    if not any(c.isalpha() for c in german) or not any(c.isalpha() for c in english):
        return "empty or no letters"
    if german.casefold() == english.casefold():
        return "untranslated"
    if max(len(german.split()), len(english.split())) > MAX_WORDS or max(len(german), len(english)) > MAX_CHARS:
        return "too long"
    short, long = sorted((len(german), len(english)))
    if long >= RATIO_MIN_CHARS and long > MAX_RATIO * short:
        return "length ratio"
    if check_language:
        if len(german.split()) >= LANGID_MIN_WORDS and is_other_language(german, "de"):
            return "German side not German"
        if len(english.split()) >= LANGID_MIN_WORDS and is_other_language(english, "en"):
            return "English side not English"
    return None
