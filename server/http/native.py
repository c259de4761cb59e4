"""mtserve's own JSON API, the gRPC API in JSON (protobuf's JSON mapping, field names as in the .proto):

    POST /v1/translate          a TranslateRequest -> a TranslateResponse
    POST /v1/translate/stream   a TranslateRequest -> TranslateStreamResponse messages, one JSON per line
    GET  /v1/models             a ListModelsResponse

Authentication, when the server has tokens: ``Authorization: Bearer <token>``, as on gRPC.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from mtserve.proto.api import pb2

from .calls import CallFailed, Gateway, HttpCallContext, http_status
from .requests import HttpError, read_body


def _as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class NativeApi:
    def __init__(self, gateway: Gateway, body_limit: int) -> None:
        self.gateway = gateway
        self.body_limit = body_limit

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/v1/translate", self.translate, methods=["POST"]),
            Route("/v1/translate/stream", self.translate_stream, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ]

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        self.gateway.authenticate(token.strip() if scheme.lower() == "bearer" else None)

    async def _request(self, request: Request) -> Any:
        body = await read_body(request, self.body_limit)
        try:
            return json_format.Parse(body or b"{}", pb2.TranslateRequest())
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"Invalid request: {exc}") from None

    async def translate(self, request: Request) -> JSONResponse:
        self._authenticate(request)
        message = await self._request(request)
        context = HttpCallContext(request.client, request.headers, timeout=None)
        response = await self.gateway.translate(message, context)
        return JSONResponse(_as_json(response), headers={"x-request-id": context.request_id})

    async def translate_stream(self, request: Request) -> StreamingResponse:
        self._authenticate(request)
        message = await self._request(request)
        context = HttpCallContext(request.client, request.headers, timeout=None)
        stream = self.gateway.translate_stream(message, context)
        # The first message (or the error) before the status line goes out: a refused call is a 4xx/5xx,
        # not a 200 with an error inside.
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = None

        async def lines() -> AsyncIterator[bytes]:
            if first is not None:
                yield json.dumps(_as_json(first)).encode() + b"\n"
            try:
                async for item in stream:
                    yield json.dumps(_as_json(item)).encode() + b"\n"
            except CallFailed as exc:  # after the status line: the error is the last line
                yield json.dumps({"error": exc.details, "status": http_status(exc.code)}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"x-request-id": context.request_id})

    async def models(self, request: Request) -> JSONResponse:
        self._authenticate(request)
        response = await self.gateway.service.ListModels(pb2.ListModelsRequest(),
                                                         HttpCallContext(request.client, request.headers, None))
        return JSONResponse(_as_json(response))
