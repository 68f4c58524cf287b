"""Build the Grafana dashboard from code: python tools/make_dashboard.py > grafana/inspectd.json

Every panel's PromQL is evaluated against a real Prometheus in tests/test_prometheus.py; the committed JSON
must equal what this script prints (tests/test_dashboard.py), so edit this file, not the JSON.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

UID = "inspectd-overview"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job=~"$job", station=~"$station", instance=~"$instance"'

# (title, unit, [(expr, legend)], kind, width) — kind: ts (time series), stat, heat (heatmap), state
PANELS: list[tuple[str, str, list[tuple[str, str]], str, int]] = [
    (
        "Throughput by verdict",
        "reqps",
        [
            (
                f'sum by (verdict) (rate(inspectd_images_processed_total{{{SEL}, status="ok"}}'
                "[$__rate_interval]))",
                "{{verdict}}",
            )
        ],
        "ts",
        12,
    ),
    (
        "Defect rate (share of images with the symbol)",
        "percentunit",
        [
            (
                f'sum(rate(inspectd_images_processed_total{{{SEL}, verdict="present"}}[$__rate_interval]))'
                f' / sum(rate(inspectd_images_processed_total{{{SEL}, status="ok"}}[$__rate_interval]))',
                "present",
            )
        ],
        "ts",
        12,
    ),
    (
        "Latency, file ready to row committed",
        "s",
        [
            (
                f"histogram_quantile({q}, sum by (le) "
                f"(rate(inspectd_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        "ts",
        12,
    ),
    (
        "Queue depth",
        "short",
        [
            (f"sum(inspectd_queue_depth_files{{{SEL}}})", "ready, not committed"),
            (f"sum(inspectd_incoming_pending_files{{{SEL}}})", "settling in incoming"),
        ],
        "ts",
        12,
    ),
    (
        "Errors by reason",
        "reqps",
        [(f"sum by (reason) (rate(inspectd_image_errors_total{{{SEL}}}[$__rate_interval]))", "{{reason}}")],
        "ts",
        12,
    ),
    (
        "Stage time (p95): decode per file, the others per batch",
        "s",
        [
            (
                f"histogram_quantile(0.95, sum by (le, stage) "
                f"(rate(inspectd_stage_duration_seconds_bucket{{{SEL}}}"
                f"[$__rate_interval])))",
                "{{stage}}",
            )
        ],
        "ts",
        12,
    ),
    (
        "Score distribution",
        "short",
        [(f"sum by (le) (increase(inspectd_score_bucket{{{SEL}}}[$__rate_interval]))", "{{le}}")],
        "heat",
        12,
    ),
    (
        "Active model version",
        "short",
        [(f"max by (instance, version) (inspectd_model_info{{{SEL}}})", "{{instance}} {{version}}")],
        "state",
        12,
    ),
    (
        "Seconds since last image",
        "s",
        [(f"time() - max(inspectd_last_processed_timestamp_seconds{{{SEL}}})", "since last")],
        "stat",
        6,
    ),
    ("Ready", "short", [(f"min(inspectd_ready{{{SEL}}})", "ready")], "stat", 6),
    ("Database up", "short", [(f"min(inspectd_db_up{{{SEL}}})", "database")], "stat", 6),
    (
        "Precision and recall from operators' labels (7 days)",
        "percentunit",
        [
            (
                f'sum by (model_version) (inspectd_labeled_results{{{SEL}, window="7d", verdict="present", '
                'label="present"}) / sum by (model_version) '
                f'(inspectd_labeled_results{{{SEL}, window="7d", verdict="present"}})',
                "precision {{model_version}}",
            ),
            (
                f'sum by (model_version) (inspectd_labeled_results{{{SEL}, window="7d", verdict="present", '
                'label="present"}) / sum by (model_version) '
                f'(inspectd_labeled_results{{{SEL}, window="7d", label="present"}})',
                "recall {{model_version}}",
            ),
        ],
        "ts",
        12,
    ),
    (
        "Drift against the version's reference (PSI; over 0.25: a shift)",
        "short",
        [
            (f"max by (instance, model_version) (inspectd_score_drift{{{SEL}}})", "scores {{instance}}"),
            (f"max by (instance, statistic) (inspectd_input_drift{{{SEL}}})", "{{statistic}} {{instance}}"),
        ],
        "ts",
        12,
    ),
    (
        "MQTT: results acknowledged and failures",
        "reqps",
        [
            (f"sum(rate(inspectd_mqtt_published_total{{{SEL}}}[$__rate_interval]))", "acknowledged"),
            (
                f"sum by (kind) (rate(inspectd_mqtt_failures_total{{{SEL}}}[$__rate_interval]))",
                "{{kind}} failures",
            ),
        ],
        "ts",
        12,
    ),
    (
        "MQTT backlog (committed, not yet acknowledged)",
        "short",
        [(f"sum by (instance) (inspectd_mqtt_backlog_results{{{SEL}}})", "{{instance}}")],
        "ts",
        12,
    ),
    ("MQTT connected", "short", [(f"min(inspectd_mqtt_connected{{{SEL}}})", "connected")], "stat", 6),
    (
        "Files by disposition (1h)",
        "short",
        [(f"sum by (disposition) (increase(inspectd_files_total{{{SEL}}}[1h]))", "{{disposition}}")],
        "stat",
        6,
    ),
]


def _panel(title: str, unit: str, targets: list[tuple[str, str]], kind: str) -> Any:
    builder: Any
    if kind == "stat":
        builder = stat.Panel()
    elif kind == "heat":
        builder = heatmap.Panel()
    elif kind == "state":
        builder = statetimeline.Panel()
    else:
        builder = timeseries.Panel().min(0)
    builder = builder.title(title).unit(unit).datasource(DS)
    for i, (expr, legend) in enumerate(targets):
        query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
        if kind == "heat":
            query = query.format(PromQueryFormat.HEATMAP)
        builder = builder.with_target(query)
    return builder


def build() -> dict[str, Any]:
    board = (
        dashboard.Dashboard("inspectd")
        .uid(UID)
        .tags(["inspectd"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("job")
            .label("job")
            .datasource(DS)
            .query("label_values(inspectd_build_info, job)")
            .include_all(True)
            .multi(True)
            .all_value(".*")
        )
        .with_variable(
            dashboard.QueryVariable("station")
            .label("station")
            .datasource(DS)
            .query('label_values(inspectd_build_info{job=~"$job"}, station)')
            .include_all(True)
            .multi(True)
            .all_value(".*")
        )
        .annotation(
            # a promotion (or rollback) marked where a station started running another version
            dashboard.AnnotationQuery()
            .name("Model switches")
            .datasource(DS)
            .enable(True)
            .icon_color("purple")
            .expr(
                f"count by (instance, version) (inspectd_model_info{{{SEL}}}) unless "
                f"count by (instance, version) (inspectd_model_info{{{SEL}}} offset 1m)"
            )
        )
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("instance")
            .datasource(DS)
            .query('label_values(inspectd_build_info{job=~"$job", station=~"$station"}, instance)')
            .include_all(True)
            .multi(True)
            .all_value(".*")
        )
    )
    x = y = 0
    for title, unit, targets, kind, width in PANELS:
        height = 4 if kind == "stat" else 8
        if x + width > 24:
            x, y = 0, y + height
        board = board.with_panel(
            _panel(title, unit, targets, kind).grid_pos(GridPos(h=height, w=width, x=x, y=y))
        )
        x += width
    result: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))
    return result


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


if __name__ == "__main__":
    print(json.dumps(build(), indent=2, sort_keys=True))
