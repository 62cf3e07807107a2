"""The period lifecycle (docs/API.md#period-close): close, final figures, the daily job."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from billing.lifecycle import close_due, open_periods, run_open_periods
from billing.policy import PolicyError
from billing.policy_file import default_policy_path, load_policy, parse_policy
from kernel.billing_periods import BillingPeriod
from kernel.jobruns import JobRun
from kernel.periods import is_day_key
from tests.conftest import Api
from tests.factories import claim, invoice, record, setup_programme, usage
from voucher.cli import main
from voucher.scheduler import JOBS, cron_trigger, fire

PERIOD = "2026-10"


@pytest.fixture
def w(finance, as_key):
    _, (u0, u1) = setup_programme(finance, enterprises=2)
    prov, ent = as_key("provider", "prov-a"), as_key("enterprise", u0)
    usage(prov, u0, 1_200_000, rid="late-void")
    invoice(prov, "INV-1", u0, 1_200_000)
    cid = claim(ent, [("prov-a", "INV-1", 1_200_000)])
    return type("W", (), {"finance": finance, "prov": prov, "ent": ent, "u0": u0, "u1": u1, "claim": cid})


def close(api: Api, period: str = PERIOD):
    return api.post(f"/v1/reconciliations/{period}/close", json={})


def test_a_period_closes_only_when_no_claim_is_undecided(w):
    r = close(w.finance)
    assert (r.status_code, r.json["error"]["code"]) == (409, "claims_undecided"), r.json
    assert w.finance.post("/v1/reconciliations", json={"period": PERIOD}).status_code == 201
    assert close(w.finance).json["error"]["code"] == "claims_undecided"  # verified: still undecided
    assert w.finance.post(f"/v1/claims/{w.claim}/approve", json={}).status_code == 200
    r = close(w.finance)
    assert r.status_code == 200, r.json
    assert r.json["object"] == "billing_period" and r.json["state"] == "closed"
    assert r.json["undecided_claims"] == 0 and r.json["closed_by"].startswith("finance:")
    again = close(w.finance)  # idempotent: the same answer
    assert again.status_code == 200 and again.json["closed_at"] == r.json["closed_at"]
    rec = w.finance.get(f"/v1/reconciliations/{PERIOD}").json
    assert rec["state"] == "closed" and rec["closed_at"] == r.json["closed_at"]


def test_a_month_not_over_does_not_close(w):
    now = datetime.now(UTC)
    r = close(w.finance, f"{now.year:04d}-{now.month:02d}")
    assert (r.status_code, r.json["error"]["code"]) == (409, "period_not_over")


def test_a_closed_period_figures_are_final(w):
    w.finance.post("/v1/reconciliations", json={"period": PERIOD})
    w.finance.post(f"/v1/claims/{w.claim}/approve", json={})
    assert close(w.finance).status_code == 200
    before = w.finance.get(f"/v1/enterprises/{w.u0}/quota?year=2026").json

    r = w.finance.post("/v1/reconciliations", json={"period": PERIOD})
    assert (r.status_code, r.json["error"]["code"]) == (409, "period_closed")
    r = w.prov.delete("/v1/usage-records/late-void")
    assert (r.status_code, r.json["error"]["code"]) == (409, "period_closed")
    r = w.prov.post("/v1/provider-invoices", json={"invoice_no": "INV-2", "enterprise_uscc": w.u0,
                                                    "period": PERIOD, "amount": 5, "issued_on": "2026-10-28"})
    assert (r.status_code, r.json["error"]["code"]) == (409, "period_closed")
    r = w.ent.post("/v1/claims", json={"period": PERIOD, "items": [
        {"provider_id": "prov-a", "invoice_no": "INV-1", "amount_paid": 1_200_000}]})
    assert (r.status_code, r.json["error"]["code"]) == (409, "period_closed")
    # The replayed invoice still answers as a replay; nothing moved on the quota.
    assert invoice(w.prov, "INV-1", w.u0, 1_200_000)["invoice_no"] == "INV-1"
    assert w.finance.get(f"/v1/enterprises/{w.u0}/quota?year=2026").json == before


def test_usage_pushed_for_a_closed_period_is_rejected_per_record(w, db):
    w.finance.post("/v1/reconciliations", json={"period": PERIOD})
    w.finance.post(f"/v1/claims/{w.claim}/approve", json={})
    assert close(w.finance).status_code == 200
    stored = usage_body(w.u0, "late-void", 1_200_000, 15, 10)  # the record pushed by the fixture
    batch = [usage_body(w.u0, "late-oct", 50, 20, 10),       # new, closed October: refused
             stored,                                          # replay of a stored one: duplicate
             usage_body(w.u0, "nov", 70, 3, 11),              # November is open: accepted
             usage_body(w.u0, "late-oct", 50, 20, 10)]        # the refused one again, in the batch
    r = w.prov.post("/v1/usage-records", json={"records": batch})
    assert r.status_code == 200, r.json
    assert [(x["status"], x.get("error", {}).get("code")) for x in r.json["results"]] == [
        ("rejected", "period_closed"), ("duplicate", None), ("accepted", None), ("rejected", "period_closed")]
    assert r.json["results"][0]["error"]["param"] == "records[0].ended_at"
    assert (r.json["accepted"], r.json["duplicates"], r.json["rejected"]) == (1, 1, 2)


def usage_body(uscc: str, rid: str, amount: int, day: int, month: int) -> dict:
    ended = datetime(2026, month, day, 4, tzinfo=UTC)
    return record(0, uscc, record_id=rid, amount=amount, quantity="1",
                  started_at=ended.replace(hour=3).isoformat(), ended_at=ended.isoformat())


def test_the_daily_run_reruns_open_periods_and_closes_due_ones(w, db):
    policy = load_policy(default_policy_path())
    assert policy.close_after_days == 90
    # Late in November: October is re-run; it is not due (31 Oct + 90 days = 29 January).
    s = run_open_periods(db, policy, "2026-11-20")
    assert [(p["period"], p["runs"]) for p in s["periods"]] == [(PERIOD, 1)] and s["closed"] == []
    assert w.finance.get(f"/v1/claims/{w.claim}").json["status"] == "verified"
    # Due, but a claim is undecided: re-run, kept open.
    s = run_open_periods(db, policy, "2027-01-29")
    assert s["kept_open"] == [{"period": PERIOD, "undecided": 1}] and s["closed"] == []
    w.finance.post(f"/v1/claims/{w.claim}/approve", json={})
    assert not close_due(policy, PERIOD, datetime(2027, 1, 28).date())
    s = run_open_periods(db, policy, "2027-01-29")
    assert s["closed"] == [PERIOD]
    with db.session() as session:
        assert session.get(BillingPeriod, PERIOD).closed_by == "system"
        # Closed periods are not re-run; last month (December) always is.
        assert open_periods(session, datetime(2027, 1, 30).date()) == ["2026-12"]
    assert [p["period"] for p in run_open_periods(db, policy, "2027-01-30")["periods"]] == ["2026-12"]


def test_the_daily_run_is_claimed_once_across_two_schedulers(w, db, settings, monkeypatch):
    """Two scheduler processes fire the same day: one run, October reconciled once."""
    monkeypatch.setenv("VOUCHER_DATABASE_URL", settings.database_url)
    spec = JOBS["reconcile"]
    trigger = cron_trigger(spec, settings, ZoneInfo("Asia/Shanghai"))
    barrier = threading.Barrier(2)

    def scheduler() -> None:
        barrier.wait()
        fire(db, spec, trigger, 15)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.session() as session:
        runs = list(session.query(JobRun).filter(JobRun.job == "reconcile"))
    assert len(runs) == 1 and runs[0].status == "succeeded", [(r.period, r.status, r.error) for r in runs]
    assert is_day_key(runs[0].period)
    assert w.finance.get(f"/v1/reconciliations/{PERIOD}").json["runs"] == 1
    fire(db, spec, trigger, 15)  # later the same day: skipped
    assert w.finance.get(f"/v1/reconciliations/{PERIOD}").json["runs"] == 1


def test_voucher_close_closes_a_period_or_says_why_not(w, db, settings, monkeypatch):
    monkeypatch.setenv("VOUCHER_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    refused = runner.invoke(main, ["close", "--period", PERIOD])
    assert refused.exit_code == 1 and "claims_undecided" in refused.output
    w.finance.post("/v1/reconciliations", json={"period": PERIOD})
    w.finance.post(f"/v1/claims/{w.claim}/approve", json={})
    done = runner.invoke(main, ["close", "--period", PERIOD])
    assert done.exit_code == 0 and f"period {PERIOD} closed" in done.output and "by cli" in done.output
    rerun = runner.invoke(main, ["reconcile", "--period", PERIOD])
    assert rerun.exit_code == 1 and "period_closed" in rerun.output


def test_close_after_days_is_read_from_the_policy_and_checked():
    import tomllib

    data = tomllib.loads(default_policy_path().read_text(encoding="utf-8"))
    data["reconciliation"]["close_after_days"] = 30
    assert parse_policy(data).close_after_days == 30
    for bad in (0, -1, 1.5, "90", True):
        data["reconciliation"]["close_after_days"] = bad
        with pytest.raises(PolicyError, match="reconciliation.close_after_days"):
            parse_policy(data)
    del data["reconciliation"]["close_after_days"]  # files written before v2 keep loading
    assert parse_policy(data).close_after_days == 90


def test_a_submitted_claim_holds_the_period_open_for_a_new_enterprise_too(w, as_key):
    """A period closes only over decided claims, whoever submitted them."""
    w.finance.post("/v1/reconciliations", json={"period": PERIOD})
    w.finance.post(f"/v1/claims/{w.claim}/approve", json={})
    claim(as_key("enterprise", w.u1), [("prov-a", "INV-1", 1)])
    assert close(w.finance).json["error"]["code"] == "claims_undecided"
