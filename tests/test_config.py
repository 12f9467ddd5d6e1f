"""Configuration: the shipped default, every kind of bad config, and the CLI's one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_matches_the_spec_defaults() -> None:
    config = load(ROOT / "config.yaml", env={})
    assert (config.host, config.port) == ("127.0.0.1", 8787)
    assert config.ledger.path == "./tokenbooth.db"
    assert config.upstreams["local"].url == "http://127.0.0.1:8000"
    assert config.upstreams["openai"].inject_stream_usage is True
    assert config.upstreams["anthropic"].dialect == "anthropic"  # built-ins stay merged in
    assert config.prices["my-finetune"].cache_write == 1.25
    assert config.budgets[0].name == "researcher-daily"
    assert config.server.max_body_bytes == 32 << 20
    assert config.server.idle_timeout_seconds == 300


def test_empty_config_gives_the_defaults() -> None:
    config = parse(None, env={})
    assert config.port == 8787 and config.ledger.path == "./tokenbooth.db"
    assert sorted(config.upstreams) == ["anthropic", "bedrock", "deepseek", "gemini", "groq",
                                        "mistral", "ollama", "openai", "openrouter", "vertex",
                                        "xai"]
    assert config.upstreams["ollama"].free and not config.upstreams["openai"].free
    assert config.server.connect_timeout_seconds == 10 and config.server.drain_seconds == 30


BAD = [
    ({"listne": {}}, r"^listne: unknown key \(allowed: listen, "),
    ({"listen": {"port": "80"}}, r"^listen\.port: expected int, got str$"),
    ({"listen": {"port": 70000}}, r"^listen\.port: 70000 is not a TCP port$"),
    ({"ledger": {"flush_seconds": 0}}, r"^ledger\.flush_seconds: must be greater than 0$"),
    ({"upstreams": {"api": {"url": "http://x"}}}, r"^upstreams\.api: 'api' is a reserved name"),
    ({"upstreams": {"metrics": {"url": "http://x"}}}, r"^upstreams\.metrics: 'metrics' is"),
    ({"upstreams": {"mine": {"dialect": "openai"}}}, r"^upstreams\.mine\.url: expected an http"),
    ({"upstreams": {"mine": {"url": "ftp://x"}}}, r"^upstreams\.mine\.url: expected an http"),
    ({"upstreams": {"mine": {"url": "http://x", "dialect": "cohere"}}},
     r"^upstreams\.mine\.dialect: unknown dialect 'cohere'"),
    ({"upstreams": {"mine": {"url": "http://x", "inject_stream_usage": "yes"}}},
     r"^upstreams\.mine\.inject_stream_usage: expected bool"),
    ({"upstreams": {"mine": {"url": "http://x", "timeout": 3}}},
     r"^upstreams\.mine\.timeout: unknown key"),
    ({"metrics": {"tag_labels": ["session"]}}, r"^metrics\.tag_labels\[0\]: 'session' is never"),
    ({"metrics": {"tag_labels": ["Team Name"]}}, r"^metrics\.tag_labels\[0\]: expected a lower"),
    ({"pricing": {"models": {"m": {"input": 1}}}}, r"^pricing\.models\.m\.output: required"),
    ({"pricing": {"models": {"m": {"input": -1, "output": 1}}}},
     r"^pricing\.models\.m\.input: must not be negative$"),
    ({"estimation": {"factors": {"anthropic": 0}}}, r"^estimation\.factors\.anthropic: expected"),
    ({"budgets": [{"match": {}, "limit_usd": 1}]}, r"^budgets\[0\]\.name: required$"),
    ({"rate_limits": [{"requests_per_minute": 1}]}, r"^rate_limits\[0\]\.name: required$"),
    ({"rate_limits": [{"name": "r"}]},
     r"^rate_limits\[0\]: give at least one of requests_per_minute, tokens_per_minute, "),
    ({"rate_limits": [{"name": "r", "requests_per_minute": 0}]},
     r"^rate_limits\[0\]\.requests_per_minute: must be greater than 0$"),
    ({"rate_limits": [{"name": "r", "tokens_per_minute": 1.5}]},
     r"^rate_limits\[0\]\.tokens_per_minute: expected int, got float$"),
    ({"rate_limits": [{"name": "r", "usd_per_day": 1}]},
     r"^rate_limits\[0\]\.usd_per_day: unknown key"),
    ({"rate_limits": [{"name": "r", "usd_per_hour": 1}, {"name": "r", "usd_per_hour": 2}]},
     r"^rate_limits\[1\]\.name: duplicate rate limit name 'r'$"),
    ({"rate_limits": [{"name": "key:k1", "requests_per_minute": 1}]},
     r"^rate_limits\[0\]\.name: 'key:' names are a consumer key's own limits$"),
    ({"rate_limits": [{"name": "r", "requests_per_minute": 1, "match": {"modle": "x"}}]},
     r"^rate_limits\[0\]\.match\.modle: unknown match key; did you mean 'model'\?"),
    ({"budgets": [{"name": "b", "limit_usd": 1, "window": "year"}]},
     r"^budgets\[0\]\.window: 'year' is not one of day, week, month, total$"),
    ({"budgets": [{"name": "b", "limit_usd": 1, "action": "stop"}]},
     r"^budgets\[0\]\.action: 'stop' is not one of alert, block$"),
    ({"budgets": [{"name": "b", "limit_usd": 1}, {"name": "b", "limit_usd": 2}]},
     r"^budgets\[1\]\.name: duplicate budget name 'b'$"),
    ({"budgets": [{"name": "b"}]}, r"^budgets\[0\]\.limit_usd: required$"),
    ({"budgets": [{"name": "b", "limit_usd": 1, "on_ledger_down": "open"}]},
     r"^budgets\[0\]\.on_ledger_down: 'open' is not one of local, refuse$"),
    # layered budgets and notices
    ({"budgets": [{"name": "b", "limit_usd": 1, "windows": [{"window": "day",
                                                             "limit_usd": 1}]}]},
     r"^budgets\[0\]\.limit_usd: give it in each of `windows`"),
    ({"budgets": [{"name": "b", "windows": []}]},
     r"^budgets\[0\]\.windows: expected a non-empty list"),
    ({"budgets": [{"name": "b", "windows": [{"window": "rolling", "limit_usd": 1}]}]},
     r"^budgets\[0\]\.windows\[0\]\.hours: a rolling window needs `hours`"),
    ({"budgets": [{"name": "b", "windows": [{"window": "day", "hours": 3, "limit_usd": 1}]}]},
     r"^budgets\[0\]\.windows\[0\]\.hours: only a rolling window has `hours`"),
    ({"budgets": [{"name": "b", "limit_usd": 1, "window": "rolling"}]},
     r"^budgets\[0\]\.window: 'rolling' is not one of .*given in `windows:`"),
    ({"budgets": [{"name": "b", "windows": [{"window": "day", "limit_usd": 1},
                                            {"window": "day", "limit_usd": 2}]}]},
     r"^budgets\[0\]\.windows: window 'day' is given twice$"),
    ({"budgets": [{"name": "b", "windows": [{"window": "day", "limit_usd": 1, "act": "x"}]}]},
     r"^budgets\[0\]\.windows\[0\]\.act: unknown key"),
    ({"budgets": [{"name": "b", "limit_usd": 1, "thresholds": [0.5, 0]}]},
     r"^budgets\[0\]\.thresholds\[1\]: expected a fraction of the limit"),
    ({"budgets": [{"name": "b", "limit_usd": 1, "notify": ["ops"]}]},
     r"^budgets\[0\]\.notify\[0\]: no notification sink named 'ops'"),
    ({"notify": [{"name": "ops", "url": "ftp://x"}]}, r"^notify\[0\]\.url: a webhook needs"),
    ({"notify": [{"name": "ops", "url": "http://x/h", "format": "teams"}]},
     r"^notify\[0\]\.format: 'teams' is not one of json, slack$"),
    ({"notify": [{"url": "http://x/h"}]}, r"^notify\[0\]\.name: required"),
    ({"notify": [{"name": "a", "url": "http://x/h"}, {"name": "a", "url": "http://y/h"}]},
     r"^notify\[1\]\.name: duplicate notification sink name 'a'$"),
    ({"server": {"max_body_bytes": -5}}, r"^server\.max_body_bytes: must be greater than 0$"),
    ({"server": {"idle_timeout": 5}}, r"^server\.idle_timeout: unknown key"),
    ({"admin": {"token": "${TB_MISSING_TOKEN}"}},
     r"^admin\.token: environment variable TB_MISSING_TOKEN is not set$"),
    ({"otel": {"protocol": "http/json"}},
     r"^otel\.protocol: expected http/protobuf or grpc, got 'http/json'$"),
    ({"otel": {"semconv": "1.36"}}, r"^otel\.semconv: expected latest, legacy, both"),
    ({"otel": {"endpoint": "collector:4317"}}, r"^otel\.endpoint: expected an http\(s\) URL"),
    ({"otel": {"headers": {"x-token": 5}}}, r"^otel\.headers\.x-token: expected a header"),
    ({"otel": {"spans": "on"}}, r"^otel\.spans: expected bool, got str$"),
    ({"otel": {"export_interval_seconds": 0}},
     r"^otel\.export_interval_seconds: must be greater than 0$"),
    ({"otel": {"service_name": " "}}, r"^otel\.service_name: must not be empty$"),
    ({"otel": {"sample_rate": 1}}, r"^otel\.sample_rate: unknown key \(allowed: endpoint, "),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m for _, m in BAD])
def test_bad_config_names_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(raw, env={})
    assert re.search(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_env_references_are_expanded() -> None:
    config = parse({"admin": {"token": "${TB_TOKEN}"},
                    "upstreams": {"local": {"url": "http://127.0.0.1:${PORT}"}}},
                   env={"TB_TOKEN": "s3cret", "PORT": "9000"})
    assert config.admin.token == "s3cret"
    assert config.upstreams["local"].url == "http://127.0.0.1:9000"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "upstreams": {"openai": {"api_key": "sk-live-canary-123"}},
        "auth": {"client_keys": {"team-a": "ck-canary-456"}}, "admin": {"token": "adm-789"}}))
    done = cli("check-config", "--config", "c.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["upstreams"]["openai"]["api_key"] == "***"
    assert shown["auth"]["client_keys"] == {"team-a": "***"}
    for secret in ("sk-live-canary-123", "ck-canary-456", "adm-789"):
        assert secret not in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_bad_config_is_one_line_and_exit_1(tmp_path: Path, command: str) -> None:
    (tmp_path / "config.yaml").write_text("upstreams:\n  healthz: {url: 'http://x'}\n")
    done = cli(command, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "tokenbooth: config error: upstreams.healthz: 'healthz' is a reserved name "
        "(reserved: api, healthz, metrics, readyz, ui)"]


def test_invalid_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("listen: {host: [\n")
    done = cli("check-config", "--config", "broken.yaml", cwd=tmp_path)
    assert done.returncode == 1 and "invalid YAML" in done.stderr
    assert "Traceback" not in done.stderr
    done = cli("check-config", "--config", "nope.yaml", cwd=tmp_path)
    assert done.returncode == 1 and "nope.yaml: cannot read config file" in done.stderr


def test_readme_documents_every_config_key() -> None:
    readme = (ROOT / "README.md").read_text()
    config = parse(None, env={})
    keys = {f"{section}.{k}" for section, body in config.masked().items()
            if isinstance(body, dict) for k in body if section not in ("upstreams",)}
    keys -= {"auth.client_keys", "pricing.models", "estimation.factors"}
    keys |= {"auth.client_keys.<name>", "pricing.models.<model>",
             "estimation.factors.<dialect>", "budgets[]", "rate_limits[]"}
    keys |= {f"upstreams.<name>.{k}" for k in config.masked()["upstreams"]["openai"]}
    missing = {k for k in keys if f"`{k}`" not in readme}
    assert not missing, f"README config reference lacks: {sorted(missing)}"


def test_the_shipped_configs_commented_hints_are_valid_once_uncommented(tmp_path: Path) -> None:
    text = (ROOT / "config.yaml").read_text()
    hinted = (text.replace("    # api_key:", "    api_key:")
              .replace("  # bedrock:", "  bedrock:").replace("  #   aws:", "    aws:")
              .replace("  #     ", "      ").replace("client_keys: {}", "client_keys: {a: k}")
              .replace("\nledger: {path", "\n# ledger: {path")  # the fleet hint instead
              .replace("# ledger: {url", "ledger: {url")
              .replace("# export:", "export:").replace("#   - {type", "  - {type")
              .replace("  # - {name: red-team", "  - {name: red-team")
              .replace("  # - name: team-ml", "  - name: team-ml")
              .replace("  #   match: {team: ml}", "    match: {team: ml}")
              .replace("  #   windows:", "    windows:")
              .replace("  #     - {window", "      - {window")
              .replace("  #   thresholds:", "    thresholds:")
              .replace("  #   notify:", "    notify:")
              .replace("# notify:", "notify:").replace("#   - {name: ops", "  - {name: ops")
              .replace("#      format: json}", "     format: json}")
              .replace("# rate_limits:", "rate_limits:")
              .replace("#   - {name: team-red-rpm", "  - {name: team-red-rpm")
              .replace("#   - {name: bot-dollars", "  - {name: bot-dollars"))
    hinted = re.sub(r"^# (otel:|  [a-z_]+: )", r"\1", hinted, flags=re.M)
    assert hinted != text
    (tmp_path / "c.yaml").write_text(hinted)
    config = load(tmp_path / "c.yaml", env={"OPENAI_API_KEY": "sk-x", "AWS_ACCESS_KEY_ID": "AK",
                                            "AWS_SECRET_ACCESS_KEY": "s", "PGPASSWORD": "pw",
                                            "HOOK_SECRET": "whsec", "OTEL_TOKEN": "t"})
    assert config.upstreams["openai"].api_key == "sk-x"
    assert config.ledger.url == "postgresql://tokenbooth:pw@db:5432/tokenbooth"
    assert config.ledger.retention_days == 90
    assert [(b.name, b.on_ledger_down) for b in config.budgets] == [
        ("researcher-daily", "local"), ("red-team", "refuse"), ("team-ml", "local")]
    assert [w.id for w in config.budgets[2].windows] == ["day", "month", "rolling_5h"]
    assert config.budgets[2].notify == ("ops",) and config.notify[0].secret == "whsec"
    assert [(r.name, dict(r.match), r.requests_per_minute, r.usd_per_hour)
            for r in config.rate_limits] == [("team-red-rpm", {"team": "red"}, 100, None),
                                             ("bot-dollars", {"agent": "bot"}, None, 10.0)]
    aws = config.upstreams["bedrock"].aws
    assert aws is not None and (aws.region, aws.access_key_id) == ("us-east-1", "AK")
    assert [e.type for e in config.exports] == ["webhook", "jsonl", "stdout"]
    assert config.exports[0].secret == "whsec" and config.exports[1].queue_records == 100_000
    assert config.otel is not None and config.otel.headers == {"authorization": "Bearer t"}
    assert (config.otel.url, config.otel.semconv) == ("http://127.0.0.1:4318", "latest")


@pytest.mark.parametrize(("match", "message"), [
    ({"agnet": "x"}, "did you mean 'agent'"),
    ({"modle": "gpt-4o"}, "did you mean 'model'"),
    ({"Team": "red"}, "tag keys are lowercase"),
    ({"team-name": "red"}, "tag keys are lowercase"),
])
def test_a_budget_match_key_that_could_never_match_is_refused(match: dict[str, str],
                                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"budgets": [{"name": "b", "match": match, "limit_usd": 1}]}, env={})


def test_tag_keys_may_be_spelled_plainly_or_as_tag() -> None:
    config = parse({"budgets": [
        {"name": "a", "match": {"team": "red"}, "limit_usd": 1},
        {"name": "b", "match": {"tag:agnet": "x", "agent": "y"}, "limit_usd": 1}]}, env={})
    assert [dict(b.match) for b in config.budgets] == [{"team": "red"},
                                                       {"agnet": "x", "agent": "y"}]


def test_a_missing_variable_inside_a_flow_map_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "upstreams:\n  mine: {url: 'http://127.0.0.1:9', api_key: ${MY_KEY}}\n"
        "auth: {client_keys: {a: ${CLIENT_A}}}\n")
    with pytest.raises(ConfigError, match="MY_KEY"):
        load(tmp_path / "c.yaml", env={"CLIENT_A": "k"})
    config = load(tmp_path / "c.yaml", env={"MY_KEY": "sk-1", "CLIENT_A": "k"})
    assert config.upstreams["mine"].api_key == "sk-1" and config.client_keys == {"a": "k"}


NOT_FINITE = [
    ("server: {header_timeout_seconds: .nan}", r"^server\.header_timeout_seconds: expected a "
                                               r"finite number, got nan$"),
    ("server: {idle_timeout_seconds: .inf}", r"^server\.idle_timeout_seconds: expected a finite"),
    ("server: {connect_timeout_seconds: .NaN}", r"^server\.connect_timeout_seconds: expected a"),
    ("server: {drain_seconds: .nan}", r"^server\.drain_seconds: expected a finite number"),
    ("server: {drain_seconds: -1}", r"^server\.drain_seconds: must not be negative$"),
    ("ledger: {flush_seconds: .nan}", r"^ledger\.flush_seconds: expected a finite number"),
    ("ledger: {retention_days: .inf}", r"^ledger\.retention_days: expected a finite number"),
    ("budgets: [{name: b, limit_usd: .nan}]", r"^budgets\[0\]\.limit_usd: expected a finite"),
    ("budgets: [{name: b, limit_usd: -.inf}]", r"^budgets\[0\]\.limit_usd: expected a finite"),
    ("pricing: {models: {m: {input: .nan, output: 1}}}",
     r"^pricing\.models\.m\.input: expected a finite number"),
    ("estimation: {factors: {anthropic: .inf}}", r"^estimation\.factors\.anthropic: expected a "
                                                 r"positive number$"),
    ("estimation: {factors: {anthropic: .nan}}", r"^estimation\.factors\.anthropic: expected a "
                                                 r"positive number$"),
]


@pytest.mark.parametrize("text,message", NOT_FINITE, ids=[t for t, _ in NOT_FINITE])
def test_nan_and_infinity_are_refused_where_a_number_is_expected(tmp_path: Path, text: str,
                                                                 message: str) -> None:
    """YAML's .nan passes any `<= 0` check (every comparison with NaN is false) and .inf
    passes them all; a NaN timeout never fires, a NaN budget limit fails every call."""
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "c.yaml", env={})
    assert re.search(message, str(info.value)), str(info.value)


def test_yaml_aliases_are_refused_so_an_alias_bomb_cannot_take_the_machine(
        tmp_path: Path) -> None:
    """Seven nested aliases of nine: 9**7 (4.8 million) leaves from a few hundred bytes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "bomb.yaml").stat().st_size < 500
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "bomb.yaml", env={})
    assert str(info.value) == (f"{tmp_path / 'bomb.yaml'}: line 2 invalid YAML: aliases (*a0) "
                               f"are not supported: write the value out")


