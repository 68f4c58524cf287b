"""The operators' pages: the review queue (label with one key), the results browser, the models page;
and what they fetch: images and heatmaps by result id (never by a path from the request), the queue,
labels. Pages are Jinja2 templates (autoescaped); the review page's keys live in static/review.js.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import cv2
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from inspectd.core import results
from inspectd.core.config import Config
from inspectd.core.db import Result
from inspectd.core.records import Verdict
from inspectd.core.registry import ModelRegistry, check_version
from inspectd.ops import labels
from inspectd.ops.explain import to_8bit
from inspectd.web.api import parse_query
from inspectd.web.auth import COOKIE, Access, error
from inspectd.web.explainer import Explainer

HERE = Path(__file__).parent
MAX_BODY = 4096  # a label is a few dozen bytes
THUMB = 160
PLOTS = ("roc", "pr", "confusion", "scores")
PAGE = 50


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=1)
    label: Verdict | None  # None: undo (unlabeled again)
    box: tuple[int, int, int, int] | None = None  # x, y, w, h in frame pixels, where the symbol is


class Pages:
    """The handlers; ``routes()`` mounts them."""

    def __init__(self, engine: Engine, access: Access, cfg: Config) -> None:
        self.engine = engine
        self.access = access
        self.cfg = cfg
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.explainer = Explainer(cfg, engine)
        self.registry = ModelRegistry(cfg.paths.models)

    def page(self, request: Request, name: str, **context: Any) -> Response:
        if (refused := self.access.refusal(request)) is not None:
            if refused.status_code == 401:
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            return refused
        return self.templates.TemplateResponse(request, name, {"open": self.access.open, **context})

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/review", status_code=303)

    async def review_page(self, request: Request) -> Response:
        return self.page(request, "review.html", station=self.cfg.station.name)

    async def queue(self, request: Request) -> Response:
        if (refused := self.access.refusal(request)) is not None:
            return refused
        items = dict(request.query_params)
        limit = items.pop("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 200:
            return error(400, "limit: a whole number from 1 to 200")
        try:
            filters, _ = parse_query(list(items.items()))
        except ValueError as exc:
            return error(400, str(exc))
        if filters.model_version is None:  # after a promotion: what the running model scored
            running = await run_in_threadpool(
                _running_version, self.engine, filters.station or self.cfg.station.name
            )
            if running is not None:
                filters = filters.model_copy(update={"model_version": running})
        rows = await run_in_threadpool(
            labels.review, self.engine, int(limit), max(1, int(limit) // 5), 0, filters
        )
        return JSONResponse({"items": rows, "model_version": filters.model_version})

    async def label(self, request: Request) -> Response:
        if (refused := self.access.write_refusal(request)) is not None:
            return refused
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, f"a label is at most {MAX_BODY} bytes")
        try:
            wanted = LabelIn.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error(400, f"{where}: {first['msg']}")
        by = self.access.user(request)
        return await run_in_threadpool(_write_label, self.engine, wanted, by)

    async def image(self, request: Request) -> Response:
        if (refused := self.access.refusal(request)) is not None:
            return refused
        row = await run_in_threadpool(_stored, self.engine, request.path_params["result_id"])
        if row is None:
            return error(404, "no such result")
        size = THUMB if request.query_params.get("thumb") == "1" else None
        png = await run_in_threadpool(_png, Path(row.stored_path), size)
        if png is None:
            return error(404, "the image is no longer where its row says (moved or deleted)")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def explain(self, request: Request) -> Response:
        if (refused := self.access.refusal(request)) is not None:
            return refused
        row = await run_in_threadpool(_stored, self.engine, request.path_params["result_id"])
        if row is None:
            return error(404, "no such result")
        png = await run_in_threadpool(self.explainer.png, Path(row.stored_path))
        if png is None:
            return error(404, "no heatmap: the image cannot be read or the model cannot be loaded")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    async def results_page(self, request: Request) -> Response:
        if self.access.refusal(request) is not None:
            return self.page(request, "results.html")  # the sign-in redirect, or the refusal
        try:
            filters, _ = parse_query(request.query_params.multi_items())
        except ValueError as exc:
            return error(400, str(exc))
        rows = await run_in_threadpool(_page_of, self.engine, filters)
        after = rows[-1]["id"] if len(rows) == PAGE else None
        query = {k: v for k, v in request.query_params.items() if k != "after"}
        return self.page(request, "results.html", rows=rows, after=after, query=query)

    async def models_page(self, request: Request) -> Response:
        if self.access.refusal(request) is not None:
            return self.page(request, "models.html")  # the sign-in redirect, or the refusal
        versions = await run_in_threadpool(_versions, self.registry, self.engine, self.cfg)
        return self.page(request, "models.html", versions=versions)

    async def plot(self, request: Request) -> Response:
        if (refused := self.access.refusal(request)) is not None:
            return refused
        version, name = request.path_params["version"], request.path_params["plot"]
        if not check_version(version) or name not in PLOTS:
            return error(404, "no such plot")
        path = self.cfg.paths.runs / f"retrain-{version}" / "holdout-candidate" / f"{name}.png"
        if not path.is_file():
            return error(404, "no such plot")
        return Response(path.read_bytes(), media_type="image/png")

    async def login_page(self, request: Request) -> Response:
        return self.templates.TemplateResponse(
            request, "login.html", {"failed": False, "open": self.access.open}
        )

    async def login(self, request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", ""))[:256]
        target = str(request.query_params.get("next", "/review"))
        target = target if target.startswith("/") and not target.startswith("//") else "/review"
        if not any(hmac.compare_digest(token.encode(), t.encode()) for _, t in self.access.tokens):
            context = {"failed": True, "open": self.access.open}
            return self.templates.TemplateResponse(request, "login.html", context, status_code=401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
        return response

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/review", self.review_page, methods=["GET"]),
            Route("/results", self.results_page, methods=["GET"]),
            Route("/models", self.models_page, methods=["GET"]),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/ui/api/queue", self.queue, methods=["GET"]),
            Route("/ui/api/labels", self.label, methods=["POST"]),
            Route("/ui/results/{result_id:int}/image", self.image, methods=["GET"]),
            Route("/ui/results/{result_id:int}/explain", self.explain, methods=["GET"]),
            Route("/ui/models/{version}/{plot}", self.plot, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


def routes(engine: Engine, access: Access, cfg: Config) -> list[BaseRoute]:
    return Pages(engine, access, cfg).routes()


def _running_version(engine: Engine, station: str) -> str | None:
    """The version of the station's newest result: what it runs now."""
    statement = (
        select(Result.model_version)
        .where(Result.station == station, Result.model_version.is_not(None))
        .order_by(Result.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(statement).scalar_one_or_none()


def _write_label(engine: Engine, wanted: LabelIn, by: str | None) -> Response:
    try:
        if wanted.label is None:
            row = labels.clear_label(engine, wanted.id)
        else:
            if wanted.box is not None and wanted.label is not Verdict.PRESENT:
                return error(400, "box: only a present label has a box")
            row = labels.label_result(engine, str(wanted.id), wanted.label.value, by, wanted.box)
    except labels.LabelError as exc:
        return error(404, str(exc))
    return JSONResponse(
        {"id": row.id, "label": row.label, "labeled_by": row.labeled_by, "label_box": row.label_box}
    )


def _stored(engine: Engine, result_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Result.stored_path).where(Result.id == result_id)).one_or_none()


def _png(path: Path, size: int | None) -> bytes | None:
    """The archived image as an 8-bit PNG a browser shows (16-bit, TIFF, BMP too), at most ``size`` px."""
    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None:
        return None
    frame = to_8bit(frame)
    if size is not None:
        scale = size / max(frame.shape[:2])
        if scale < 1:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", frame)
    return bytes(buf.tobytes()) if ok else None


def _page_of(engine: Engine, filters: results.Filters) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return results.as_dicts(conn.execute(results.query(filters).limit(PAGE)))


def _worst(engine: Engine, report: Path) -> list[dict[str, Any]]:
    """A report's most confident false positives; those that are results get their id (a thumbnail)."""
    if not report.is_file():
        return []
    try:
        worst = json.loads(report.read_text()).get("worst_false_positives", [])[:5]
    except (OSError, ValueError):
        return []
    paths = [str(w.get("file", "")) for w in worst]
    with engine.connect() as conn:
        found = conn.execute(select(Result.stored_path, Result.id).where(Result.stored_path.in_(paths)))
        ids = {path: result_id for path, result_id in found}
    return [{**w, "id": ids.get(str(w.get("file", "")))} for w in worst]


def _versions(registry: ModelRegistry, engine: Engine, cfg: Config) -> list[dict[str, Any]]:
    """Each version: its holdout metrics, the stations whose newest result it scored, its plots."""
    with engine.connect() as conn:
        newest = select(Result.station, func.max(Result.id).label("id")).group_by(Result.station).subquery()
        live = conn.execute(
            select(Result.station, Result.model_version).join(newest, Result.id == newest.c.id)
        )
        stations: dict[str, list[str]] = {}
        for station, version in live:
            stations.setdefault(version or "", []).append(station)
    active = registry.active_version()
    out = []
    for meta in reversed(registry.list_versions()):
        run = cfg.paths.runs / f"retrain-{meta.version}" / "holdout-candidate"
        report = run / "report.json"
        worst = _worst(engine, report)
        out.append(
            {
                "version": meta.version,
                "active": meta.version == active,
                "stations": sorted(stations.get(meta.version, [])),
                "holdout": meta.metrics.get("holdout", {}),
                "decision": meta.metrics.get("decision"),
                "plots": [p for p in PLOTS if (run / f"{p}.png").is_file()],
                "worst": worst,
                "created": str(meta.created_at)[:19] if getattr(meta, "created_at", None) else "",
            }
        )
    return out
