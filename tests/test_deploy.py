"""Alert rules pass promtool, and every metric the rules and the dashboard use is exported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from proxy.config import BudgetConfig
from proxy.sinks.budgets import Budgets
from proxy.sinks.metrics import Metrics

ROOT = Path(__file__).parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokenbooth.json"
METRIC = re.compile(r"\btokenbooth_[a-z_]+\b")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is required (Debian package 'prometheus'; .ci/run installs it)")
    return path


def test_promtool_check_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 11 rules found" in out.stdout


def test_promtool_unit_tests() -> None:
    out = subprocess.run([promtool(), "test", "rules", "tests/rules/alerts_test.yml"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry, prices_version="x")
    Budgets((BudgetConfig("b", {}, 1.0, "day", "alert"),), registry)
    names = set()
    for fam in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
            fam.type, [""])
        names.update(fam.name + s for s in suffixes)
    return names


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_every_metric_used_is_exported() -> None:
    exported = exported_names()
    used = {m for e in rule_exprs() + dashboard_exprs() for m in METRIC.findall(e)}
    assert used and used <= exported, used - exported
    for spec_name in ("tokenbooth_requests_total", "tokenbooth_input_tokens_total",
                      "tokenbooth_output_tokens_total", "tokenbooth_cost_usd_total",
                      "tokenbooth_unpriced_requests_total", "tokenbooth_inflight_requests",
                      "tokenbooth_request_duration_seconds_bucket",
                      "tokenbooth_time_to_first_token_seconds_bucket",
                      "tokenbooth_ledger_rows_total", "tokenbooth_ledger_queue_rows",
                      "tokenbooth_budget_spend_usd", "tokenbooth_budget_limit_usd",
                      "tokenbooth_build_info"):
        assert spec_name in exported


def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for needed in ("spend today", "month to date", "by agent", "by model", "by class",
                   "cache-read", "estimated", "unpriced", "requests", "error",
                   "first token", "budget"):
        assert needed in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
