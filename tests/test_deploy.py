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

from proxy.admission.budgets import BudgetCheck
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
    Budgets(BudgetCheck((BudgetConfig("b", {}, 1.0, "day", "alert"),)), registry)
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


def test_dashboard_sums_spend_across_replicas_and_takes_budgets_once(tmp_path: Path) -> None:
    """The dashboard's own queries, evaluated by promtool on scrapes of three replicas
    sharing a ledger: spend adds up over the replicas; the budget figures, which every
    replica reports alike, come out once per budget."""
    dash = json.loads(DASHBOARD.read_text())
    wanted = {1: "spend_today", 18: "budget_ratio", 19: "budget_spend_and_limit"}
    rules = []
    for p in dash["panels"]:
        if p["id"] in wanted:
            for i, t in enumerate(p["targets"]):
                expr = (t["expr"].replace("$__range", "10m").replace("$__rate_interval", "5m")
                        .replace('"$agent"', '".*"').replace('"$model"', '".*"'))
                rules.append({"record": f"dash:{wanted[p['id']]}:{i}", "expr": expr})
    (tmp_path / "dash.yml").write_text(yaml.safe_dump({"groups": [{"name": "dash",
                                                                   "rules": rules}]}))
    series = []
    for n, rate in ((1, 1), (2, 2), (3, 3)):  # each replica's own calls: +rate USD a minute
        inst = f'job="tokenbooth", instance="tokenbooth-{n}:8787"'
        series += [
            {"series": f'tokenbooth_cost_usd_total{{{inst}, agent="a", model="m"}}',
             "values": f"0+{rate}x10"},
            {"series": f'tokenbooth_budget_spend_usd{{{inst}, budget="team"}}',
             "values": "40x10"},
            {"series": f'tokenbooth_budget_limit_usd{{{inst}, budget="team"}}',
             "values": "50x10"}]
    test = {"rule_files": ["dash.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [
            {"expr": "dash:spend_today:0", "eval_time": "10m",
             "exp_samples": [{"labels": "dash:spend_today:0", "value": 60}]},
            {"expr": "dash:budget_ratio:0", "eval_time": "10m",
             "exp_samples": [{"labels": 'dash:budget_ratio:0{budget="team"}', "value": 0.8}]},
            {"expr": "dash:budget_spend_and_limit:0", "eval_time": "10m",
             "exp_samples": [{"labels": 'dash:budget_spend_and_limit:0{budget="team"}',
                              "value": 40}]},
            {"expr": "dash:budget_spend_and_limit:1", "eval_time": "10m",
             "exp_samples": [{"labels": 'dash:budget_spend_and_limit:1{budget="team"}',
                              "value": 50}]}]}]}
    (tmp_path / "dash_test.yml").write_text(yaml.safe_dump(test))
    out = subprocess.run([promtool(), "test", "rules", "dash_test.yml"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_fleet_stack_has_postgres_three_replicas_a_balancer_and_per_replica_scrapes() -> None:
    from proxy.config import load

    fleet = ROOT / "deploy" / "fleet"
    compose = yaml.safe_load((fleet / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = sorted(s for s in services if s.startswith("tokenbooth-"))
    assert replicas == ["tokenbooth-1", "tokenbooth-2", "tokenbooth-3"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert {"lb", "prometheus", "grafana"} <= set(services)
    for name in replicas:
        assert "postgresql://" in services[name]["environment"]["TOKENBOOTH_DB_URL"]
    nginx = (fleet / "nginx.conf").read_text()
    assert all(f"server {r}:8787" in nginx for r in replicas)
    assert "proxy_buffering off" in nginx
    prom = yaml.safe_load((fleet / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"{r}:8787" for r in replicas]
    import os

    os.environ.setdefault("TOKENBOOTH_DB_URL", "postgresql://u:p@postgres:5432/tokenbooth")
    config = load(str(fleet / "config.yaml"))
    assert config.ledger.shared and config.ledger.retention_days == 90