def test_an_admin_token_protects_metrics_too_unless_opened_explicitly() -> None:
    assert parse({"admin": {"token": "t"}}, env={}).metrics.require_auth is True
    assert parse({}, env={}).metrics.require_auth is False
    opened = parse({"admin": {"token": "t"}, "metrics": {"require_auth": False}}, env={})
    assert opened.metrics.require_auth is False


def test_connections_per_client_default_and_bounds() -> None:
    assert parse({}, env={}).server.max_connections_per_client is None  # half the total
    server = parse({"server": {"max_connections_per_client": 8}}, env={}).server
    assert server.max_connections_per_client == 8
    with pytest.raises(ConfigError, match=r"^server\.max_connections_per_client: must be "):
        parse({"server": {"max_connections_per_client": 0}}, env={})


@pytest.mark.parametrize("section,cls,names", [
    ("server", "ServerConfig", None),
    ("ledger", "LedgerConfig", ("queue_rows", "flush_seconds", "retention_days")),
    ("metrics", "MetricsConfig", ("max_label_values", "max_series")),
    ("export", "ExportConfig", ("max_bytes", "keep", "batch", "queue_records")),
    ("otel", "OtelConfig", ("export_interval_seconds", "queue_spans", "timeout_seconds")),
])
def test_each_default_is_the_dataclass_field_default_and_each_field_is_a_key(
        section: str, cls: str, names: tuple[str, ...] | None) -> None:
    """The defaults are written once (as dataclass field defaults): an empty section gives
    the dataclass's own defaults, and every numeric field is read from its YAML key."""
    import dataclasses

    import proxy.config as config_module

    kind = getattr(config_module, cls)
    names = names or tuple(f.name for f in dataclasses.fields(kind))

    def read(values: dict[str, object]) -> object:
        if section == "export":
            return parse({"export": [{"type": "stdout", **values}]}, env={}).exports[0]
        return getattr(parse({section: values}, env={}), section)

    defaults = kind("stdout") if section == "export" else kind()
    assert read({}) == defaults
    assert all(getattr(defaults, n) != 7 for n in names)
    got = read(dict.fromkeys(names, 7))
    assert {n: getattr(got, n) for n in names} == dict.fromkeys(names, 7)


