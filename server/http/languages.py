"""The language pairs the served models offer, in LibreTranslate's terms (ISO 639-1 or BCP-47 tags).

A single-pair model offers its pair; a multilingual one every pair of its languages. A pair served by
several models goes to the first of them in the server's order (the default model first).
"""

from __future__ import annotations

from dataclasses import dataclass

import langcodes

from ..registry import ModelRegistry


@dataclass(frozen=True)
class Route:
    model: str
    multilingual: bool  # the request names its languages (source_language / target_language)


class NotReadyError(Exception):
    """The models are still loading: no pair is known yet."""


class LanguagePairs:
    """Read from the registry once its models have loaded (the HTTP port opens before that)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._known: dict[tuple[str, str], Route] | None = None

    @property
    def _routes(self) -> dict[tuple[str, str], Route]:
        if self._known is None:
            if not self.registry.ready:
                raise NotReadyError("the server is loading its models; try again shortly")
            self._known = self._read()
        return self._known

    def _read(self) -> dict[tuple[str, str], Route]:
        routes: dict[tuple[str, str], Route] = {}
        for model in self.registry.ordered():
            tags = [model.languages.tag(code) for code in model.languages.codes]
            if tags:
                pairs = [(s, t) for s in tags for t in tags if s != t]
            else:
                pairs = [(model.source_language, model.target_language)]
            for pair in pairs:
                if all(pair):
                    routes.setdefault(pair, Route(model.name, bool(tags)))
        return routes

    def route(self, source: str, target: str) -> Route | None:
        return self._routes.get((source, target))

    @property
    def sources(self) -> list[str]:
        return sorted({source for source, _ in self._routes})

    def targets(self, source: str) -> list[str]:
        return sorted(target for s, target in self._routes if s == source)

    def to_any(self, target: str) -> list[str]:
        """The sources some model translates into `target`."""
        return sorted(source for source, t in self._routes if t == target)


def language_name(tag: str) -> str:
    """English name of a language tag ("de" -> "German"), the tag itself when unknown."""
    try:
        return str(langcodes.get(tag).display_name("en"))
    except (langcodes.tag_parser.LanguageTagError, ValueError):
        return tag
