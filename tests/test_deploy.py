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
from proxy.config import BudgetConfig, OtelConfig
from proxy.sinks import otel_names
from proxy.sinks.budgets import Budgets
from proxy.sinks.metrics import Metrics

ROOT = Path(__file__).parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokenbooth.json"
METRIC = re.compile(r"\b(?:tokenbooth_[a-zA-Z_]+|gen_ai_client_[a-z_]+)\b")


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
    from proxy.sinks.otel import OtelSink

    OtelSink(OtelConfig(), registry, upstreams={})  # its own counters (not started)
    names = set()
    for fam in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
            fam.type, [""])
        names.update(fam.name + s for s in suffixes)
    # the OTel metrics, as Prometheus stores them after a collector
    for inst in otel_names.INSTRUMENTS:
        name = otel_names.prometheus_name(inst)
        names.update([name] if inst.kind == "counter" else
                     [name + s for s in ("_bucket", "_sum", "_count")])
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


def test_the_otel_panels_read_what_a_collector_stores(tmp_path: Path) -> None:
    """The OTel panels' queries, evaluated by promtool on series named as Prometheus stores
    OTLP metrics after a collector (dots to underscores, `_total`, `_seconds`), from two
    replicas: spend and tokens add up, the error ratio and quantiles come out right. The
    model filter is the OTel row's own variable, read from the OTel metrics' own
    `gen_ai_request_model` label (the requested model, not Tokenbooth's priced model id):
    evaluated here with two models chosen (as Grafana renders a multi-value selection) and a
    third model's series left out."""
    dash = json.loads(DASHBOARD.read_text())
    panels = {p["id"]: p for p in dash["panels"]}
    assert panels[20]["type"] == "row" and "OpenTelemetry" in panels[20]["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["genai_model"]["definition"] == \
        "label_values(gen_ai_client_operation_duration_seconds_count, gen_ai_request_model)"
    rules = []
    for pid in range(21, 29):
        for i, t in enumerate(panels[pid]["targets"]):
            # $model (the priced id, e.g. gpt-4o-2024-08-06) never filters an OTel panel
            expr = (t["expr"].replace("$__rate_interval", "5m")
                    .replace('"$genai_model"', '"(gpt-4o|mystery)"')
                    .replace('"$model"', '"gpt-4o-2024-08-06"'))
            # to the microunit, so the expected values below are exact decimals
            rules.append({"record": f"otel:{pid}:{i}",
                          "expr": f"round(({expr}) * 1000000) / 1000000"})
    (tmp_path / "otel.yml").write_text(yaml.safe_dump({"groups": [{"name": "otel",
                                                                   "rules": rules}]}))
    series = []
    u = "gen_ai_client_inference_usage_"
    for n in (1, 2):  # two replicas, each exporting through the collector
        base = (f'job="tokenbooth", instance="tokenbooth-{n}", gen_ai_provider_name="openai", '
                f'gen_ai_operation_name="chat", gen_ai_request_model="gpt-4o", '
                f'server_address="api.openai.com"')
        series += [
            # per minute: $0.30 spend, 600 text + 60 audio input, 120 cached, 30 output
            {"series": f"tokenbooth_cost_USD_total{{{base}}}", "values": "0+0.3x10"},
            {"series": f'{u}input_tokens_total{{{base}, gen_ai_token_modality="text"}}',
             "values": "0+600x10"},
            {"series": f'{u}input_tokens_total{{{base}, gen_ai_token_modality="audio"}}',
             "values": "0+60x10"},
            {"series": f'{u}cache_read_input_tokens_total{{{base}, '
                       f'gen_ai_token_modality="text"}}', "values": "0+120x10"},
            {"series": f'{u}output_tokens_total{{{base}, gen_ai_token_modality="text"}}',
             "values": "0+30x10"},
            # 3 calls a minute: 2 fine in (0.16, 0.32] s, 1 failed with a 500 (1 in 3)
            {"series": f'gen_ai_client_operation_duration_seconds_bucket{{{base}, le="0.16"}}',
             "values": "0+0x10"},
            {"series": f'gen_ai_client_operation_duration_seconds_bucket{{{base}, le="0.32"}}',
             "values": "0+2x10"},
            {"series": f'gen_ai_client_operation_duration_seconds_bucket{{{base}, le="+Inf"}}',
             "values": "0+2x10"},
            {"series": f"gen_ai_client_operation_duration_seconds_count{{{base}}}",
             "values": "0+2x10"},
            {"series": f'gen_ai_client_operation_duration_seconds_count{{{base}, '
                       f'error_type="500"}}', "values": "0+1x10"},
            {"series": f'tokenbooth_calls_unpriced_total{{job="tokenbooth", '
                       f'instance="tokenbooth-{n}", gen_ai_provider_name="groq", '
                       f'gen_ai_request_model="mystery"}}', "values": "0+1x10"},
            {"series": f'gen_ai_client_token_usage_sum{{{base}, gen_ai_token_type="input"}}',
             "values": "0+660x10"},
            {"series": f'tokenbooth_otel_dropped_total{{job="tokenbooth", '
                       f'instance="tokenbooth-{n}", signal="spans"}}', "values": "0+4x10"},
        ]
        # a model not chosen: none of its series reaches a model-filtered panel
        other = base.replace('"gpt-4o"', '"gpt-4o-mini"')
        series += [
            {"series": f"tokenbooth_cost_USD_total{{{other}}}", "values": "0+5x10"},
            {"series": f'{u}input_tokens_total{{{other}, gen_ai_token_modality="image"}}',
             "values": "0+6000x10"},
            {"series": f'{u}output_tokens_total{{{other}, gen_ai_token_modality="text"}}',
             "values": "0+6000x10"},
            {"series": f'gen_ai_client_operation_duration_seconds_bucket{{{other}, le="0.16"}}',
             "values": "0+50x10"},
            {"series": f'gen_ai_client_operation_duration_seconds_bucket{{{other}, le="+Inf"}}',
             "values": "0+50x10"},
            {"series": f'gen_ai_client_token_usage_sum{{{other}, gen_ai_token_type="input"}}',
             "values": "0+6000x10"},
        ]

    def sample(rule: str, value: float, labels: str = "") -> dict[str, object]:
        return {"expr": rule, "eval_time": "10m",
                "exp_samples": [{"labels": f"{rule}{labels}", "value": value}]}

    checks = [
        sample("otel:21:0", 3.0, '{gen_ai_request_model="gpt-4o"}'),  # 5 min x $0.30 x 2
        sample("otel:22:0", 22.0),  # (600 + 60) x 2 / 60 s
        sample("otel:22:1", 4.0),
        sample("otel:22:3", 1.0),
        sample("otel:23:0", 2.0, '{gen_ai_token_modality="audio"}'),
        sample("otel:23:0", 20.0, '{gen_ai_token_modality="text"}'),
        sample("otel:24:0", 10.0, '{gen_ai_provider_name="groq", '
                                  'gen_ai_request_model="mystery"}'),
        sample("otel:25:0", 0.312),  # 0.16 + 0.95 x (0.32 - 0.16)
        sample("otel:26:0", 0.333333, '{gen_ai_provider_name="openai"}'),
        sample("otel:27:0", 22.0, '{gen_ai_token_type="input"}'),
        sample("otel:28:0", 40.0, '{signal="spans"}'),
    ]
    # two samples of one rule are one expectation each
    by_rule: dict[str, dict[str, object]] = {}
    for c in checks:
        entry = by_rule.setdefault(str(c["expr"]), {"expr": c["expr"], "eval_time": "10m",
                                                    "exp_samples": []})
        entry["exp_samples"] += c["exp_samples"]  # type: ignore[operator]
    test = {"rule_files": ["otel.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": list(by_rule.values())}]}
    (tmp_path / "otel_test.yml").write_text(yaml.safe_dump(test))
    out = subprocess.run([promtool(), "test", "rules", "otel_test.yml"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