def test_a_ledger_url_of_no_backend_is_a_config_error(tmp_path: Path) -> None:
    """Once `mysql://...` became a SQLite file named `mysql:`; now it names the URLs that
    work, and a SQLite URL still sets the file."""
    with pytest.raises(ConfigError) as info:
        parse({"ledger": {"url": "mysql://tb:pw@db/tb"}}, env={})
    message = str(info.value)
    assert message.startswith("ledger.url: 'mysql://tb:***@db/tb': no ledger backend for "
                              "mysql://")
    assert "sqlite:///<path>" in message and "postgresql://" in message
    config = parse({"ledger": {"url": f"sqlite:///{tmp_path}/l.db"}}, env={})
    assert config.ledger.target == f"{tmp_path}/l.db" and not config.ledger.shared
    config = parse({"ledger": {"url": "postgres://db/tb"}}, env={})
    assert config.ledger.target == "postgres://db/tb" and config.ledger.shared
    assert config.ledger.spool == "tokenbooth-postgresql.spool"


# --- pricing.adjustments ---

@pytest.mark.parametrize(("adjustment", "message"), [
    ({"match": {"upstream": "openai"}}, r"^pricing\.adjustments\[0\]\.percent: required"),
    ({"percent": -100}, r"^pricing\.adjustments\[0\]\.percent: must be greater than -100"),
    ({"percent": -250.5}, r"^pricing\.adjustments\[0\]\.percent: must be greater than -100"),
    ({"percent": float("nan")}, r"^pricing\.adjustments\[0\]\.percent: expected a finite"),
    ({"percent": "-20"}, r"^pricing\.adjustments\[0\]\.percent: expected float, got str$"),
    ({"percent": float("inf")}, r"^pricing\.adjustments\[0\]\.percent: expected a finite"),
    ({"percent": True}, r"^pricing\.adjustments\[0\]\.percent: expected float, got bool$"),
    ({"match": {"upstream": "opnai"}, "percent": -20},
     r"^pricing\.adjustments\[0\]\.match\.upstream: no upstream named 'opnai'"),
    ({"match": {"model": ""}, "percent": -20},
     r"^pricing\.adjustments\[0\]\.match\.model: must not be empty"),
    ({"match": {"agent": "a"}, "percent": -20},
     r"^pricing\.adjustments\[0\]\.match\.agent: unknown key \(allowed: upstream, model\)$"),
    ({"match": {"upstream": "openai"}, "percnt": -20},
     r"^pricing\.adjustments\[0\]\.percnt: unknown key \(allowed: match, percent\)$"),
])
def test_a_bad_price_adjustment_names_the_key(adjustment: dict[str, object],
                                              message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"pricing": {"adjustments": [adjustment]}}, env={})
    assert re.search(message, str(info.value)), str(info.value)


