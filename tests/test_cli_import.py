"""`voucher import` of a CSV export: good rows ingested, bad rows reported by line; `voucher
pull` through a sacct adapter, with the same progress bar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from adapters.config import load_provider_config
from adapters.pull import pull_provider
from tests.factories import make_uscc
from voucher.cli import main

PROVIDER_FILE = """
[adapter]
type = "csv"
cluster = "jx-cloud"
columns = {{ record_id = "id", tenant = "customer", resource = "sku", quantity = "qty", started_at = "start", ended_at = "end", amount = "fee_fen" }}

[tenants]
"acme" = "{uscc}"

[prices]
"gpu" = 800
"""

CSV = """id,customer,sku,qty,start,end,fee_fen
r1,acme,gpu.h800,2,2026-10-01T00:00:00+08:00,2026-10-01T02:00:00+08:00,3000
r2,acme,gpu.h800,abc,2026-10-01T00:00:00+08:00,2026-10-01T02:00:00+08:00,3000
r3,nobody,gpu.h800,1,2026-10-01T00:00:00+08:00,2026-10-01T01:00:00+08:00,1500
r4,acme,gpu.h800,1,2026-10-02T00:00:00+08:00,2026-10-02T01:00:00+08:00,1500
"""


def test_import_csv_reports_bad_rows_and_is_idempotent(finance, database_url, tmp_path):
    uscc = make_uscc(42)
    finance.post("/v1/providers", json={"id": "jx-cloud", "name": "c", "kind": "intelligent_computing"})
    finance.post("/v1/enterprises", json={"uscc": uscc, "name": "acme"})
    (tmp_path / "jx-cloud.toml").write_text(PROVIDER_FILE.format(uscc=uscc))
    export = tmp_path / "oct.csv"
    export.write_text(CSV)
    env = {"VOUCHER_DATABASE_URL": database_url, "VOUCHER_PROVIDERS_DIR": str(tmp_path)}
    args = ["import", "--provider", "jx-cloud", "--format", "csv", str(export)]
    first = CliRunner().invoke(main, args, env=env)
    assert first.exit_code == 0, first.output
    assert "2 records — accepted 2, duplicates 0, rejected 0" in first.output
    assert "skipped bad_row: 1" in first.output and "line 3" in first.output
    assert "unmapped tenants: nobody" in first.output
    again = CliRunner().invoke(main, args, env=env)
    assert "accepted 0, duplicates 2" in again.output
    assert len(finance.get("/v1/usage-records").json["data"]) == 2


def test_import_for_an_unknown_provider_fails_clearly(database_url, tmp_path):
    export = tmp_path / "x.csv"
    export.write_text(CSV)
    r = CliRunner().invoke(main, ["import", "--provider", "ghost", "--format", "csv", str(export)],
                           env={"VOUCHER_DATABASE_URL": database_url, "VOUCHER_PROVIDERS_DIR": str(tmp_path)})
    assert r.exit_code == 1 and "ghost" in r.output


# --- voucher pull ---------------------------------------------------------------------------

SACCT_PROVIDER_FILE = """
[adapter]
type = "sacct"
cluster = "jx-hpc"
sacct = "{sacct}"

[tenants]
"lab-a" = "{uscc}"

