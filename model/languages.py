"""Language codes: a model's own codes, and the BCP-47 / ISO 639 tags a caller may use for them.

Every model names its languages its own way: NLLB-200 ``deu_Latn`` (ISO 639-3 + ISO 15924 script), M2M100
``__de__``, MBart-50 ``de_DE``, OPUS-MT ``>>deu<<`` or ``de``. A caller may give the model's own code or any
tag that means the language: ``de``, ``deu``, ``ger``, ``de-CH``, ``zh-TW``. :class:`LanguageCodes` maps a
request to one of the model's codes:

1. the model's code itself (case-insensitive);
2. the request standardised by ``langcodes`` (ISO 639-2/B → 639-1, deprecated tags replaced,
   ``zh-TW`` → ``zh-Hant-TW``), then an override for the few macrolanguages whose default individual
   language langcodes does not pick for NLLB's set (Pashto, Quechua, Twi);
3. langcodes' closest match among the model's tags, within :data:`MAX_DISTANCE`, refused when the match
   is written in another script than the one asked for: ``sr-Latn`` never becomes Cyrillic Serbian, and
   ``zh-TW`` never becomes Simplified Chinese.

A distance of 5 keeps regional variants (de-CH → German, 4; zh-HK → Traditional Chinese, 5) and
macrolanguage members (ar → arb, no → nob, fa-AF → prs, all ≤ 1) and refuses neighbours that are other
languages (sr-Latn → Croatian 9, bs → Croatian 8, yue → Traditional Mandarin 14).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

import langcodes

MAX_DISTANCE = 5
# Macrolanguages whose best NLLB member langcodes does not find (it measures them 84 apart, or maps Twi to
# Akan): the member each model family has.
_OVERRIDES = {"ps": ("pbt", "ps"), "qu": ("quy", "qu"), "tw": ("twi", "tw")}

_NLLB = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")  # deu_Latn
_MBART = re.compile(r"^[a-z]{2}_[A-Z]{2}$")  # de_DE, en_XX
_M2M = re.compile(r"^__([a-z]{2,3})__$")  # __de__
_OPUS = re.compile(r"^>>([A-Za-z_]+)<<$")  # >>deu<<, >>zho_Hans<<


class UnknownLanguageError(ValueError):
    """A language the model does not translate from or into."""


def code_tag(code: str) -> str | None:
    """The BCP-47 tag a model's own code stands for, or None when it stands for none."""
    if match := _M2M.match(code) or _OPUS.match(code):
        code = match.group(1)
    elif _MBART.match(code) and code.endswith("_XX"):  # MBart's "no region"
        code = code[:-3]
    return _standardize(code)


def _standardize(tag: str) -> str | None:
    try:
        return langcodes.standardize_tag(tag.replace("_", "-"))
    except (ValueError, langcodes.LanguageTagError):
        return None


def is_language_code(token: str) -> bool:
    """Whether a special token of a tokenizer is a language code of one of the known families."""
    return bool(_NLLB.match(token) or _MBART.match(token) or _M2M.match(token) or _OPUS.match(token))


class LanguageCodes:
    """The languages of one side of a model (its own codes, in the model's order) and how requests map to them."""

    def __init__(self, codes: Iterable[str]) -> None:
        self.codes: tuple[str, ...] = tuple(dict.fromkeys(c for c in codes if c))
        self._by_lower = {code.lower(): code for code in self.codes}
        self._by_tag: dict[str, str] = {}
        for code in self.codes:
            tag = code_tag(code)
            if tag is not None:
                self._by_tag.setdefault(tag, code)

    def __len__(self) -> int:
        return len(self.codes)

    def __bool__(self) -> bool:
        return bool(self.codes)

    def __contains__(self, code: object) -> bool:
        return code in self._by_lower.values()

    def tag(self, code: str) -> str:
        """The BCP-47 tag of one of the model's codes ('' when it has none)."""
        return code_tag(code) or ""

    def resolve(self, requested: str) -> str:
        """The model's code for `requested`; raises UnknownLanguageError saying why there is none."""
        if code := self._by_lower.get(requested.strip().lower()):  # the model's own code
            return code
        requested = requested.strip()
        # Another family's code (__de__, de_DE, >>deu<<) means its language too.
        tag = code_tag(requested) if is_language_code(requested) else _standardize(requested)
        if tag is None:
            raise UnknownLanguageError(f"{requested!r} is not a language code") from None
        if code := self._match(tag):
            return code
        raise UnknownLanguageError(f"{requested!r} is not one of the model's {len(self)} languages")

    def _match(self, tag: str) -> str | None:
        if tag in self._by_tag:
            return self._by_tag[tag]
        asked = langcodes.Language.get(tag)
        for member in _OVERRIDES.get(asked.language or "", ()):
            for known, code in self._by_tag.items():
                if langcodes.Language.get(known).language == member:
                    return code
        match = _closest(tag, tuple(self._by_tag))
        if match is None:
            return None
        if asked.maximize().script != langcodes.Language.get(match).maximize().script:
            return None  # another script is another output, not a near match
        return self._by_tag[match]


@lru_cache(maxsize=4096)
def _closest(tag: str, supported: tuple[str, ...]) -> str | None:
    # langcodes' matching costs ~1 ms over NLLB's 202 tags; requests repeat their languages.
    match, _distance = langcodes.closest_match(tag, supported, max_distance=MAX_DISTANCE)
    return None if match == "und" else match


class LanguageError(ValueError):
    """A request's language that the model cannot use; `field` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def choose_language(field: str, requested: str | None, languages: LanguageCodes, *, required: bool) -> str | None:
    """The model's code for one side of a request, or None where the model needs none.

    `languages` empty: the model declares no languages, so any request is taken at its word (and unused).
    One language (a single-pair OPUS-MT model): a request must mean that language. Many: it picks one.
    """
    if not requested or not requested.strip():
        if required:
            examples = ", ".join(repr(c) for c in languages.codes[:2])
            raise LanguageError(field, f"the model needs the language named: one of its {len(languages)} "
                                       f"codes ({examples}, ...) or a BCP-47 tag such as 'en'")
        return None
    if not languages:
        return None
    try:
        return languages.resolve(requested)
    except UnknownLanguageError as exc:
        if len(languages) == 1:
            raise LanguageError(field, f"{requested.strip()!r} does not match the model's language "
                                       f"{languages.codes[0]!r}") from None
        raise LanguageError(field, str(exc)) from None