def test_price_adjustments_keep_their_order_and_accept_globs() -> None:
    config = parse({"upstreams": {"azure-eu": {"url": "http://127.0.0.1:1"}},
                    "pricing": {"adjustments": [
                        {"match": {"upstream": "openai", "model": "gpt-4o-mini*"}, "percent": -20},
                        {"match": {"upstream": "azure-*"}, "percent": 12.5},
                        {"percent": 0}]}}, env={})
    assert [(a.upstream, a.model, a.percent) for a in config.adjustments] == [
        ("openai", "gpt-4o-mini*", -20.0), ("azure-*", None, 12.5), (None, None, 0.0)]
    assert config.masked()["pricing"]["adjustments"][1] == {"match": {"upstream": "azure-*"},
                                                            "percent": 12.5}


def test_the_shipped_adjustments_hint_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = (ROOT / "config.yaml").read_text()
    hinted = text.replace("  # adjustments:", "  adjustments:").replace(
        "  #   - {match:", "    - {match:")
    assert hinted.count("    - {match:") == 2
    (tmp_path / "c.yaml").write_text(hinted)
    config = load(tmp_path / "c.yaml", env={})
    assert [(a.upstream, a.model, a.percent) for a in config.adjustments] == [
        ("openai", "gpt-4o-mini*", -20.0), ("anthropic", None, 10.0)]


