"""Who may read results and write labels over HTTP.

- ``[http] token_file`` unset: anyone on this machine may read and label when the server listens on a
  loopback address (labels are signed with the name the page is given); listening beyond this machine
  without tokens serves no results and takes no label (403).
- ``[http] token_file`` set: each line is ``NAME TOKEN`` (or a bare ``TOKEN``, named ``operator``); every
  request must carry one, as ``Authorization: Bearer TOKEN`` (API clients) or as the cookie the login
  page sets (browsers); the label is signed with its NAME.

Writes are CSRF-safe: they must be JSON with the ``X-Inspectd-Request`` header (neither can be sent
cross-site without a CORS preflight, which this server never grants), an ``Origin`` when present must be
this server, and the cookie is ``SameSite=Strict``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inspectd.core.config import ConfigError, HttpConfig

COOKIE = "inspectd_token"
WRITE_HEADER = "x-inspectd-request"
ANONYMOUS = "operator"


@dataclass(frozen=True, slots=True)
class Access:
    tokens: tuple[tuple[str, str], ...]  # (name, token)
    loopback: bool

    @classmethod
    def of(cls, cfg: HttpConfig) -> Access:
        """OSError when the token file cannot be read, ConfigError when it holds no token (exit 78)."""
        tokens: list[tuple[str, str]] = []
        if cfg.token_file is not None:
            for number, line in enumerate(cfg.token_file.read_text().splitlines(), start=1):
                words = line.split()
                if not words or words[0].startswith("#"):
                    continue
                if len(words) > 2:
                    raise ConfigError(f"http.token_file: line {number}: expected NAME TOKEN or TOKEN")
                tokens.append((words[0], words[1]) if len(words) == 2 else (ANONYMOUS, words[0]))
            if not tokens:
                raise ConfigError(f"http.token_file: {cfg.token_file} holds no token")
        return cls(tuple(tokens), cfg.loopback)

    @property
    def open(self) -> bool:
        """No token needed: loopback and no tokens configured."""
        return not self.tokens and self.loopback

    def user(self, request: Request) -> str | None:
        """The name of the token the request carries (header or cookie); None when it carries none that
        is valid. On an open server, the name the page sends (``X-Inspectd-User``), else ``operator``."""
        if self.open:
            name = request.headers.get("x-inspectd-user", "").strip()[:64]
            return name or ANONYMOUS
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        candidate = sent.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
        for name, token in self.tokens:
            if candidate and hmac.compare_digest(candidate.encode(), token.encode()):
                return name
        return None

    def refusal(self, request: Request) -> Response | None:
        """None when ``request`` may read; else the 401 or 403 to answer."""
        if not self.tokens and not self.loopback:
            return error(403, "results are not served beyond this machine without [http] token_file")
        if self.user(request) is None:
            response = error(401, "send Authorization: Bearer TOKEN (a token of [http] token_file)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="inspectd"'
            return response
        return None

    def write_refusal(self, request: Request) -> Response | None:
        """None when ``request`` may write (a label); else the 4xx to answer. Reading rules, plus CSRF."""
        if (refused := self.refusal(request)) is not None:
            return refused
        if request.headers.get(WRITE_HEADER) != "1":
            return error(403, f"a write needs the {WRITE_HEADER} header (the review page sends it)")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return error(415, "send JSON")
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return error(403, "a write from another site")
        return None


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
