"""The results API through real servers (the daemon's, and ``inspectd serve``) on a real database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from inspectd.core.db import Result, result_columns
from tests.conftest import DaemonProcess, Workspace, png_bytes, wait_until

Start = Callable[..., DaemonProcess]


def get(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return int(response.status)


def fake_rows(n: int, start: int = 0, station: str = "line-1") -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "content_hash": f"{start + i:064x}",
            "original_name": f"f{start + i}.png",
            "stored_path": f"/p/f{start + i}.png",
            "size_bytes": 1000,
            "width": 64,
            "height": 64,
            "received_at": now,
            "processed_at": now,
            "latency_s": 0.01,
            "model_version": "bundled-2",
            "threshold": 0.5,
            "score": (i % 100) / 100,
            "verdict": "present" if i % 100 >= 50 else "absent",
            "status": "ok",
            "station": station,
        }
        for i in range(n)
    ]


class Server:
    """``inspectd serve`` in a child process."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.log = ws.root / "serve.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inspectd", "--config", str(ws.config), "serve"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                return healthz(ws.port) == 200
            except OSError:
                return False

        wait_until(up, 30, "inspectd serve up")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def serve(upgraded: Workspace) -> Iterator[Callable[[], Server]]:
    started: list[Server] = []

    def start() -> Server:
        started.append(Server(upgraded))
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()


def test_the_api_serves_what_the_cli_exports(daemon: Start, upgraded: Workspace) -> None:
    proc = daemon()
    upgraded.drop("a.png", png_bytes(71))
    upgraded.drop("b.png", b"not an image")
    proc.wait_rows(2)
    status, page = get(upgraded.port, "/api/v1/results")
    assert status == 200 and page["next_after"] is None
    cli = [json.loads(line) for line in upgraded.cli("results", "--format", "jsonl").stdout.splitlines()]
    assert page["results"] == cli and list(page["results"][0]) == list(result_columns())
    first = page["results"][0]
    assert get(upgraded.port, f"/api/v1/results/{first['id']}") == (200, first)
    assert get(upgraded.port, "/api/v1/results/999999")[0] == 404
    assert get(upgraded.port, "/api/v1/results?status=error")[1]["results"][0]["original_name"] == "b.png"
    wanted = {k: first[k] for k in ("verdict", "station", "model_version")}
    only = get(upgraded.port, "/api/v1/results?" + urllib.parse.urlencode(wanted))
    assert only[0] == 200 and [r["id"] for r in only[1]["results"]] == [first["id"]]
    assert get(upgraded.port, "/api/v1/results?since=1h")[1]["results"] == cli
    assert get(upgraded.port, "/api/v1/results?since=2099-01-01")[1]["results"] == []
    assert proc.stop() == 0


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("verdict=maybe", "verdict"),
        ("status=fine", "status"),
        ("since=yesterday-ish", "since"),
        ("after=-1", "after"),
        ("after=x", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("colour=red", "colour: unknown parameter"),
        ("station=a&station=b", "station: given more than once"),
    ],
)
def test_a_bad_filter_is_a_400_that_names_it(
    serve: Callable[[], Server], upgraded: Workspace, query: str, named: str
) -> None:
    server = serve()
    status, body = get(upgraded.port, f"/api/v1/results?{query}")
    assert status == 400 and body["error"].startswith(named.split(":")[0]) and named in body["error"]
    assert get(upgraded.port, "/api/v1/results/abc")[0] == 400
    assert server.stop() == 0


def test_paging_through_10000_results_while_rows_are_inserted(
    serve: Callable[[], Server], upgraded: Workspace
) -> None:
    engine = sa.create_engine(upgraded.db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Result), fake_rows(10_000))
    with engine.connect() as conn:
        original = {i for (i,) in conn.execute(sa.select(Result.id))}
    server = serve()
    inserting = threading.Event()

    def insert_more() -> None:
        for n in range(40):  # 2,000 more rows, in small commits, while the client pages
            with engine.begin() as conn:
                conn.execute(sa.insert(Result), fake_rows(50, start=20_000 + 50 * n))
            time.sleep(0.01)
        inserting.set()

    writer = threading.Thread(target=insert_more)
    writer.start()
    seen: list[int] = []
    after: int | None = 0
    while after is not None:
        status, page = get(upgraded.port, f"/api/v1/results?limit=700&after={after}")
        assert status == 200, page
        seen.extend(r["id"] for r in page["results"])
        after = page["next_after"]
    writer.join()
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # nothing repeated
    assert original <= set(seen)  # nothing skipped
    assert server.stop() == 0
    engine.dispose()