def test_layered_budgets_and_notification_sinks_parse() -> None:
    config = parse({"notify": [{"name": "ops", "url": "http://127.0.0.1:9/h", "secret": "s",
                                "format": "slack"}],
                    "budgets": [
                        {"name": "single", "limit_usd": 5, "window": "week", "action": "block"},
                        {"name": "team", "match": {"team": "ml"}, "notify": ["ops"],
                         "thresholds": [1.0, 0.5], "windows": [
                             {"window": "day", "limit_usd": 20, "action": "block"},
                             {"window": "rolling", "hours": 5, "limit_usd": 8}]}]}, env={})
    single, team = config.budgets
    assert (single.layered, single.thresholds, single.notify) == (False, (0.8, 1.0), ())
    assert [(w.window, w.limit_usd, w.action, w.hours) for w in single.all_windows()] == [
        ("week", 5.0, "block", None)]
    assert team.layered and team.thresholds == (0.5, 1.0) and team.notify == ("ops",)
    assert [(w.id, w.limit_usd, w.action) for w in team.windows] == [
        ("day", 20.0, "block"), ("rolling_5h", 8.0, "alert")]
    assert config.masked()["notify"] == [{"name": "ops", "url": "http://127.0.0.1:9/h",
                                          "type": "webhook", "secret": "***",
                                          "format": "slack"}]


