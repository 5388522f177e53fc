"""The shipped Prometheus alerting rules and Grafana dashboard (monitoring/):
promtool accepts the rules, their unit tests pass, a broken rule makes those
tests fail, and every metric they read is one the daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kdump_coalesce._metrics import MetricsObserver

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "kdump-coalesce.rules.yml"
RULE_TESTS = MONITORING / "kdump-coalesce.rules.test.yml"
DASHBOARD = MONITORING / "kdump-coalesce.dashboard.json"
# Exported by node_exporter / Prometheus itself, not by the daemon.
FOREIGN = {"node_textfile_mtime_seconds", "up", "time"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package prometheus; ./bootstrap test installs it)")
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    proc = run("check", "rules", RULES.name, cwd=MONITORING)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = run("test", "rules", RULE_TESTS.name, cwd=MONITORING)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: an alert that no longer fires fails them."""
    broken = RULES.read_text().replace("expr: kdump_coalesce_kdump_correct == 0", "expr: kdump_coalesce_kdump_correct == 2")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    proc = run("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "KdumpCoalesceKdumpNotCorrect" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)", RULES.read_text(), re.M))
    assert {"KdumpCoalesceKdumpNotCorrect", "KdumpCoalesceReloadFailures", "KdumpCoalesceEventsLost", "KdumpCoalesceDown"} <= alerts
    tests = RULE_TESTS.read_text()
    for alert in alerts:
        cases = re.findall(rf"alertname: {alert}\n\s+exp_alerts:(.*)", tests)
        assert any(c.strip() == "[]" for c in cases), f"{alert}: no case where it must stay quiet"
        assert any(c.strip() == "" for c in cases), f"{alert}: no case where it fires"


def exported_names() -> set[str]:
    """Every series name the daemon's registry can produce."""
    names = set()
    for family in MetricsObserver().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\b(kdump_coalesce_[a-z_]+|node_textfile_mtime_seconds)\b", text))


def test_rules_and_dashboard_use_exported_metrics() -> None:
    exported = exported_names() | FOREIGN
    rules = referenced(RULES.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    exprs += " " + dashboard["templating"]["list"][1]["definition"]
    used = rules | referenced(exprs)
    assert {"kdump_coalesce_kdump_correct", "kdump_coalesce_reloads_total", "kdump_coalesce_events_lost_total"} <= used
    unknown = used - exported
    assert not unknown, f"not exported by kdump_coalesce._metrics: {sorted(unknown)}"


def test_dashboard_panels_have_targets_and_fit_the_grid() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "kdump-coalesce"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
