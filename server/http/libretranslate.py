"""LibreTranslate's API (https://libretranslate.com/docs): POST /translate, GET /languages, POST /detect.

Request and response shapes, error bodies (``{"error": "..."}``) and statuses (400, 403, 429, 500) as
LibreTranslate has them, so its clients (libretranslatepy, Weblate, Nextcloud, browser extensions) work
unchanged. Underneath, a request is one gRPC-service call (its texts split into sentences there, all
sentences one engine request batched with everybody else's); ``alternatives`` are n-best hypotheses.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mtserve.proto.api import pb2

from .. import detection
from .calls import CallFailed, Gateway, HttpCallContext
from .html import translate_html_versions
from .languages import LanguagePairs, language_name
from .requests import HttpError, read_params


def _texts(params: dict[str, Any]) -> tuple[list[str], bool]:
    """q as a list of texts, and whether it was a list."""
    q = params.get("q")
    if q is None:
        raise HttpError(400, "Invalid request: missing q parameter")
    if isinstance(q, str):
        return [q], False
    if isinstance(q, list) and all(isinstance(text, str) for text in q):
        return list(q), True
    raise HttpError(400, "Invalid request: q must be a string or a list of strings")


def _string(params: dict[str, Any], name: str, default: str | None = None) -> str:
    value = params.get(name, default)
    if value is None:
        raise HttpError(400, f"Invalid request: missing {name} parameter")
    if not isinstance(value, str):
        raise HttpError(400, f"Invalid request: {name} must be a string")
    return value


def _alternatives(params: dict[str, Any], limit: int) -> int:
    value = params.get("alternatives", 0)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise HttpError(400, f"Invalid request: alternatives must be an integer, got {value!r}") from None
    if not 0 <= count < limit:
        raise HttpError(400, f"Invalid request: alternatives must be between 0 and {limit - 1}, got {count}")
    return count


class LibreTranslateApi:
    def __init__(self, gateway: Gateway, pairs: LanguagePairs, body_limit: int, max_beam_size: int) -> None:
        self.gateway = gateway
        self.pairs = pairs
        self.body_limit = body_limit
        self.max_beam_size = max_beam_size

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/translate", self.translate, methods=["POST"]),
            Route("/languages", self.languages, methods=["GET", "POST"]),
            Route("/detect", self.detect, methods=["POST"]),
        ]

    async def languages(self, request: Request) -> JSONResponse:
        codes = sorted({*self.pairs.sources, *(t for s in self.pairs.sources for t in self.pairs.targets(s))})
        return JSONResponse([{"code": code, "name": language_name(code), "targets": self.pairs.targets(code)}
                             for code in codes])

    async def detect(self, request: Request) -> JSONResponse:
        params = await read_params(request, self.body_limit)
        self.gateway.authenticate(params.get("api_key"))
        texts, _ = _texts(params)
        found = detection.detect(" ".join(texts), self.pairs.sources)
        if found is None:
            return JSONResponse([])
        return JSONResponse([{"confidence": round(found.confidence * 100, 1), "language": found.language}])

    async def translate(self, request: Request) -> JSONResponse:
        params = await read_params(request, self.body_limit)
        self.gateway.authenticate(params.get("api_key"))
        texts, as_list = _texts(params)
        source, target = _string(params, "source"), _string(params, "target")
        kind = _string(params, "format", "text")
        if kind not in ("text", "html"):
            raise HttpError(400, f"Invalid request: format must be 'text' or 'html', got {kind!r}")
        alternatives = _alternatives(params, self.max_beam_size)

        detected: list[dict[str, Any]] = []
        if source == "auto":
            candidates = self.pairs.to_any(target)
            if not candidates:
                raise HttpError(400, f"{target} is not a target language of this server (GET /languages)")
            sources = []
            for text in texts:
                found = detection.detect(text, candidates)
                if found is None:
                    raise HttpError(400, f"cannot detect the language of {text[:40]!r} among those this server "
                                         f"translates into {target}: {', '.join(candidates)}")
                sources.append(found.language)
                detected.append({"confidence": round(found.confidence * 100, 1), "language": found.language})
        else:
            sources = [source] * len(texts)

        translations: list[list[str]] = []  # per text: the best, then the alternatives
        for language in dict.fromkeys(sources):  # one engine request per source language
            indices = [i for i, s in enumerate(sources) if s == language]
            route = self.pairs.route(language, target)
            if route is None:
                raise HttpError(400, f"{language} to {target} is not served here; GET /languages lists the pairs")
            done = await self._translate_texts([texts[i] for i in indices], language, target, route.model,
                                               route.multilingual, kind, alternatives, request)
            translations += [[] for _ in range(len(texts) - len(translations))]
            for i, versions in zip(indices, done, strict=True):
                translations[i] = versions

        body: dict[str, Any] = {"translatedText": [v[0] for v in translations] if as_list else translations[0][0]}
        if alternatives:
            alts = [v[1:] for v in translations]
            body["alternatives"] = alts if as_list else alts[0]
        if detected:
            body["detectedLanguage"] = detected if as_list else detected[0]
        return JSONResponse(body)

    async def _translate_texts(self, texts: list[str], source: str, target: str, model: str, multilingual: bool,
                               kind: str, alternatives: int, request: Request) -> list[list[str]]:
        """Each text's best translation and `alternatives` more: the texts (or, for HTML, each document's text
        runs) translated in one call."""

        async def translate_pieces(pieces: list[str]) -> list[list[str]]:
            options = pb2.DecodingOptions()  # the service splits each piece into sentences and joins them back
            if alternatives:
                options.num_hypotheses = alternatives + 1
                options.beam_size = max(alternatives + 1, 4)
            message = pb2.TranslateRequest(texts=pieces, model=model, options=options)
            if multilingual:
                message.source_language, message.target_language = source, target
            context = HttpCallContext(request.client, request.headers, timeout=None)
            response = await self.gateway.translate(message, context)
            translations = []
            for result in response.results:
                versions = [h.text for h in result.hypotheses] or [result.text]
                translations.append([versions[min(k, len(versions) - 1)] for k in range(alternatives + 1)])
            return translations

        if kind == "text":
            return await translate_pieces(texts)
        # One engine request per document: its runs' best translations and alternatives together.
        return [await translate_html_versions(text, translate_pieces, alternatives + 1) for text in texts]


async def call_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CallFailed)
    return JSONResponse({"error": exc.details}, status_code=exc.http_status)
