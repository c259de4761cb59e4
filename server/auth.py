"""Bearer tokens: who may call, and under which name logs and metrics know them.

The token file holds one token per line, ``TOKEN`` or ``NAME TOKEN`` (blank lines and ``#`` comments
ignored); a token without a name is known as ``token-<line number>``. It is re-read on SIGHUP
(:meth:`TokenFile.reload`). A call proves itself with ``authorization: Bearer <token>`` metadata.

Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every known token, so the
time taken says nothing about how much of a guess was right. No token ever reaches a log line, a metric
or an error message: callers are named by their token's name.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The token name of the call being handled (set by interceptors.AuthInterceptor), or None without auth.
current_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("mtserve_caller", default=None)

_PREFIX = "bearer "


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and the line, never a token."""


@dataclass(frozen=True)
class _Token:
    name: str
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_tokens(text: str, path: str = "<tokens>") -> list[_Token]:
    tokens: list[_Token] = []
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) > 2:
            raise TokenFileError(f"{path}:{number}: expected TOKEN or NAME TOKEN, got {len(fields)} fields")
        name, token = (fields[0], fields[1]) if len(fields) == 2 else (f"token-{number}", fields[0])
        if len(token) < 16:
            raise TokenFileError(f"{path}:{number}: the token of {name!r} is shorter than 16 characters")
        if name in names:
            raise TokenFileError(f"{path}:{number}: the name {name!r} is given twice")
        names.add(name)
        tokens.append(_Token(name, _digest(token)))
    if not tokens:
        raise TokenFileError(f"{path}: no tokens (one per line: TOKEN or NAME TOKEN)")
    return tokens


class TokenFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens = self._read()

    @property
    def names(self) -> list[str]:
        return [token.name for token in self._tokens]

    def reload(self) -> bool:
        """Re-read the file (SIGHUP); a file that cannot be used is logged and the tokens in use stay."""
        try:
            self._tokens = self._read()
        except TokenFileError as exc:
            log.error("tokens not reloaded, the ones in use stay: %s", exc)
            return False
        log.info("tokens reloaded from %s: %d token(s)", self.path, len(self._tokens))
        return True

    def caller(self, authorization: str | None) -> str | None:
        """The name of the token an ``authorization`` header value carries, or None when it carries none."""
        if not authorization or authorization[: len(_PREFIX)].lower() != _PREFIX:
            return None
        presented = _digest(authorization[len(_PREFIX):].strip())
        found = None
        for token in self._tokens:  # every one, whatever matches, so the time does not tell which
            if hmac.compare_digest(presented, token.digest):
                found = token.name
        return found

    def _read(self) -> list[_Token]:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"auth_token_file: cannot read {self.path}: {exc}") from None
        return parse_tokens(text, self.path)


__all__ = ["TokenFile", "TokenFileError", "current_caller", "parse_tokens"]
