"""What the HTTP server serves beyond /metrics and the health checks: the results API (and, next, the
operators' pages). The daemon mounts it; ``inspectd serve`` serves it without a daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from starlette.routing import BaseRoute

    from inspectd.core.config import Config
    from inspectd.web.auth import Access


def routes(engine: Engine, access: Access, cfg: Config) -> list[BaseRoute]:
    """The API and the pages, for the daemon's server and ``inspectd serve``."""
    from inspectd.web import api, pages

    return [*api.routes(engine, access), *pages.routes(engine, access, cfg)]
