"""Policy simulation (docs/POLICY.md#simulation): a year built through the HTTP API on both
databases, replayed read-only under the current policy (to the fen), a ¥3,000,000 cap, a 40 %
rate and a budget. Figures in names and comments are yuan; the code speaks fen (¥1 = 100)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from billing.simulation import read_only, simulate
from billing.simulation_report import SHEETS, write_xlsx
from kernel.audit import AuditEvent
from kernel.db import Base
from tests.conftest import Api, new_key
from tests.factories import claim, invoice, setup_programme, usage

YUAN = 100
Y = 2026


def run(finance, period):
    r = finance.post("/v1/reconciliations", json={"period": period})
    assert r.status_code in (200, 201), r.json
    return r.json


def approve(finance, cid):
    r = finance.post(f"/v1/claims/{cid}/approve", json={"reason": "checked"})
    assert r.status_code == 200, r.json


def spend(prov, ent, uscc, no, amount, period, pid="prov-a", others=()):
    """Usage, an invoice and a claim of `amount` fen for one month; returns the claim id."""
    usage(prov, uscc, amount, period, rid=f"u-{no}")
    invoice(prov, no, uscc, amount, period)
    return claim(ent, [(pid, no, amount)], period, others=others)


@pytest.fixture
def year(client, db, finance, app):
    """A realistic 2026, month by month as the engine saw it (the engine's order):

    E0 (standard cap ¥2,000,000): March ¥3,000,000 spent → ¥1,500,000, approved; September a
       redemption of ¥200,000 → ¥100,000, then ¥2,000,000 spent → cut to ¥400,000 (cap).
    E1 (a new filing on 2026-07-01: cap ¥5,000,000): April ¥8,000,000 → ¥4,000,000; May
       ¥100,000 with ¥30,000 from another programme → ¥20,000 (就高不重复).
    E2: February ¥10,000 (usage ¥9,000 + ¥1,000) → ¥5,000 approved, then ¥1,000 voided →
       clawed back to ¥4,500; March ¥10,000 → ¥5,000 approved, then ¥50 of late usage → kept.
    E3 (named "=1+2"): May a redemption of ¥40,000 captured at ¥30,000 → ¥15,000; June ¥20,000
       clean + an item paid ¥6,000 on a ¥5,000 invoice (rejected item) → ¥10,000, flagged; July
       a redemption of ¥10,000 authorised only → ¥5,000 held; August a claim rejected → 0.
    Actual: E0 ¥2,000,000 · E1 ¥4,020,000 · E2 ¥9,500 · E3 ¥30,000 = ¥6,059,500.
    """
    _, u = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=4)
    a = Api(client, new_key(db, "provider", "prov-a"))
    b = Api(client, new_key(db, "provider", "prov-b"))
    e = [Api(client, new_key(db, "enterprise", x)) for x in u]
    assert finance.patch(f"/v1/enterprises/{u[3]}", json={"name": "=1+2"}).status_code == 200
    r = finance.post(f"/v1/enterprises/{u[1]}/model-filings",
                     json={"filing_no": "ZJ-2026-7", "model_name": "m", "obtained_on": "2026-07-01"})
    assert r.status_code == 201, r.json

    # February: E2 ¥10,000 (two records), approved; the ¥1,000 record is voided later.
    usage(a, u[2], 900_000, "2026-02", rid="u-feb-9000")
    usage(a, u[2], 100_000, "2026-02", rid="u-feb-1000", day=16)
    invoice(a, "E2-FEB", u[2], 1_000_000, "2026-02")
    feb = claim(e[2], [("prov-a", "E2-FEB", 1_000_000)], "2026-02")
    run(finance, "2026-02")
    approve(finance, feb)
    # March: E0 ¥3,000,000 approved; E2 ¥10,000 approved.
    mar0 = spend(a, e[0], u[0], "E0-MAR", 300_000_000, "2026-03")
    mar2 = spend(a, e[2], u[2], "E2-MAR", 1_000_000, "2026-03")
    run(finance, "2026-03")
    approve(finance, mar0)
    approve(finance, mar2)
    # April, May: E1; May: E3's redemption first (during the month).
    spend(b, e[1], u[1], "E1-APR", 800_000_000, "2026-04", pid="prov-b")
    run(finance, "2026-04")
    rdm = a.post("/v1/redemptions", json={"enterprise_uscc": u[3], "reference": "R-MAY",
                                          "list_amount": 4_000_000, "period": "2026-05"})
    assert rdm.status_code == 201, rdm.json
    usage(a, u[3], 3_000_000, "2026-05", rid="u-r-may")
    invoice(a, "R-MAY", u[3], 3_000_000, "2026-05")
    cap = a.post(f"/v1/redemptions/{rdm.json['id']}/capture", json={"invoice_no": "R-MAY", "amount": 3_000_000})
    assert cap.status_code == 200, cap.json
    spend(b, e[1], u[1], "E1-MAY", 10_000_000, "2026-05", pid="prov-b", others=[3_000_000])
    run(finance, "2026-05")
    # June: E3 one clean item, one paid above its invoice (invoice_amount_mismatch).
    usage(a, u[3], 2_000_000, "2026-06", rid="u-jun-a")
    invoice(a, "E3-JUN-A", u[3], 2_000_000, "2026-06")
    usage(b, u[3], 500_000, "2026-06", rid="u-jun-b")
    invoice(b, "E3-JUN-B", u[3], 500_000, "2026-06")
    claim(e[3], [("prov-a", "E3-JUN-A", 2_000_000), ("prov-b", "E3-JUN-B", 600_000)], "2026-06")
    run(finance, "2026-06")
    # July: a hold only.
    assert a.post("/v1/redemptions", json={"enterprise_uscc": u[3], "reference": "R-JUL",
                                           "list_amount": 1_000_000, "period": "2026-07"}).status_code == 201
    # August: a claim finance rejects.
    aug = spend(a, e[3], u[3], "E3-AUG", 800_000, "2026-08")
    run(finance, "2026-08")
    assert finance.post(f"/v1/claims/{aug}/reject", json={"reason": "not compute"}).status_code == 200
    # September: E0's redemption, then its claim meets the cap.
    rdm = a.post("/v1/redemptions", json={"enterprise_uscc": u[0], "reference": "R-SEP",
                                          "list_amount": 20_000_000, "period": "2026-09"})
    assert rdm.status_code == 201, rdm.json
    usage(a, u[0], 20_000_000, "2026-09", rid="u-r-sep")
    invoice(a, "R-SEP", u[0], 20_000_000, "2026-09")
    assert a.post(f"/v1/redemptions/{rdm.json['id']}/capture",
                  json={"invoice_no": "R-SEP", "amount": 20_000_000}).status_code == 200
    spend(b, e[0], u[0], "E0-SEP", 200_000_000, "2026-09", pid="prov-b")
    run(finance, "2026-09")
    # Later: the void after approval (clawback) and late usage (nothing).
    assert a.delete("/v1/usage-records/u-feb-1000", json={"reason": "wrong tenant"}).status_code == 200
    usage(a, u[2], 5_000, "2026-03", rid="u-mar-late", day=20)
    run(finance, "2026-02")
    run(finance, "2026-03")
    assert finance.get(f"/v1/claims/{feb}").json["payable"] == 450_000
    assert finance.get(f"/v1/claims/{mar2}").json["payable"] == 500_000
    return {"policy": app.extensions["voucher.policy"], "usccs": u, "db": db}


def replay(year, policy=None):
    with year["db"].session() as s, read_only(s):
        return simulate(s, year["policy"], policy or year["policy"], Y)


def by_enterprise(sim, usccs, field):
    return [getattr(sim.enterprises[u], field) // YUAN for u in usccs]


def test_current_policy_reproduces_the_actual_figures_to_the_fen(year):
    sim = replay(year)
    u = year["usccs"]
    assert by_enterprise(sim, u, "actual") == [2_000_000, 4_020_000, 9_500, 30_000]
    for e in sim.enterprises.values():
        assert (e.simulated, e.simulated_cap_hits) == (e.actual, e.actual_cap_hits), e
    assert sim.actual == sim.simulated == 6_059_500 * YUAN
    assert sim.actual_cap_hits == sim.simulated_cap_hits == 1  # E0's September claim
    assert [sim.enterprises[x].actual_cap // YUAN for x in u] == [2_000_000, 5_000_000, 2_000_000, 2_000_000]
    assert sim.months["2026-09"] == [500_000 * YUAN, 500_000 * YUAN]
    assert (sim.claims, sim.redemptions) == (8, 3)


def test_a_3_million_cap_lifts_the_capped_enterprise_only(year):
    sim = replay(year, replace(year["policy"], id="cap-3m", cap_standard=300_000_000))
    u = year["usccs"]
    # E0: ¥1,500,000 + ¥100,000 + ¥1,000,000 (¥1,400,000 left, no longer cut) = ¥2,600,000;
    # E1's filing cap (¥5,000,000) and the others are not touched.
    assert by_enterprise(sim, u, "simulated") == [2_600_000, 4_020_000, 9_500, 30_000]
    assert by_enterprise(sim, u, "difference") == [600_000, 0, 0, 0]
    assert sim.simulated == 6_659_500 * YUAN and sim.difference == 600_000 * YUAN
    assert sim.simulated_cap_hits == 0 and sim.budget_annual is None


def test_a_40_percent_rate(year):
    sim = replay(year, replace(year["policy"], id="rate-40", rate=Fraction(2, 5)))
    u = year["usccs"]
    # E0: March ¥1,200,000; September hold ¥80,000 captured ¥80,000; claim ¥800,000 cut to the
    #     ¥720,000 left → ¥2,000,000 (still capped).
    # E1: April ¥3,200,000; May ¥40,000 − ¥30,000 = ¥10,000 → ¥3,210,000.
    # E2: February granted ¥4,000, recomputed on ¥9,000 after the void → ¥3,600; March ¥4,000
    #     (late usage changes nothing) → ¥7,600.
    # E3: June ¥8,000; May hold ¥16,000 captured on ¥30,000 → ¥12,000; July hold ¥4,000 → ¥24,000.
    assert by_enterprise(sim, u, "simulated") == [2_000_000, 3_210_000, 7_600, 24_000]
    assert sim.simulated == 5_241_600 * YUAN
    assert sim.difference == (5_241_600 - 6_059_500) * YUAN
    assert sim.simulated_cap_hits == 1


def test_a_budget_cuts_in_the_engines_order_and_reports_what_it_could_not_fund(year):
    sim = replay(year, replace(year["policy"], id="cap-3m-budget-6m", cap_standard=300_000_000,
                               budget_annual=600_000_000))
    # By September ¥5,659,500 is used; E0's September claim wants ¥1,000,000 of the ¥340,500 left.
    assert sim.enterprises[year["usccs"][0]].simulated == 1_940_500 * YUAN
    assert sim.simulated == 6_000_000 * YUAN and sim.budget_left == 0
    assert sim.unfunded == 659_500 * YUAN


def table_counts(session):
    return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def test_simulating_writes_nothing(year):
    db = year["db"]
    with db.session() as s:
        before = table_counts(s)
        head = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
        head = (head.seq, head.hash)
    replay(year, replace(year["policy"], id="rate-40", rate=Fraction(2, 5)))
    with db.session() as s:
        assert table_counts(s) == before
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
        assert (last.seq, last.hash) == head


def test_the_replay_transaction_refuses_writes_on_both_databases(db):
    with db.session() as s, read_only(s):
        with pytest.raises(DBAPIError):
            s.execute(text("UPDATE enterprise SET name = 'x'"))
    with db.session() as s, s.begin():  # and the connection is writable again afterwards
        s.execute(text("UPDATE enterprise SET name = name"))


def fen(value) -> int:
    return int(Decimal(str(value)) * 100)


def test_workbook_sheets_totals_chart_and_formula_safe_names(year, tmp_path):
    sim = replay(year, replace(year["policy"], id="rate-40", rate=Fraction(2, 5)))
    buf = io.BytesIO()
    write_xlsx(sim, buf)
    raw = buf.getvalue()
    wb = load_workbook(io.BytesIO(raw))
    assert wb.sheetnames == list(SHEETS)
    summary = {r[0].value: r for r in wb[SHEETS[0]].iter_rows() if r[0].value}
    total = summary["应付合计（元） Payable total (CNY)"]
    assert [fen(c.value) for c in total[1:4]] == [6_059_500 * YUAN, 5_241_600 * YUAN, -817_900 * YUAN]
    rows = list(wb[SHEETS[1]].iter_rows(min_row=3, values_only=True))
    body, last = rows[:-1], rows[-1]
    assert len(body) == 4 and last[0] == "合计 Total"
    assert sum(fen(r[8]) for r in body) == fen(last[8]) == 5_241_600 * YUAN
    assert body[0][0] == year["usccs"][1]  # the largest change first: E1, −¥810,000
    named = [c for r in wb[SHEETS[1]].iter_rows() for c in r if c.value == "=1+2"]
    assert named and all(c.data_type == "s" and c.quotePrefix for c in named)
    months = list(wb[SHEETS[2]].iter_rows(min_row=4, max_row=16, values_only=True))
    assert [m[0] for m in months[:12]] == [f"{Y}-{m:02d}" for m in range(1, 13)]
    assert fen(months[12][2]) == 5_241_600 * YUAN
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        charts = [n for n in z.namelist() if n.startswith("xl/charts/chart")]
        assert len(charts) == 2  # by month on the summary, by enterprise beside its table
        assert all(b"barChart" in z.read(n) for n in charts)


def cli(database_url, *args):
    from click.testing import CliRunner

    from voucher.cli import main

    return CliRunner().invoke(main, ["simulate", *args], env={"VOUCHER_DATABASE_URL": database_url})


def test_cli_writes_the_workbook_and_prints_a_summary(year, database_url, tmp_path):
    policy = tmp_path / "cap-3m.toml"
    current = (Path(__file__).parents[2] / "config/policies/jiaxing-2025.toml").read_text(encoding="utf-8")
    policy.write_text(current.replace("standard = 200_000_000", "standard = 300_000_000")
                      .replace('id = "jiaxing-ai-plus-2025"', 'id = "cap-3m"', 1), encoding="utf-8")
    out = tmp_path / "out" / "sim.xlsx"
    r = cli(database_url, "--policy", str(policy), "--year", str(Y), "--output", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    assert "policy cap-3m" in r.stdout and "4 enterprises · 8 claims · 3 redemptions" in r.stdout
    assert "actual ¥6,059,500.00 · simulated ¥6,659,500.00 · difference ¥600,000.00" in r.stdout
    assert "cap hits 1 → 0" in r.stdout and "unlimited" in r.stdout
    assert f"simulate {Y}" in r.stderr  # the progress bar
    assert load_workbook(out).sheetnames == list(SHEETS)


def test_cli_names_the_bad_key_of_a_policy_file_without_a_traceback(db, database_url, tmp_path):
    bad = tmp_path / "bad.toml"
    current = (Path(__file__).parents[2] / "config/policies/jiaxing-2025.toml").read_text(encoding="utf-8")
    bad.write_text(current.replace('rate = "0.5"', "rate = 0.4"), encoding="utf-8")
    r = cli(database_url, "--policy", str(bad), "--output", str(tmp_path / "x.xlsx"))
    assert r.exit_code == 1 and "rate" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "x.xlsx").exists()
    missing = cli(database_url, "--policy", str(tmp_path / "none.toml"), "--output", str(tmp_path / "x.xlsx"))
    assert missing.exit_code == 2 and "--policy" in missing.stderr


def test_the_replay_reads_per_month_never_per_claim(year):
    from sqlalchemy import event

    statements = []
    engine = year["db"].engine

    def count(*_args):
        statements.append(1)
    event.listen(engine, "before_cursor_execute", count)
    try:
        replay(year)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # Registry, filings (one query for every enterprise), then per month its redemptions and
    # whether it has claims; a month with claims adds metered sums, invoice holders, redeemed
    # invoices and one page of claims with their items (plus the empty page that ends them).
    months_with_claims = 7
    assert len(statements) <= 4 + 12 * 2 + months_with_claims * 6 + 3  # + BEGIN and the read-only switch


def test_libreoffice_opens_the_workbook_and_the_enterprises_add_up(year, tmp_path):
    from tests.billing.test_reports import libreoffice_sheet

    sim = replay(year, replace(year["policy"], id="cap-3m", cap_standard=300_000_000))
    buf = io.BytesIO()
    write_xlsx(sim, buf)
    rows = libreoffice_sheet(buf.getvalue(), SHEETS[1], tmp_path)
    assert rows[1][0] == "USCC" and rows[-1][0] == "合计 Total"
    body = rows[2:-1]
    assert sum(fen(r[8]) for r in body) == fen(rows[-1][8]) == 6_659_500 * YUAN
    assert sum(fen(r[9]) for r in body) == 600_000 * YUAN
    assert "=1+2" in {r[1] for r in body}  # text, not a formula LibreOffice computed to 3


def test_a_year_the_budget_cut_and_waitlisted_is_replayed_to_the_fen(client, db, finance, app):
    """docs/POLICY.md#budget's example, run by the service with `annual` = ¥10,000: October's
    claims asking ¥4,000, ¥5,000, ¥3,000 and ¥1,000 get ¥4,000, ¥5,000, ¥1,000 (cut) and ¥0
    (waitlisted); in November A asks ¥500 more and waits behind C (first in, first out)."""
    app.extensions["voucher.policy"] = replace(app.extensions["voucher.policy"], budget_annual=1_000_000)
    _, u = setup_programme(finance, providers=("prov-a",), enterprises=4)
    a = Api(client, new_key(db, "provider", "prov-a"))
    ids = [spend(a, Api(client, new_key(db, "enterprise", x)), x, f"OCT-{i}", amount, "2026-10")
           for i, (x, amount) in enumerate(zip(u, (800_000, 1_000_000, 600_000, 200_000), strict=True))]
    run(finance, "2026-10")
    nov = spend(a, Api(client, new_key(db, "enterprise", u[0])), u[0], "NOV-0", 100_000, "2026-11")
    run(finance, "2026-11")
    paid = [finance.get(f"/v1/claims/{c}").json for c in [*ids, nov]]
    assert [(c["payable"], c["status"]) for c in paid] == [
        (400_000, "verified"), (500_000, "verified"), (100_000, "verified"), (0, "waitlisted"), (0, "waitlisted")]

    policy = app.extensions["voucher.policy"]
    with db.session() as s, read_only(s):
        sim = simulate(s, policy, policy, Y)
    assert [(sim.enterprises[x].actual, sim.enterprises[x].simulated) for x in u] == [
        (400_000, 400_000), (500_000, 500_000), (100_000, 100_000), (0, 0)]
    assert sim.simulated == sim.budget_annual == 1_000_000 and sim.budget_left == 0
    assert sim.unfunded == (300_000 - 100_000) + 100_000 + 50_000  # C's ¥2,000, D's ¥1,000, A's ¥500