def test_results_beyond_this_machine_need_the_token(upgraded: Workspace, serve: Callable[[], Server]) -> None:
    upgraded.write_config(http={"listen": f"0.0.0.0:{upgraded.port}"})
    server = serve()
    status, body = get(upgraded.port, "/api/v1/results")
    assert status == 403 and "token_file" in body["error"]
    assert healthz(upgraded.port) == 200  # the health checks stay open
    assert server.stop() == 0
    token = upgraded.root / "token"
    token.write_text("s3cret-token\n")
    upgraded.write_config(http={"listen": f"0.0.0.0:{upgraded.port}", "token_file": str(token)})
    server = serve()
    assert get(upgraded.port, "/api/v1/results")[0] == 401
    assert get(upgraded.port, "/api/v1/results", token="wrong")[0] == 401
    assert get(upgraded.port, "/api/v1/results", token="s3cret-token") == (
        200,
        {"results": [], "next_after": None},
    )
    assert server.stop() == 0
    token.write_text("\n")
    result = upgraded.cli("serve", check=False, timeout=30)
    assert result.returncode == 78 and "holds no token" in result.stderr and "Traceback" not in result.stderr


def test_the_openapi_document_is_derived_from_the_filters_and_the_table(
    serve: Callable[[], Server], upgraded: Workspace
) -> None:
    from inspectd.core.results import Filters

    server = serve()
    status, doc = get(upgraded.port, "/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    listing = doc["paths"]["/api/v1/results"]["get"]
    assert [p["name"] for p in listing["parameters"]] == [*Filters.model_fields, "limit"]
    assert list(doc["components"]["schemas"]["Result"]["properties"]) == list(result_columns())
    refs = [p["schema"] for p in listing["parameters"] if "$ref" in json.dumps(p["schema"])]
    for ref in refs:  # every reference resolves inside the document
        target = json.dumps(ref).split('"#/components/schemas/')[1].split('"')[0]
        assert target in doc["components"]["schemas"]
    assert server.stop() == 0


def test_serve_at_a_schema_behind_exits_78(ws: Workspace) -> None:
    result = ws.cli("serve", check=False, timeout=30)  # never upgraded
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert Path(ws.config).exists()


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    for key, value in headers.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_a_label_write_with_bad_input_is_a_4xx_and_changes_nothing(
    serve: Callable[[], Server], upgraded: Workspace
) -> None:
    engine = sa.create_engine(upgraded.db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Result), fake_rows(3))
    server = serve()
    ok = {"Content-Type": "application/json", "X-Inspectd-Request": "1"}
    cases = [
        (json.dumps({"id": 99, "label": "present"}).encode(), ok, 404),
        (json.dumps({"id": 1, "label": "maybe"}).encode(), ok, 400),
        (json.dumps({"id": 1, "label": "absent", "box": [1, 2, 3, 4]}).encode(), ok, 400),
        (json.dumps({"id": 1, "label": "present", "colour": "red"}).encode(), ok, 400),
        (b"{not json", ok, 400),
        (json.dumps({"id": 1, "label": "present", "pad": "x" * 5000}).encode(), ok, 413),
        (json.dumps({"id": 1, "label": "present"}).encode(), {"Content-Type": "application/json"}, 403),
        (json.dumps({"id": 1, "label": "present"}).encode(), {**ok, "Content-Type": "text/plain"}, 415),
        (json.dumps({"id": 1, "label": "present"}).encode(), {**ok, "Origin": "http://evil.example"}, 403),
    ]
    for body, headers, code in cases:
        status, answer = post(upgraded.port, "/ui/api/labels", body, headers)
        assert status == code and answer["error"], (body[:60], status, answer)
    assert all(r["label"] is None for r in upgraded.rows())  # nothing changed
    status, saved = post(
        upgraded.port, "/ui/api/labels", json.dumps({"id": 2, "label": "present"}).encode(), ok
    )
    assert status == 200 and saved["label"] == "present"
    assert get(upgraded.port, "/ui/results/99/image")[0] == 404
    assert server.stop() == 0
    engine.dispose()


def test_no_path_from_the_request_reaches_the_filesystem(
    serve: Callable[[], Server], upgraded: Workspace
) -> None:
    server = serve()
    import http.client

    for path in (
        "/ui/results/../../etc/passwd/image",
        "/ui/results/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/ui/models/../../etc/passwd",
        "/ui/models/v1/..%2f..%2fetc%2fpasswd",
    ):
        conn = http.client.HTTPConnection("127.0.0.1", upgraded.port, timeout=10)
        conn.request("GET", path)  # sent as is, not normalised by a client library
        response = conn.getresponse()
        body = response.read()
        assert response.status == 404 and b"root:" not in body, (path, response.status)
        conn.close()
    assert server.stop() == 0


def test_beyond_loopback_without_tokens_no_label_is_taken(
    serve: Callable[[], Server], upgraded: Workspace
) -> None:
    engine = sa.create_engine(upgraded.db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(Result), fake_rows(1))
    upgraded.write_config(http={"listen": f"0.0.0.0:{upgraded.port}"})
    server = serve()
    headers = {"Content-Type": "application/json", "X-Inspectd-Request": "1"}
    status, body = post(
        upgraded.port, "/ui/api/labels", json.dumps({"id": 1, "label": "present"}).encode(), headers
    )
    assert status == 403 and "token_file" in body["error"]
    assert upgraded.rows()[0]["label"] is None
    assert server.stop() == 0
    engine.dispose()