def test_an_upstream_with_a_key_needs_no_client_keys_since_consumer_keys_exist() -> None:
    """Consumer keys are issued at run time: a config with a proxy-held api_key and no
    auth.client_keys starts (every call must then present a consumer key, or is refused:
    tests/e2e/test_keys.py)."""
    config = parse({"upstreams": {"openai": {"api_key": "sk-x"}}}, env={})
    assert config.upstreams["openai"].api_key == "sk-x" and config.client_keys == {}


def test_rate_limits_parse_with_any_subset_of_their_kinds() -> None:
    config = parse({"rate_limits": [
        {"name": "team", "match": {"team": "red", "key": "k1"}, "requests_per_minute": 100,
         "tokens_per_minute": 200000},
        {"name": "money", "usd_per_minute": 0.5, "usd_per_hour": 10}]}, env={})
    team, money = config.rate_limits
    assert (team.name, dict(team.match), team.requests_per_minute, team.tokens_per_minute,
            team.usd_per_minute) == ("team", {"team": "red", "key": "k1"}, 100, 200000, None)
    assert (dict(money.match), money.usd_per_minute, money.usd_per_hour) == ({}, 0.5, 10.0)
    assert config.masked()["rate_limits"][1] == {
        "name": "money", "match": {}, "requests_per_minute": None, "tokens_per_minute": None,
        "usd_per_minute": 0.5, "usd_per_hour": 10.0}


