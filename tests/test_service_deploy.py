"""The deployment files agree with the code: the dashboard only charts metrics that exist, and
Prometheus scrapes the ports the services listen on."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import service.metrics
import worker.metrics
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _exported_names() -> set[str]:
    assert service.metrics and worker.metrics  # imported for their registrations
    names = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        names.update(metric.name + s for s in SUFFIXES)
    return names


def test_dashboard_charts_only_metrics_the_code_exports() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/midiffusion.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bmidiff_[a-z_]+", e)}
    assert used, "the dashboard charts nothing"
    assert used <= _exported_names(), used - _exported_names()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("state", "queue wait", "run time", "progress", "upload bytes"):
        assert topic in titles


def test_prometheus_scrapes_gateway_and_worker_ports() -> None:
    config = (REPO / "deploy/prometheus/prometheus.yml").read_text()
    assert re.search(r"names: \[gateway\]\s+type: A\s+port: 8000", config)
    assert re.search(r"names: \[worker\]\s+type: A\s+port: 9100", config)
    compose = (REPO / "docker-compose.yml").read_text()
    assert 'MIDIFF_WORKER_METRICS_PORT: "9100"' in compose
    assert '"--port", "8000"' in compose
    assert WorkerSettings(worker_metrics_port=0).worker_metrics_port == 0  # off unless set
