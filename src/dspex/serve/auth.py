"""API-key auth as pure ASGI middleware (no body buffering, streams untouched).

With a key configured every path but ``/healthz``, ``/readyz`` and the page's static
files needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (constant-time
compare). Without a key (loopback only; ``ServeConfig.check`` enforces it) all is open.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PUBLIC_PATHS", "APIKeyAuth"]

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})


class APIKeyAuth:
    def __init__(self, app: ASGIApp, key: str | None, on_reject: object = None):
        self.app = app
        self.key = key.encode() if key else None
        self.on_reject = on_reject

    def _allowed(self, scope: Scope) -> bool:
        if self.key is None or scope["path"] in PUBLIC_PATHS or scope["path"].startswith("/static/"):
            return True
        given = b""
        for name, value in scope.get("headers") or []:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key" and not given:
                given = value.strip()
        return bool(given) and hmac.compare_digest(given, self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if callable(self.on_reject):
            self.on_reject()
        body = json.dumps({"error": {
            "type": "Unauthorized", "message": "missing or wrong API key",
            "fix": "send Authorization: Bearer <key> (or X-API-Key: <key>)", "retryable": False}}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="dspex"'),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
