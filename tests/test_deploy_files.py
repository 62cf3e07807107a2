"""Deployment files, checked as far as a machine without a Docker engine allows.

- docker-compose.yml against the Compose Specification's JSON schema (vendored in
  tests/schemas/, source noted in tests/schemas/README.md);
- the Prometheus config and alert rules with promtool (`check config`, `check rules`, and the
  rules' unit tests `test rules`); promtool comes from Debian's `prometheus` package, which
  scripts/ensure-prometheus.sh installs;
- the Grafana provisioning and dashboard: it loads, and every query names only metrics the
  app exports (as do the alert rules).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from api import metrics

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "config" / "prometheus"
GRAFANA = ROOT / "config" / "grafana"


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        script = ROOT / "scripts" / "ensure-prometheus.sh"
        assert script.exists(), "promtool is missing and scripts/ensure-prometheus.sh is not there"
        subprocess.run(["bash", str(script)], check=True, cwd=ROOT)
        path = shutil.which("promtool")
    assert path, "promtool is not installed (Debian package prometheus)"
    return path


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# --- Compose ------------------------------------------------------------------------------------
def compose_validator() -> jsonschema.Validator:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_follows_the_compose_specification():
    errors = sorted(compose_validator().iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_compose_schema_check_catches_mistakes():
    bad = compose()
    bad["services"]["app"]["helthcheck"] = {"test": ["CMD", "true"]}
    bad["services"]["postgres"]["depends_on"] = {"app": {"condition": "when_ready"}}
    assert len(list(compose_validator().iter_errors(bad))) >= 2


def test_compose_stack_has_every_service_wired_together():
    services = compose()["services"]
    assert {"app", "scheduler", "postgres", "prometheus", "grafana"} <= set(services)
    app, scheduler = services["app"], services["scheduler"]
    assert "voucher db upgrade" in " ".join(app["command"])
    assert "gunicorn -c config/gunicorn.conf.py" in " ".join(app["command"])
    assert scheduler["command"][:2] == ["voucher", "scheduler"]
    port = scheduler["command"][scheduler["command"].index("--metrics-port") + 1]
    for svc in (app, scheduler):
        assert svc["environment"]["VOUCHER_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in svc["environment"]["VOUCHER_DATABASE_URL"]
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    # Every file the stack mounts from the repository exists.
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    # Prometheus scrapes the app where compose serves it.
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert f"app:{app['environment']['VOUCHER_BIND'].rsplit(':', 1)[1]}" in targets
    assert f"scheduler:{port}" in targets


def test_dockerfile_is_slim_non_root_gunicorn_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/healthz" in text
    assert 'CMD ["gunicorn", "-c", "config/gunicorn.conf.py", "voucher.wsgi:app"]' in text
    # Dependencies from the lock with hashes checked; the project itself adds none of its own.
    assert re.search(r"^COPY requirements/runtime\.txt ", text, re.M)
    assert "pip install --require-hashes -r requirements/runtime.txt" in text
    assert "pip install --no-deps --no-build-isolation -e ." in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "var"} <= set(ignored)
    # Every package of the project (pyproject's list) and the migrations are in the image.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for package in [*packages, "migrations"]:
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), f"Dockerfile misses {package}/"


# --- Prometheus --------------------------------------------------------------------------------
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT)


FINANCE_KEY_FILE = "/run/secrets/metrics_finance_key"  # compose's secret, in the container


def test_promtool_accepts_the_prometheus_config(promtool, tmp_path):
    # promtool opens credential files: check a copy pointing at a stand-in for the secret.
    (tmp_path / "key").write_text("vch_stand_in\n")
    text = (PROM / "prometheus.yml").read_text()
    assert FINANCE_KEY_FILE in text
    for name in ("alerts.yml",):
        (tmp_path / name).write_text((PROM / name).read_text())
    (tmp_path / "prometheus.yml").write_text(text.replace(FINANCE_KEY_FILE, str(tmp_path / "key")))
    out = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_money_is_scraped_only_with_a_finance_key_and_nothing_publishes_it():
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["voucher-app"]["metrics_path"] == "/metrics"
    finance = jobs["voucher-app-finance"]
    assert finance["metrics_path"] == "/metrics/finance"
    assert finance["authorization"] == {"type": "Bearer", "credentials_file": FINANCE_KEY_FILE}
    services = compose()["services"]
    assert "metrics_finance_key" in services["prometheus"]["secrets"]
    assert compose()["secrets"]["metrics_finance_key"]["file"].startswith("./var/")  # never in git
    # Prometheus (which stores the money series) listens on the host's loopback only, and the
    # scheduler's metrics port is not published at all.
    assert all(str(p).startswith("127.0.0.1:") for p in services["prometheus"].get("ports", []))
    assert "ports" not in services["scheduler"]


def test_promtool_accepts_the_alert_rules(promtool):
    out = run(promtool, "check", "rules", str(PROM / "alerts.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    out = run(promtool, "test", "rules", str(PROM / "alerts.test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_required_alerts_exist():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"VoucherJobFailed", "VoucherIngestionServerErrors", "VoucherIngestionRejectionsHigh",
            "VoucherReconciliationNotRun"} <= alerts
    ops = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for alert in alerts:  # every alert is explained to the person it wakes
        assert alert in ops, f"docs/OPERATIONS.md does not explain {alert}"


# --- Metric names in PromQL --------------------------------------------------------------------
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan"}
PROMETHEUS_OWN = {"up"}  # synthesised by Prometheus for every target


def exported_names() -> set[str]:
    """Every sample name the app can expose: defined metrics with their suffixes, DB gauges."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            base, kind = value._name, value._type
            if kind == "counter":
                names |= {f"{base}_total", f"{base}_created"}
            elif kind == "histogram":
                names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
            else:
                names.add(base)
    names |= {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str)
              and v.startswith("voucher_")}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels, keywords or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                      # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                     # ranges, $__range
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        after = text[m.end():].lstrip()
        if after.startswith("(") or word.lower() in KEYWORDS:
            continue
        if re.match(r"^\d", word) or (m.start() > 0 and text[m.start() - 1] in "$."):
            continue
        names.add(word)
    return names


