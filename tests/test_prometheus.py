"""Metrics, alert rules and dashboard checked by the real tools: promtool and a real Prometheus server."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, DaemonProcess, Workspace, free_port, png_bytes, wait_until
from tools.make_dashboard import build, expressions

RULES = ROOT / "prometheus" / "inspectd-rules.yml"
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Debian's prometheus package is not installed (make test installs it)",
)


def test_committed_dashboard_is_generated() -> None:
    committed = json.loads((ROOT / "grafana" / "inspectd.json").read_text())
    assert committed == build(), "run: python tools/make_dashboard.py > grafana/inspectd.json"
    assert committed["uid"] == "inspectd-overview"
    assert committed["templating"]["list"][0]["type"] == "datasource"
    titles = {p["title"] for p in committed["panels"]}
    for wanted in (
        "Throughput by verdict",
        "Defect rate (share of images with the symbol)",
        "Latency, file ready to row committed",
        "Queue depth",
        "Errors by reason",
        "Score distribution",
        "Active model version",
    ):
        assert wanted in titles
    for panel in committed["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"


@needs_prometheus
def test_rules_check_and_unit_tests() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 16 rules found" in check.stdout
    unit = subprocess.run(
        ["promtool", "test", "rules", "inspectd-rules.test.yml", "inspectd-rules.week.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


class Prometheus:
    def __init__(self, root: Path, target: str) -> None:
        self.port = free_port()
        config = root / "prometheus.yml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [{"job_name": "inspectd", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.log = (root / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        except OSError:
            return []
        return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    started: list[Prometheus] = []

    def start(port: int) -> Prometheus:
        server = Prometheus(tmp_path, f"127.0.0.1:{port}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def grafana_to_promql(expr: str) -> str:
    """The dashboard's query as Grafana sends it, with the station picked (the label must be there)."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$station", "station-1")
    )


@needs_prometheus
@pytest.mark.slow
def test_real_prometheus_scrapes_the_daemon(
    daemon: Callable[..., DaemonProcess], upgraded: Workspace, prometheus_for: Callable[[int], Prometheus]
) -> None:
    upgraded.write_config(model={"num_threads": 1, "quality_refresh_s": 1})
    proc = daemon()
    _, text = proc.get("/metrics")
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    prom = prometheus_for(upgraded.port)
    wait_until(
        lambda: any(r["value"][1] == "1" for r in prom.query('up{job="inspectd"}')), 60, "first scrape"
    )
    images = 0
    for wave in range(2):  # two waves, so rates and quantiles have something to work on
        for i in range(4):
            upgraded.drop(f"w{wave}-{i}.png", png_bytes(500 + 10 * wave + i, present=bool(i % 2)))
            images += 1
        upgraded.drop(f"w{wave}-bad.png", b"not an image" * wave + b"!")
        images += 1
        proc.wait_rows(images)

        def counted(n: int = images) -> bool:
            result = prom.query("sum(inspectd_images_processed_total)")
            return bool(result) and float(result[0]["value"][1]) == n

        wait_until(counted, 30, f"Prometheus to see {images} images")

    # operators label: one result as the model said, one against it (the quality panels need labels)
    rows = [r for r in upgraded.rows() if r["status"] == "ok"]
    said_present = next(r for r in rows if r["verdict"] == "present")
    said_absent = next(r for r in rows if r["verdict"] == "absent")
    upgraded.cli("label", str(said_present["id"]), "present", "--by", "ana")
    upgraded.cli("label", str(said_absent["id"]), "present", "--by", "ana")  # a miss
    wait_until(
        lambda: len(prom.query('inspectd_labeled_results{window="1d"}')) >= 2, 60, "the labels in Prometheus"
    )
    board = build()
    for annotation in board["annotations"]["list"]:  # valid PromQL (the API answers 400 otherwise)
        prom.api("query", query=grafana_to_promql(annotation["expr"]))
    for expr in expressions(board):
        if "_drift" in expr:
            continue  # needs 600 scores: test_a_darker_stream_drifts_and_the_alert_is_pending, below
        promql = grafana_to_promql(expr)
        result = prom.query(promql)
        assert result, f"no data for dashboard expression: {promql}"

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return (
            rules
            if len(rules) == 16 and all(r.get("lastEvaluation", "0001").startswith("20") for r in rules)
            else None
        )

    rules = wait_until(rules_evaluated, 30, "the alert rules to be evaluated")
    assert all(r["health"] == "ok" for r in rules), rules
    assert proc.stop() == 0


@needs_prometheus
def test_example_prometheus_config(tmp_path: Path) -> None:
    example = (ROOT / "prometheus" / "prometheus.example.yml").read_text()
    config = tmp_path / "prometheus.yml"
    config.write_text(example.replace("/etc/prometheus/inspectd-rules.yml", str(RULES)))
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def darker(png: bytes, factor: float) -> bytes:
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    ok, buf = cv2.imencode(".png", (image.astype(np.float32) * factor).astype(image.dtype))
    assert ok
    return bytes(buf.tobytes())


@needs_prometheus
@pytest.mark.slow
def test_a_darker_stream_drifts_and_the_alert_is_pending(
    daemon: Callable[..., DaemonProcess], upgraded: Workspace, prometheus_for: Callable[[int], Prometheus]
) -> None:
    """The bundled version has no stored reference: its first 500 results here are it. Then the
    camera's images get darker: the input-drift gauge passes 0.25 and the alert's expression holds in a
    real Prometheus (pending: it fires after its 30 minutes)."""
    from inspectd.ops.synth import SynthSpec

    spec = SynthSpec(width=256, height=256)
    upgraded.write_config(model={"num_threads": 1, "quality_refresh_s": 1})
    proc = daemon()
    prom = prometheus_for(upgraded.port)
    for i in range(500):
        upgraded.drop(f"n{i:03d}.png", png_bytes(30_000 + i, spec=spec))
    proc.wait_rows(500, timeout=120)
    assert not prom.query("inspectd_input_drift")
    for i in range(150):
        upgraded.drop(f"d{i:03d}.png", darker(png_bytes(31_000 + i, spec=spec), 0.4))
    proc.wait_rows(650, timeout=120)
    drifted = wait_until(
        lambda: prom.query('inspectd_input_drift{statistic="brightness"} > 0.25'), 60, "brightness drift"
    )
    assert float(drifted[0]["value"][1]) > 0.25
    wait_until(
        lambda: prom.query('ALERTS{alertname="InspectdInputDrift", alertstate="pending"}'),
        60,
        "the drift alert pending",
    )
    assert proc.stop() == 0
