"""Bearer-token authentication and scopes.

The configuration keeps only the sha256 of each token (``http.tokens``). A request's token
is hashed and compared with *every* configured hash by ``hmac.compare_digest``, with no
early exit, so the time taken says nothing about which token (if any) matched or where it
sits in the list. 401 (with ``WWW-Authenticate: Bearer``) when the token is missing or
unknown; 403 when it is known but lacks the endpoint's scope (the answer names the scope).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from pbxbrain.api.errors import ApiError
from pbxbrain.config import ApiToken, Scope

__all__ = ["Client", "TokenRegistry"]

# RFC 6750 b64token, bounded: anything else cannot be one of our tokens.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")
_REALM = 'Bearer realm="pbxbrain"'


@dataclass(frozen=True, slots=True)
class Client:
    """Who is calling: the token's name and scopes."""

    name: str
    scopes: frozenset[str]


class TokenRegistry:
    """The configured tokens, by sha256."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = [(bytes.fromhex(token.sha256), Client(token.name, frozenset(token.scopes)))
                        for token in tokens]

    def __len__(self) -> int:
        return len(self._tokens)

    def identify(self, token: str) -> Client | None:
        """The client whose token this is, or None; constant time over all tokens."""
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found: Client | None = None
        for expected, client in self._tokens:
            match = hmac.compare_digest(digest, expected)
            if match and found is None:
                found = client
        return found

    def authenticate(self, request: web.Request, scope: Scope) -> Client:
        """The client of ``request`` if it may use ``scope``; else raise 401 or 403."""
        header = request.headers.get("Authorization")
        if header is None:
            raise ApiError(401, "send the API token as Authorization: Bearer <token>",
                           code="unauthorized", headers={"WWW-Authenticate": _REALM})
        kind, _, token = header.strip().partition(" ")
        if kind.lower() != "bearer":
            raise ApiError(401, "use the Bearer scheme: Authorization: Bearer <token>",
                           code="unauthorized", headers={"WWW-Authenticate": _REALM})
        token = token.strip()
        client = self.identify(token) if _TOKEN.fullmatch(token) else None
        if client is None:
            raise ApiError(401, "the API token is not valid", code="invalid_token",
                           headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'})
        if scope not in client.scopes:
            raise ApiError(403, f"this token ({client.name}) lacks the '{scope}' scope that "
                                f"{request.method} {request.path} needs",
                           code="insufficient_scope",
                           headers={"WWW-Authenticate":
                                    f'{_REALM}, error="insufficient_scope", scope="{scope}"'})
        return client
