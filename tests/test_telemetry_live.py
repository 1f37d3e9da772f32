"""Telemetry against real services: a gateway with two uvicorn processes, a real Celery worker
with its exporter (both in prometheus-client's multiprocess mode), a real Redis, and a real
Prometheus running the project's scrape configuration and alert rules.

One short job is cancelled while a second waits behind it, then the second is translated. The
tests check that every metric the dashboard and the rules read exists and moved, that the
gateway's processes add up, and that every dashboard query and every alert expression is valid
on Prometheus and returns data.

With ``MIDIFF_DASHBOARD_DATA=<file>`` set, the run also stores every dashboard query over its
own time span, for ``docs/figures/dashboard.py`` to draw (``MIDIFF_DASHBOARD_JOBS`` adds jobs).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from telemetry_support import (
    DEPLOY,
    PrometheusServer,
    Sample,
    alert_rules,
    dashboard_targets,
    free_port,
    metric_names,
    scrape,
    scrape_config_for,
    split_comparison,
    store_with_two_draws,
    value,
)
from test_service_support import (
    API_KEY,
    AUTH,
    REPO,
    WorkerProcess,
    redis_db,
    stop_process,
    wait_for,
    wait_until_ready,
    worker_env,
    write_nifti,
)

pytestmark = pytest.mark.slow
LONG_STEPS = 400  # the first job only ends by its cancel
LIVE_ENDPOINTS = 20  # GET /health/live calls, spread over the gateway's processes


@dataclass
class Run:
    gateway: str
    worker_metrics: str
    prometheus: PrometheusServer
    worker_multiproc: Path
    gateway_log: Path
    started: float
    before: dict[str, list[Sample]] = field(default_factory=dict)
    during: dict[str, list[Sample]] = field(default_factory=dict)
    after: dict[str, list[Sample]] = field(default_factory=dict)
    live_calls_before: float = 0.0
    jobs: dict[str, dict] = field(default_factory=dict)

    def scrape_both(self) -> dict[str, list[Sample]]:
        return {
            "gateway": scrape(httpx.get(f"{self.gateway}/metrics", timeout=10).text),
            "worker": scrape(httpx.get(self.worker_metrics, timeout=10).text),
        }


def _gateway(tmp: Path, url: str, models: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIDIFF_", "PROMETHEUS_"))}
    env.update(
        PYTHONPATH=str(REPO),
        MIDIFF_REDIS_URL=url,
        MIDIFF_STORAGE_DIR=str(tmp / "storage"),
        MIDIFF_MODEL_DIR=str(models),
        MIDIFF_API_KEYS=API_KEY,
        MIDIFF_CLEANUP_INTERVAL_S="0",
        MIDIFF_RETRY_AFTER_S="1",
    )
    log_path = tmp / "gateway.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "midiffusion.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}", log_path


def _submit(client: httpx.Client, path: Path, steps: int) -> str:
    with open(path, "rb") as fh:
        response = client.post(
            "/translate", files={"file": (path.name, fh)}, data={"steps": str(steps)}
        )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _finished(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    return wait_for(
        lambda: (
            (job := client.get(f"/jobs/{job_id}").json())["state"]
            in ("succeeded", "failed", "cancelled")
            and job
        ),
        timeout=timeout,
        interval=0.2,
        what=f"job {job_id} to finish",
    )


def _scraped_after(prometheus: PrometheusServer, moment: float) -> bool:
    """Both targets were scraped after ``moment`` (epoch seconds)."""
    answer = prometheus.query("timestamp(up)")
    stamps = [float(r["value"][1]) for r in answer["data"]["result"]]
    return len(stamps) == 2 and min(stamps) > moment


@pytest.fixture(scope="module")
def run(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_store
) -> Iterator[Run]:
    url = redis_db(redis_url, 12)
    redis.Redis.from_url(url).flushdb()
    tmp = tmp_path_factory.mktemp("telemetry-live")
    models = store_with_two_draws(tiny_model_store.root, tmp / "models")
    worker_port = free_port()
    multiproc = tmp / "worker-metrics"
    multiproc.mkdir()
    worker = WorkerProcess(
        worker_env(url, tmp / "storage", models, MIDIFF_WORKER_METRICS_PORT=str(worker_port))
        | {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
        "telemetry",
    )
    gateway, base, gateway_log = _gateway(tmp, url, models)
    prometheus = None
    try:
        wait_until_ready(gateway, base, gateway_log)
        config = scrape_config_for(
            {
                "midiffusion-gateway": base.removeprefix("http://"),
                "midiffusion-worker": f"127.0.0.1:{worker_port}",
            },
            [DEPLOY / "prometheus" / "alerts.yml"],
        )
        prometheus = PrometheusServer(config, tmp / "prometheus")
        wait_for(prometheus.ready, timeout=60, interval=0.2, what="prometheus to be ready")
        up = "sum(up)"
        wait_for(
            lambda: (r := prometheus.query(up)["data"]["result"]) and float(r[0]["value"][1]) == 2,
            timeout=60,
            interval=0.2,
            what="prometheus to scrape gateway and worker",
        )
        live = Run(
            base, f"http://127.0.0.1:{worker_port}/metrics", prometheus, multiproc, gateway_log, 0.0
        )
        live.started = time.time()
        live.before = live.scrape_both()
        live.live_calls_before = value(
            live.before["gateway"], "midiff_http_requests_total", route="/health/live"
        )
        source = write_nifti(tmp / "scan.nii.gz", (32, 32, 3))
        with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
            # a refused upload (the rejected-submissions counter) and two jobs, the second
            # waiting in Redis while the first runs
            bad = client.post("/translate", files={"file": ("x.nii", b"not a nifti")})
            assert bad.status_code == 422, bad.text
            # a labelled series appears with its first request: let Prometheus see it once,
            # so that the jobs' POSTs are an increase (a rate) and not its starting value
            refused = time.time()
            wait_for(lambda: _scraped_after(prometheus, refused), timeout=60, what="a scrape")
            first = _submit(client, source, LONG_STEPS)
            second = _submit(client, source, 3)
            wait_for(
                lambda: client.get(f"/jobs/{first}").json()["progress"]["step"] >= 1,
                timeout=120,
                interval=0.1,
                what="the first job to report progress",
            )
            live.during = live.scrape_both()
            assert client.delete(f"/jobs/{first}").status_code in (200, 202)
            live.jobs["cancelled"] = _finished(client, first)
            live.jobs["succeeded"] = _finished(client, second)
            for _ in range(int(os.environ.get("MIDIFF_DASHBOARD_JOBS", "0"))):
                live.jobs["extra"] = _finished(client, _submit(client, source, 3))
        for _ in range(LIVE_ENDPOINTS):
            with httpx.Client() as fresh:  # a new connection each: spread over the processes
                assert fresh.get(f"{base}/health/live").status_code == 200
        done = time.time()
        wait_for(
            lambda: _scraped_after(prometheus, done),
            timeout=60,
            interval=0.2,
            what="prometheus to scrape both targets after the jobs",
        )
        live.after = live.scrape_both()
        yield live
        data_file = os.environ.get("MIDIFF_DASHBOARD_DATA")
        if data_file:
            _store_dashboard_data(prometheus, Path(data_file), live.started - 30, time.time())
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_process(gateway)
        worker.stop()


def _store_dashboard_data(prometheus: PrometheusServer, path: Path, start: float, end: float):
    panels = []
    for title, legend, expr in dashboard_targets():
        answer = prometheus.query_range(expr, start, end, 1)
        panels.append({"title": title, "legend": legend, "expr": expr, "data": answer["data"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"start": start, "end": end, "panels": panels}))


def _used_metrics() -> set[str]:
    exprs = [e for _, _, e in dashboard_targets()] + [r["expr"] for r in alert_rules()]
    return {name for e in exprs for name in metric_names(e)}


def _family(samples: list[Sample], name: str) -> list[Sample]:
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return [s for s in samples if s.name in {name + x for x in suffixes}]


def test_the_jobs_ran(run: Run) -> None:
    assert run.jobs["cancelled"]["state"] == "cancelled"
    assert run.jobs["succeeded"]["state"] == "succeeded", run.jobs["succeeded"]["error"]
    assert run.jobs["succeeded"]["quality"]["sample_spread"] > 0


def test_every_metric_of_dashboard_and_rules_exists_and_moved(run: Run) -> None:
    used = _used_metrics()
    assert len(used) >= 15, used
    for name in sorted(used):
        where = [t for t in ("gateway", "worker") if _family(run.after[t], name)]
        assert where, f"{name} is not exported by the gateway or the worker"
        target = where[0]
        seen = [_family(run.before[target], name), _family(run.during[target], name)]
        seen.append(_family(run.after[target], name))
        readings = [{(s.name, tuple(sorted(s.labels.items()))): s.value for s in x} for x in seen]
        if name == "midiff_gpu_memory_bytes":  # a CPU worker: the peak is 0, and stays 0
            assert all(set(r.values()) == {0.0} for r in readings), readings
            continue
        assert readings[0] != readings[1] or readings[1] != readings[2], f"{name} never moved"
    # the gauges that only show work in progress, caught in the act
    assert value(run.during["worker"], "midiff_worker_busy") == 1
    assert value(run.during["gateway"], "midiff_queue_depth") == 1  # the second job waited
    assert value(run.after["gateway"], "midiff_queue_depth") == 0


def test_the_gateway_processes_add_up(run: Run) -> None:
    """Two uvicorn processes serve; one scrape counts every request of both."""
    pids = set(re.findall(r"Started server process \[(\d+)\]", run.gateway_log.read_text()))
    assert len(pids) == 2, run.gateway_log.read_text()
    calls = value(run.after["gateway"], "midiff_http_requests_total", route="/health/live")
    assert calls - run.live_calls_before == LIVE_ENDPOINTS
    assert value(run.after["gateway"], "midiff_jobs_submitted_total") == 2 + int(
        os.environ.get("MIDIFF_DASHBOARD_JOBS", "0")
    )


def test_the_worker_exporter_reads_the_multiprocess_files(run: Run) -> None:
    assert list(run.worker_multiproc.glob("*.db")), "the worker wrote no multiprocess files"
    after = run.after["worker"]
    assert value(after, "midiff_slices_translated_total") == 3 * (
        1 + int(os.environ.get("MIDIFF_DASHBOARD_JOBS", "0"))
    )
    assert value(after, "midiff_worker_jobs_total", outcome="cancelled") == 1


def _series(answer: dict) -> list[float]:
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    if answer["data"]["resultType"] == "scalar":
        return [float(result[1])]
    return [float(r["value"][1]) for r in result]


def test_every_dashboard_query_returns_data_on_prometheus(run: Run) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 25
    empty, nan = [], []
    for title, legend, expr in targets:
        values = _series(run.prometheus.query(expr))
        if not values:
            empty.append((title, legend))
        elif all(math.isnan(v) for v in values):
            nan.append((title, legend))
    assert not empty, f"queries that returned nothing: {empty}"
    assert not nan, f"queries that returned only NaN: {nan}"


def test_every_alert_expression_runs_and_its_quantity_has_data(run: Run) -> None:
    rules = alert_rules()
    assert len(rules) == 5
    for rule in rules:
        quantity, op, threshold = split_comparison(rule["expr"])
        values = _series(run.prometheus.query(quantity))
        assert values and not any(math.isnan(v) for v in values), (rule["alert"], values)
        # the alert's own expression, with `bool`: 0 or 1 per series instead of a filter
        judged = _series(run.prometheus.query(f"{quantity} {op} bool {threshold}"))
        assert judged and set(judged) <= {0.0, 1.0}, (rule["alert"], judged)
        assert run.prometheus.query(rule["expr"])["status"] == "success"
    loaded = httpx.get(f"{run.prometheus.url}/api/v1/rules", timeout=10).json()
    health = {r["name"]: r["health"] for g in loaded["data"]["groups"] for r in g["rules"]}
    assert set(health) == {r["alert"] for r in rules}
    wait_for(
        lambda: all(
            r["health"] == "ok"
            for g in httpx.get(f"{run.prometheus.url}/api/v1/rules", timeout=10).json()["data"][
                "groups"
            ]
            for r in g["rules"]
        ),
        timeout=30,
        what="prometheus to evaluate every rule without error",
    )


def test_a_healthy_run_fires_no_alert(run: Run) -> None:
    alerts = httpx.get(f"{run.prometheus.url}/api/v1/alerts", timeout=10).json()
    assert alerts["status"] == "success"
    assert alerts["data"]["alerts"] == []
