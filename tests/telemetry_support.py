"""Helpers for the telemetry tests (this module holds no tests): a model store whose model
averages two draws, and a parsed ``/metrics`` scrape."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_service_support import stop_process

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

# every metric the issue names for a worker, with the label values that must have samples
WORKER_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "midiff_job_stage_seconds": ("stage", ("queue", "load", "preprocess", "sample", "write")),
    "midiff_sampling_step_seconds": ("", ()),
    "midiff_slices_translated_total": ("", ()),
    "midiff_gpu_memory_bytes": ("", ()),
    "midiff_translation_quality": ("metric", ("nmi_source", "lmi_source", "sample_spread")),
}


def store_with_two_draws(store_root: Path, dest: Path) -> Path:
    """A copy of a model store whose models average two antithetic draws, as the serving
    model does (the card's sampling section; the weights and their sha256 are unchanged)."""
    shutil.copytree(store_root, dest)
    for card_path in dest.glob("*/*/model.json"):
        card = json.loads(card_path.read_text())
        card["sampling"].update(samples=2, antithetic=True)
        card_path.write_text(json.dumps(card, indent=2))
    return dest


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    return [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def has(samples: list[Sample], name: str) -> bool:
    return any(s.name == name for s in samples)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_config_for(targets: dict[str, str], rule_files: list[Path]) -> dict[str, Any]:
    """The project's scrape configuration (deploy/prometheus/prometheus.yml), its jobs pointed
    at ``targets`` (job name -> host:port) instead of Docker's DNS, scraping every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    assert [DEPLOY / "prometheus" / f for f in config["rule_files"]] == rule_files
    config["rule_files"] = [str(f) for f in rule_files]
    return config


class PrometheusServer:
    """A real ``prometheus`` (Debian's package) on a loopback port, with its own data folder."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus is not installed (apt-get install prometheus; .ci/run does this)"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("prometheus exited:\n" + self.log_path.read_text())
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """``/api/v1/query``: the whole answer (status, data or error)."""
        params = {"query": expr} | ({"time": str(at)} if at is not None else {})
        return httpx.get(f"{self.url}/api/v1/query", params=params, timeout=30).json()

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        return httpx.get(f"{self.url}/api/v1/query_range", params=params, timeout=30).json()

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)


def split_comparison(expr: str) -> tuple[str, str, str]:
    """``<quantity> <op> <threshold>`` -> its three parts, the operator being the last
    comparison outside brackets, braces, parentheses and quotes."""
    depth, quoted, found = 0, False, None
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == '"':
            quoted = not quoted
        elif not quoted and c in "([{":
            depth += 1
        elif not quoted and c in ")]}":
            depth -= 1
        elif not quoted and depth == 0 and c in "<>=!":
            op = expr[i : i + 2] if expr[i : i + 2] in ("==", "!=", ">=", "<=") else c
            if op in ("==", "!=", ">=", "<=", ">", "<"):
                found = (i, op)
                i += len(op)
                continue
        i += 1
    if found is None:
        raise ValueError(f"no comparison at the top of {expr!r}")
    at, op = found
    return expr[:at].strip(), op, expr[at + len(op) :].strip()


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, legend, expression) of every query of the Grafana dashboard."""
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "midiffusion.json").read_text())
    return [
        (panel["title"], target.get("legendFormat", ""), target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """The metric families an expression reads (histogram suffixes dropped)."""
    names = set(re.findall(r"\bmidiff_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
