"""The languages of a request's texts: the request-wide pair, per-text overrides, mapped to the model's codes."""

from __future__ import annotations

from collections.abc import Sequence

from mtserve.model.languages import LanguageError
from mtserve.model.tokenizers import Tokenizer, choose_languages

from .errors import ValidationError, excerpt

Pair = tuple[str | None, str | None]  # the model's (source, target) codes; None where it needs none


def text_languages(
    tokenizer: Tokenizer,
    model_name: str,
    count: int,
    source_language: str,
    target_language: str,
    source_languages: Sequence[str],
    target_languages: Sequence[str],
) -> list[Pair]:
    """Each text's pair; INVALID_ARGUMENT (ValidationError) naming the field at fault: a per-text list of
    the wrong length, or a language the model does not translate (the message says how to list them)."""
    for name, given in (("source_languages", source_languages), ("target_languages", target_languages)):
        if given and len(given) != count:
            raise ValidationError(name, f"{len(given)} entries for {count} texts: give none, or one per text")
    pairs: list[Pair] = []
    chosen: dict[tuple[str, str, str, str], Pair] = {}  # a request repeats its languages: resolve each once
    for i in range(count):
        source, source_field = _pick(source_languages, i, source_language, "source")
        target, target_field = _pick(target_languages, i, target_language, "target")
        key = (source, target, source_field, target_field)
        if key not in chosen:
            try:
                chosen[key] = choose_languages(tokenizer, source, target, (source_field, target_field))
            except LanguageError as exc:
                raise ValidationError(exc.field, _explain(str(exc), tokenizer, model_name)) from None
        pairs.append(chosen[key])
    return pairs


def _pick(per_text: Sequence[str], i: int, shared: str, side: str) -> tuple[str, str]:
    if per_text and per_text[i].strip():
        return excerpt(per_text[i]), f"{side}_languages[{i}]"
    return excerpt(shared), f"{side}_language"


def _explain(message: str, tokenizer: Tokenizer, model_name: str) -> str:
    if len(tokenizer.target_languages) > 1:
        return f"{message} (ListModels lists the languages of model {model_name!r})"
    return message
