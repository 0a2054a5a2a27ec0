"""contrib/prometheus: the alert rules load in promtool and fire in its rule tests exactly on the series that
mean them; every metric they read is one `offboard serve` exports, and every rule has a test."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

FOLDER = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
RULES = FOLDER / "offboard-connector.rules.yml"
TESTS = FOLDER / "offboard-connector.rules.test.yml"
#: what the daemon exports (issue 10), plus what Prometheus and the blackbox exporter write themselves
EXPORTED = {"offboard_terminations", "offboard_actions_total", "offboard_revoke_seconds_bucket",
            "offboard_provider_errors_total", "offboard_oldest_open_termination_seconds", "offboard_paused",
            "offboard_tenant_held", "up", "probe_success"}
PROMQL_WORDS = {"sum", "by", "increase", "rate", "absent", "histogram_quantile", "bool", "le", "min_over_time"}
PROMTOOL = shutil.which("promtool")


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_conditions_of_the_issue_each_have_an_alert():
    names = {rule["alert"] for rule in alerts()}
    assert {"OffboardTenantHeld", "OffboardNeedsHuman", "OffboardProviderFailing", "OffboardOpenTerminationTooOld",
            "OffboardDaemonDown", "OffboardDaemonAbsent", "OffboardUnhealthy"} <= names


def test_every_rule_reads_only_exported_metrics_and_says_what_to_do():
    for rule in alerts():
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]|\bby \([^)]*\)', "", rule["expr"])   # labels, strings, ranges, by
        metrics = set(re.findall(r"[a-z_][a-z0-9_]*", expr)) - PROMQL_WORDS
        assert metrics <= EXPORTED, (rule["alert"], metrics - EXPORTED)
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]


def test_every_rule_has_a_promtool_test():
    tested = {case["alertname"] for group in yaml.safe_load(TESTS.read_text())["tests"]
              for case in group["alert_rule_test"] if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alerts()}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: tools/install-system-deps installs Debian's prometheus")
@pytest.mark.parametrize("command", [["check", "rules", RULES.name], ["test", "rules", TESTS.name]])
def test_promtool(command):
    result = subprocess.run([PROMTOOL, *command], cwd=FOLDER, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing")
def test_promtool_tests_fail_when_a_rule_is_wrong(tmp_path):
    broken = RULES.read_text().replace("offboard_tenant_held == 1", "offboard_tenant_held == 2")
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(TESTS, tmp_path / TESTS.name)
    result = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "OffboardTenantHeld" in result.stdout + result.stderr
