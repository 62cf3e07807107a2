"""`voucher import` of a CSV export: good rows ingested, bad rows reported by line."""

from __future__ import annotations

from click.testing import CliRunner

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