def test_metric_name_parser_finds_only_metric_names():
    expr = ('histogram_quantile(0.95, sum by (le, route) (rate(voucher_http_request_duration_seconds_bucket'
            '{route=~"/v1/.*"}[5m]))) / on() group_left max(voucher_x) and day_of_month(vector(time())) >= 2')
    assert metric_names(expr) == {"voucher_http_request_duration_seconds_bucket", "voucher_x"}


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "voucher.json").read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_grafana_dashboard_queries_only_metrics_the_app_exports():
    exported = exported_names()
    queried = set()
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r} queries no metric"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries {unknown}, which the app does not export"
            queried |= names
    # The dashboard shows ingestion, subsidy and quota.
    for needed in ("voucher_usage_records_total", "voucher_ingest_batch_duration_seconds_bucket",
                   "voucher_subsidy_granted_fen_total", "voucher_subsidy_reserved_fen_total",
                   "voucher_subsidy_clawed_back_fen_total", "voucher_enterprises_near_cap"):
        assert needed in queried, needed


def test_alert_rules_query_only_metrics_the_app_exports():
    exported = exported_names() | PROMETHEUS_OWN
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - exported
            assert not unknown, f"{rule['alert']} queries {unknown}"


def test_grafana_provisioning_points_the_dashboard_at_the_provisioned_prometheus():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for panel in panels(dashboard()):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == source["uid"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "voucher.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    grafana = compose()["services"]["grafana"]
    assert f"./config/grafana/dashboards:{path}:ro" in grafana["volumes"]
    assert "./config/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    ids = [p["id"] for p in panels(dashboard())]
    assert len(ids) == len(set(ids))
