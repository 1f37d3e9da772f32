"""The Prometheus files pass promtool: the scrape configuration and its rules are valid, and the
rules' unit tests (deploy/prometheus/alerts_test.yml) show every alert firing on its trouble
and staying quiet on a healthy service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
ALERTS = ("MidiffQueueBackingUp", "MidiffJobFailureRatio", "MidiffWorkerDown")
ALERTS += ("MidiffJobTimeP95High", "MidiffQualityDrift")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (apt-get install prometheus; .ci/run does this)")
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_scrape_configuration_and_its_rules() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout + checked.stderr
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(ALERTS)} rules found" in checked.stdout + checked.stderr


def test_every_alert_waits_and_says_what_to_do() -> None:
    assert [rule["alert"] for rule in rules()] == list(ALERTS)
    for rule in rules():
        assert rule["for"], rule["alert"]
        assert len(rule["annotations"]["runbook"].split()) > 15, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_promtool_unit_tests_show_each_alert_firing() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case["exp_alerts"]
    }
    assert fired == quiet == set(ALERTS)
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests catch a rule that no longer fires: a threshold raised out of reach."""
    broken = (
        (PROMETHEUS / "alerts.yml")
        .read_text()
        .replace("max(midiff_queue_depth) > 20", "max(midiff_queue_depth) > 2000")
    )
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path)
    binary = shutil.which("promtool") or "promtool"
    result = subprocess.run(
        [binary, "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "MidiffQueueBackingUp" in result.stdout + result.stderr