[prices]
"gpu" = 800
"""

PULLED_JOBS = 2500  # three ingest batches of 1,000, 1,000 and 500


def sacct_provider(finance, directory: Path, jobs: int = PULLED_JOBS) -> Path:
    """Register jx-hpc, whose `sacct` is a script printing `jobs` finished one-GPU jobs."""
    uscc = make_uscc(43)
    finance.post("/v1/providers", json={"id": "jx-hpc", "name": "HPC", "kind": "supercomputing"})
    finance.post("/v1/enterprises", json={"uscc": uscc, "name": "lab"})
    ended = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    rows = [f"{1000 + i}|lab-a|alice|gpu|billing=8,cpu=8,gres/gpu:a100=1,gres/gpu=1,node=1|3600|"
            f"{ended - timedelta(hours=1, seconds=i):%Y-%m-%dT%H:%M:%S}|"
            f"{ended - timedelta(seconds=i):%Y-%m-%dT%H:%M:%S}|COMPLETED" for i in range(jobs)]
    output = directory / "jobs.sacct"
    output.write_text("\n".join(rows) + "\n")
    sacct = directory / "sacct"
    sacct.write_text(f"#!/bin/sh\ncat '{output}'\n")
    sacct.chmod(0o755)
    path = directory / "jx-hpc.toml"
    path.write_text(SACCT_PROVIDER_FILE.format(sacct=sacct, uscc=uscc))
    return path


def test_pull_provider_reports_the_extracted_count_then_progress_per_batch(finance, db, tmp_path):
    config = load_provider_config(sacct_provider(finance, tmp_path))
    sizes, steps = [], []
    summary = pull_provider(db, config, progress=steps.append, on_extracted=sizes.append)
    assert sizes == [PULLED_JOBS] and steps == [1000, 1000, 500]
    assert (summary.records, summary.accepted, summary.duplicates) == (PULLED_JOBS, PULLED_JOBS, 0)


def test_pull_cli_shows_a_progress_bar_then_the_summary(finance, database_url, tmp_path, monkeypatch):
    sacct_provider(finance, tmp_path)
    # CliRunner's streams are no terminal, where click prints only the bar's label: pretend.
    monkeypatch.setattr("click._termui_impl.isatty", lambda stream: True)
    env = {"VOUCHER_DATABASE_URL": database_url, "VOUCHER_PROVIDERS_DIR": str(tmp_path)}
    first = CliRunner().invoke(main, ["pull", "--provider", "jx-hpc"], env=env)
    assert first.exit_code == 0, first.output
    assert "pulling jx-hpc" in first.stderr and f"{PULLED_JOBS}/{PULLED_JOBS}" in first.stderr
    assert "1000/2500" in first.stderr  # drawn while it went, not only at the end
    assert (f"jx-hpc: {PULLED_JOBS} records — accepted {PULLED_JOBS}, duplicates 0, rejected 0"
            in first.stdout)
    assert "pulling" not in first.stdout  # the summary alone on stdout, as for `voucher import`
    again = CliRunner().invoke(main, ["pull", "--provider", "jx-hpc"], env=env)
    assert again.exit_code == 0 and f"accepted 0, duplicates {PULLED_JOBS}" in again.stdout
    assert f"{PULLED_JOBS}/{PULLED_JOBS}" in again.stderr


# --- the risk registries from CSV (docs/API.md#risk-registries) ---------------------------------

def _registry_world(finance, database_url) -> tuple[str, dict[str, str]]:
    uscc = make_uscc(43)
    finance.post("/v1/providers", json={"id": "jx-cloud", "name": "c", "kind": "intelligent_computing"})
    finance.post("/v1/enterprises", json={"uscc": uscc, "name": "acme"})
    return uscc, {"VOUCHER_DATABASE_URL": database_url}


def test_import_contracts_names_line_and_field_and_re_runs_change_nothing(finance, database_url, tmp_path):
    uscc, env = _registry_world(finance, database_url)
    f = tmp_path / "contracts.csv"
    f.write_text("contract_no,enterprise_uscc,signed_on,valid_from,valid_until\n"
                 f"007,{uscc},2026-01-02,2026-01-01,2026-12-31\n"
                 f"=HYPERLINK(\"x\"),{uscc},2026-01-02,2026-01-01,2026-06-30\n"
                 f"C-3,{uscc},2026-01-02,2026-07-01,2026-06-30\n"
                 f"C-4,{make_uscc(44)},2026-01-02,2026-01-01,2026-06-30\n"
                 f"C-5,{uscc},yesterday,2026-01-01,2026-06-30\n", encoding="utf-8")
    args = ["import-contracts", "--provider", "jx-cloud", str(f)]
    first = CliRunner().invoke(main, args, env=env)
    assert first.exit_code == 0, first.output
    assert "contracts: 5 rows — created 2, unchanged 0, rejected 3" in first.output
    assert "line 4 (" in first.output and "valid_until is before valid_from" in first.output
    assert "line 5 (enterprise_uscc)" in first.output
    assert "line 6 (signed_on)" in first.output
    assert "importing contracts.csv" in first.output  # the progress bar, as `voucher import`
    again = CliRunner().invoke(main, args, env=env)
    assert "created 0, unchanged 2, rejected 3" in again.output
    stored = {c["contract_no"] for c in finance.get("/v1/contracts").json["data"]}
    assert stored == {"007", '=HYPERLINK("x")'}  # text stays text: no number, no formula


def test_import_prices_and_related_parties(finance, database_url, tmp_path):
    uscc, env = _registry_world(finance, database_url)
    prices = tmp_path / "prices.csv"
    prices.write_text("resource,unit,unit_price,effective_from\n"
                      "gpu.h800,gpu_hour,1200,2026-01-01\n"
                      "gpu.h800,gpu_hour,12.5,2026-02-01\n"
                      "gpu.h800,gpu_hour,1300,2026-01-01\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["import-prices", "--provider", "jx-cloud", str(prices)], env=env)
    assert "prices: 3 rows — created 1, unchanged 0, rejected 2" in r.output, r.output
    assert "line 3 (unit_price)" in r.output and "line 4 (effective_from)" in r.output
    again = CliRunner().invoke(main, ["import-prices", "--provider", "jx-cloud", str(prices)], env=env)
    assert "created 0, unchanged 1, rejected 2" in again.output
    assert [p["unit_price"] for p in finance.get("/v1/providers/jx-cloud/prices").json["data"]] == [1200]

    links = tmp_path / "links.csv"
    links.write_text("provider_id,enterprise_uscc,relation\n"
                     f"jx-cloud,{uscc},同一实际控制人\n"
                     f"ghost,{uscc},x\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["import-related-parties", str(links)], env=env)
    assert "related parties: 2 rows — created 1, unchanged 0, rejected 1" in r.output, r.output
    assert "line 3 (provider_id)" in r.output
    assert [x["relation"] for x in finance.get("/v1/related-parties").json["data"]] == ["同一实际控制人"]


def test_a_registry_file_with_a_wrong_header_is_refused_whole(finance, database_url, tmp_path):
    _uscc, env = _registry_world(finance, database_url)
    f = tmp_path / "p.csv"
    f.write_text("resource,unit,price,effective_from\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["import-prices", "--provider", "jx-cloud", str(f)], env=env)
    assert r.exit_code != 0 and "missing unit_price" in r.output and "unknown price" in r.output
    r = CliRunner().invoke(main, ["import-prices", "--provider", "ghost", str(f)], env=env)
    assert r.exit_code != 0 and "ghost" in r.output


def test_import_rejects_uncovered_records_no_contract_when_the_policy_requires_contracts(
        finance, as_key, database_url, tmp_path):
    """`require_contracts = true` (docs/POLICY.md#risk): `voucher import` rejects what no confirmed
    contract covers with `no_contract`, exactly as the push API; covered records go in."""
    from billing.policy_file import default_policy_path

    uscc = make_uscc(42)
    finance.post("/v1/providers", json={"id": "jx-cloud", "name": "c", "kind": "intelligent_computing"})
    finance.post("/v1/enterprises", json={"uscc": uscc, "name": "acme"})
    text = default_policy_path().read_text(encoding="utf-8")
    assert "require_contracts = false" in text
    policy = tmp_path / "policy.toml"
    policy.write_text(text.replace("require_contracts = false", "require_contracts = true"), encoding="utf-8")
    (tmp_path / "jx-cloud.toml").write_text(PROVIDER_FILE.format(uscc=uscc))
    export = tmp_path / "oct.csv"
    export.write_text(CSV)
    # a confirmed contract covering 2026-10-01 only: r1 covered, r4 (10-02) not
    ctr = as_key("provider", "jx-cloud").post("/v1/contracts", json={
        "enterprise_uscc": uscc, "contract_no": "C-1", "signed_on": "2026-09-01",
        "valid_from": "2026-09-01", "valid_until": "2026-10-01"}).json["id"]
    assert as_key("enterprise", uscc).post(f"/v1/contracts/{ctr}/confirm").status_code == 200
    env = {"VOUCHER_DATABASE_URL": database_url, "VOUCHER_PROVIDERS_DIR": str(tmp_path),
           "VOUCHER_POLICY": str(policy)}
    r = CliRunner().invoke(main, ["import", "--provider", "jx-cloud", "--format", "csv", str(export)], env=env)
    assert r.exit_code == 0, r.output
    assert "accepted 1" in r.output and "rejected 1" in r.output and "no_contract" in r.output
    stored = [x["record_id"] for x in finance.get("/v1/usage-records").json["data"]]
    assert len(stored) == 1 and stored[0].endswith("r1"), stored