def test_otel_is_off_unless_configured_and_its_endpoint_follows_the_protocol() -> None:
    assert parse(None, env={}).otel is None
    on = parse({"otel": None}, env={}).otel  # `otel:` alone: on, with the defaults
    assert on is not None and (on.metrics, on.spans, on.semconv) == (True, True, "latest")
    assert (on.url, on.service_name, on.export_interval_seconds) == \
        ("http://localhost:4318", "tokenbooth", 10)
    grpc = parse({"otel": {"protocol": "grpc"}}, env={}).otel
    assert grpc is not None and grpc.url == "http://localhost:4317"
    mine = parse({"otel": {"endpoint": "https://otel.example:4318/", "headers": {
        "authorization": "Bearer ${OTEL_TOKEN}"}}}, env={"OTEL_TOKEN": "s3cret"})
    assert mine.otel is not None and mine.otel.url == "https://otel.example:4318"
    assert mine.otel.headers == {"authorization": "Bearer s3cret"}
    assert mine.masked()["otel"]["headers"] == {"authorization": "***"}


def test_otel_header_names_are_lowercased() -> None:
    """gRPC metadata keys must be lowercase (an `Authorization` key fails every export);
    HTTP header names ignore case, so one spelling serves both protocols."""
    cfg = parse({"otel": {"protocol": "grpc", "headers": {
        "Authorization": "Bearer t", "X-Scope-OrgID": "team"}}}, env={}).otel
    assert cfg is not None and cfg.headers == {"authorization": "Bearer t",
                                               "x-scope-orgid": "team"}
    with pytest.raises(ConfigError, match=r"^otel\.headers\.authorization: named twice"):
        parse({"otel": {"headers": {"Authorization": "a", "authorization": "b"}}}, env={})
