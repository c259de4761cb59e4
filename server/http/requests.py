"""Reading HTTP request bodies within bounds, and the JSON error bodies every endpoint answers with."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


class HttpError(Exception):
    """An error answered as LibreTranslate does: its status and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 once it passes `limit` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body: {int(declared)} bytes, at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpError(413, f"request body: more than {limit} bytes")
    return bytes(body)


async def read_params(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object, or form fields (application/x-www-form-urlencoded), as LibreTranslate accepts both;
    a form field given twice (q=a&q=b) is a list."""
    body = await read_body(request, limit)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or (not kind and body.lstrip()[:1] == b"{"):
        try:
            params = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"Invalid request: the body is not valid JSON ({exc})") from None
        if not isinstance(params, dict):
            raise HttpError(400, "Invalid request: the body must be a JSON object")
        return params
    if kind == "application/x-www-form-urlencoded":
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise HttpError(400, "Invalid request: the form is not UTF-8") from None
        return {key: values[0] if len(values) == 1 else values for key, values in form.items()}
    if not body:
        return dict(request.query_params)
    raise HttpError(415, f"Invalid request: content-type {kind!r}; send application/json or "
                         "application/x-www-form-urlencoded")
