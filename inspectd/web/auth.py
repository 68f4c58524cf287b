"""Who may read results over HTTP: anyone on this machine when the server listens on a loopback address
and no token is configured; else only a client that sends the token (``Authorization: Bearer TOKEN``,
``[http] token_file``). Listening beyond this machine without a token serves no results at all."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inspectd.core.config import ConfigError, HttpConfig


@dataclass(frozen=True, slots=True)
class Access:
    token: str | None
    loopback: bool

    @classmethod
    def of(cls, cfg: HttpConfig) -> Access:
        """OSError when the token file cannot be read, ConfigError when it is empty (exit 78 at start)."""
        token = None
        if cfg.token_file is not None:
            lines = cfg.token_file.read_text().splitlines()
            token = lines[0].strip() if lines else ""
            if not token:
                raise ConfigError(f"http.token_file: {cfg.token_file} holds no token")
        return cls(token, cfg.loopback)

    def refusal(self, request: Request) -> Response | None:
        """None when ``request`` may read; else the 401 or 403 to answer."""
        if self.token is None:
            if self.loopback:
                return None
            return _error(403, "results are not served beyond this machine without [http] token_file")
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), self.token.encode()):
            response = _error(401, "send Authorization: Bearer TOKEN (the token of [http] token_file)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="inspectd"'
            return response
        return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
