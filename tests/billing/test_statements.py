"""Statements through a Stripe-compatible API, against a real localstripe server.

localstripe 1.15.10 cannot create a standalone invoice from pending items nor finalize one,
which is exactly what a monthly statement is; `tests/integration/localstripe_compat.py`
starts localstripe with those two endpoints added from localstripe's own Invoice code
(see its docstring). Each test gets its own server on a free port, so customers of one
test (or of the other database backend) never leak into another.

An enterprise whose claims of the month are still undecided gets no statement until finance
decides them; then a later run issues it, and finalized statements are never touched again.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from adapters.stripe import StripeClient, StripeError
from billing.jobs import StatementsIncomplete
from billing.statements import (
    FINALIZED,
    Statement,
    issue_statements,
    plan_statements,
    rate_percent,
)
from kernel.jobruns import JobRun, run_once
from tests.factories import claim, invoice, setup_programme, usage
from tests.integration.localstripe_compat import start_localstripe, stop_server
from voucher.cli import main
from voucher.scheduler import reconcile_job, statements_job

PERIOD = "2026-10"
API_KEY = "sk_test_statements"


@pytest.fixture
def stripe_url(tmp_path):
    proc, url = start_localstripe(tmp_path)
    yield url
    stop_server(proc)


@pytest.fixture
def stripe(stripe_url):
    with StripeClient(stripe_url, API_KEY, timeout=5, max_retries=0) as client:
        yield client


@pytest.fixture
def month(finance, as_key, app):
    """Four enterprises: approved subsidy on two providers; usage only; verified but not yet
    approved (its statement waits); approved and then partly clawed back."""
    _, u = setup_programme(finance, providers=("prov-a", "prov-b"), enterprises=4)
    a, b = as_key("provider", "prov-a"), as_key("provider", "prov-b")
    e = [as_key("enterprise", x) for x in u]
    tol = app.extensions["voucher.policy"].tolerance

    usage(a, u[0], 1_000_000)
    usage(b, u[0], 300_001)
    invoice(a, "A-0", u[0], 1_000_000)
    invoice(b, "B-0", u[0], 300_001)
    c0 = claim(e[0], [("prov-a", "A-0", 1_000_000), ("prov-b", "B-0", 300_001)])

    usage(b, u[1], 200_000)  # meters usage, never claims

    usage(a, u[2], 90_000)
    invoice(a, "A-2", u[2], 90_000)
    c2 = claim(e[2], [("prov-a", "A-2", 90_000)])  # verified, left for review

    usage(a, u[3], 400_000, rid="big")
    usage(a, u[3], tol, rid="small")
    invoice(a, "A-3", u[3], 400_000 + tol)
    c3 = claim(e[3], [("prov-a", "A-3", 400_000 + tol)])

    finance.post("/v1/reconciliations", json={"period": PERIOD})
    for cid in (c0, c3):
        assert finance.post(f"/v1/claims/{cid}/approve").json["status"] == "approved"
    a.delete("/v1/usage-records/small", json={"reason": "test job"})
    finance.post("/v1/reconciliations", json={"period": PERIOD})  # claws back a little of c3
    c3_payable = finance.get(f"/v1/claims/{c3}").json["payable"]
    assert c3_payable == 200_000 and finance.get(f"/v1/claims/{c3}").json["clawed_back"] > 0
    expected = {  # uscc -> (spend, subsidy) of the statements issued at once
        u[0]: (1_300_001, 650_001),
        u[1]: (200_000, 0),
        u[3]: (400_000, c3_payable),
    }
    return {"usccs": u, "expected": expected, "policy": app.extensions["voucher.policy"],
            "finance": finance, "undecided": c2, "enterprise_keys": e}


def approve_undecided(month) -> tuple[int, int]:
    """Finance approves the verified claim the statement of u2 waits for: (spend, subsidy)."""
    r = month["finance"].post(f"/v1/claims/{month['undecided']}/approve")
    assert r.json["status"] == "approved"
    return 90_000, 45_000


def customer_of(client: StripeClient, uscc: str) -> str:
    found = client.find_customer_by_metadata("uscc", uscc)
    assert found is not None, uscc
    return found["id"]


def items_and_lines(client: StripeClient, uscc: str) -> list[dict]:
    """Every invoice item of the customer: still pending, or a line of one of its invoices."""
    customer = customer_of(client, uscc)
    out = list(client.list_invoice_items(customer, pending=True))
    for inv in client.list_invoices(customer):
        out += client.list_invoice_lines(inv["id"])
    return out


def rows(db) -> dict[str, Statement]:
    with db.session() as session:
        return {s.enterprise_uscc: s for s in session.scalars(select(Statement))}


def test_finalized_invoice_total_is_spend_minus_approved_subsidy(month, db, stripe):
    summary = issue_statements(db, month["policy"], PERIOD, stripe)
    expected = month["expected"]
    assert (summary["enterprises"], summary["issued"], summary["pending"], summary["failed"]) == \
        (4, 3, 1, 0)
    assert summary["complete"] is False
    assert summary["spend"] == sum(s for s, _ in expected.values())
    assert summary["subsidy"] == sum(x for _, x in expected.values())
    assert summary["total"] == summary["spend"] - summary["subsidy"]
    stored = rows(db)
    for uscc, (spend, subsidy) in expected.items():
        customer = stripe.find_customer_by_metadata("uscc", uscc)
        (inv,) = stripe.list_invoices(customer["id"])
        assert inv["status"] == "open" and inv["status_transitions"]["finalized_at"]
        assert inv["currency"] == "cny"
        assert inv["total"] == spend - subsidy > 0
        assert inv["metadata"] == {"statement_key": f"stmt:{PERIOD}:{uscc}"}
        s = stored[uscc]
        assert (s.status, s.total, s.spend, s.subsidy) == (FINALIZED, spend - subsidy, spend, subsidy)
        assert (s.payment_customer_id, s.payment_invoice_id) == (customer["id"], inv["id"])
        assert s.issued_at is not None and s.last_error is None


def test_one_item_per_provider_and_one_credit_for_the_subsidy(month, db, stripe):
    issue_statements(db, month["policy"], PERIOD, stripe)
    u = month["usccs"]
    lines = {line["metadata"]["statement_key"]: line for line in items_and_lines(stripe, u[0])}
    assert set(lines) == {f"stmt:{PERIOD}:{u[0]}:prov-a", f"stmt:{PERIOD}:{u[0]}:prov-b",
                          f"stmt:{PERIOD}:{u[0]}:subsidy"}
    assert lines[f"stmt:{PERIOD}:{u[0]}:prov-a"]["amount"] == 1_000_000
    assert lines[f"stmt:{PERIOD}:{u[0]}:prov-b"]["amount"] == 300_001
    credit = lines[f"stmt:{PERIOD}:{u[0]}:subsidy"]
    assert credit["amount"] == -650_001
    assert credit["description"].startswith("算力补贴 50%")
    assert "PROV-A" in lines[f"stmt:{PERIOD}:{u[0]}:prov-a"]["description"]
    only_usage = items_and_lines(stripe, u[1])
    assert [x["amount"] for x in only_usage] == [200_000]  # no subsidy line without an approved claim
    customer = stripe.find_customer_by_metadata("uscc", u[0])
    assert customer["name"] == "企业0" and customer["metadata"] == {"uscc": u[0]}


def test_a_redemption_settled_in_the_month_is_a_credit_on_its_statement(month, db, stripe, as_key):
    """The subsidy an enterprise was spared at a provider's checkout shows on the statement of
    the month its quarterly batch was approved (billing/settlements.py settled_since)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from billing.redemption_models import Redemption

    u, finance = month["usccs"], month["finance"]
    b = as_key("provider", "prov-b")
    invoice(b, "B-R1", u[1], 200_000)  # the metered 200,000 fen, redeemed at checkout
    rdm = b.post("/v1/redemptions", json={"enterprise_uscc": u[1], "reference": "order-r1",
                                          "list_amount": 200_000, "period": PERIOD}).json
    assert b.post(f"/v1/redemptions/{rdm['id']}/capture",
                  json={"invoice_no": "B-R1", "amount": 200_000}).json["subsidy"] == 100_000
    finance.post("/v1/reconciliations", json={"period": PERIOD})
    (batch,) = finance.post("/v1/settlements", json={"quarter": "2026Q4"}).json["data"]
    assert finance.post(f"/v1/settlements/{batch['id']}/approve").json["status"] == "approved"
    with db.session() as s, s.begin():  # as if finance approved it on 20 October
        s.get(Redemption, int(rdm["id"][4:])).settled_at = datetime(2026, 10, 20, 9, tzinfo=ZoneInfo("Asia/Shanghai"))

    with db.session() as s:
        assert not any(p.redeemed for p in plan_statements(s, month["policy"], "2026-11"))
    summary = issue_statements(db, month["policy"], PERIOD, stripe)
    assert summary["failed"] == 0
    lines = {line["metadata"]["statement_key"]: line for line in items_and_lines(stripe, u[1])}
    credit = lines[f"stmt:{PERIOD}:{u[1]}:{rdm['id']}"]
    assert credit["amount"] == -100_000 and credit["description"].startswith("核销补贴 PROV-B")
    (inv,) = stripe.list_invoices(customer_of(stripe, u[1]))
    assert inv["total"] == 200_000 - 100_000
    s = rows(db)[u[1]]
    assert (s.status, s.spend, s.subsidy, s.total) == (FINALIZED, 200_000, 100_000, 100_000)


def test_second_run_creates_nothing(month, db, stripe):
    first = issue_statements(db, month["policy"], PERIOD, stripe)
    issued = sorted(month["expected"])
    before = {u: len(items_and_lines(stripe, u)) for u in issued}
    invoices = {u: [i["id"] for i in stripe.list_invoices(customer_of(stripe, u))] for u in issued}
    customers = len(list(stripe._paginate("/v1/customers")))
    second = issue_statements(db, month["policy"], PERIOD, stripe)
    assert (second["issued"], second["skipped"], second["pending"], second["failed"]) == (0, 3, 1, 0)
    assert second["total"] == first["total"]
    assert {u: len(items_and_lines(stripe, u)) for u in issued} == before
    assert {u: [i["id"] for i in stripe.list_invoices(customer_of(stripe, u))]
            for u in issued} == invoices
    assert len(list(stripe._paginate("/v1/customers"))) == customers == 3
    assert sum(before.values()) == 6  # 2 + 1 for u0, 1, 1 + 1 for u3


def test_undecided_claims_hold_the_statement_back_until_they_are_decided(month, db, stripe, as_key):
    u = month["usccs"]
    first = issue_statements(db, month["policy"], PERIOD, stripe)
    assert (first["issued"], first["pending"]) == (3, 1)
    assert first["pending_claims"] == [{"enterprise_uscc": u[2], "claims": [month["undecided"]]}]
    # Nothing of it was sent: no customer, no items, no statement row with a subsidy of 0.
    assert stripe.find_customer_by_metadata("uscc", u[2]) is None
    assert u[2] not in rows(db)
    assert issue_statements(db, month["policy"], PERIOD, stripe)["pending"] == 1  # still undecided

    finalized = {uscc: (s.payment_invoice_id, s.total, s.updated_at) for uscc, s in rows(db).items()}
    spend, subsidy = approve_undecided(month)
    # A late claim of u1, whose statement is already finalized: that statement stays as it is.
    invoice(as_key("provider", "prov-b"), "B-1", u[1], 200_000)
    claim(month["enterprise_keys"][1], [("prov-b", "B-1", 200_000)])  # submitted, undecided

    later = issue_statements(db, month["policy"], PERIOD, stripe)
    assert (later["issued"], later["skipped"], later["pending"], later["failed"]) == (1, 3, 0, 0)
    assert (later["spend"], later["subsidy"]) == (spend, subsidy)
    s = rows(db)[u[2]]
    assert (s.status, s.spend, s.subsidy, s.total) == (FINALIZED, spend, subsidy, spend - subsidy)
    (inv,) = stripe.list_invoices(customer_of(stripe, u[2]))
    assert inv["total"] == spend - subsidy and inv["status"] == "open"
    credit = [x for x in items_and_lines(stripe, u[2]) if x["amount"] < 0]
    assert [x["amount"] for x in credit] == [-subsidy]
    assert {uscc: (r.payment_invoice_id, r.total, r.updated_at) for uscc, r in rows(db).items()
            if uscc != u[2]} == finalized  # untouched
    again = issue_statements(db, month["policy"], PERIOD, stripe)
    assert (again["issued"], again["skipped"], again["pending"]) == (0, 4, 0) and again["complete"]


class CrashOnce:
    """The real client, but one call fails once (after doing its work, if `after`)."""

    def __init__(self, client: StripeClient, method: str, after: bool = False) -> None:
        self.client, self.method, self.after, self.fired = client, method, after, False

    def __getattr__(self, name):
        real = getattr(self.client, name)
        if name != self.method or self.fired:
            return real

        def call(*args, **kwargs):
            self.fired = True
            if self.after:
                real(*args, **kwargs)
            raise StripeError(503, "api_error", None, f"{name}: connection reset")

        return call


@pytest.mark.parametrize("method,after", [("ensure_invoice", False), ("finalize_invoice", False),
                                          ("finalize_invoice", True)])
def test_half_done_statement_is_resumed_without_duplicates(month, db, stripe, method, after):
    crashing = CrashOnce(stripe, method, after=after)
    first = issue_statements(db, month["policy"], PERIOD, crashing)
    assert (first["issued"], first["failed"], first["pending"]) == (2, 1, 1)
    (err,) = first["errors"]
    assert "connection reset" in err["message"]
    half = rows(db)[err["enterprise_uscc"]]
    assert half.status != FINALIZED and half.last_error and half.payment_customer_id

    again = issue_statements(db, month["policy"], PERIOD, stripe)
    assert (again["issued"], again["resumed"], again["skipped"], again["failed"]) == (1, 1, 2, 0)
    spend, subsidy = month["expected"][err["enterprise_uscc"]]
    customer = customer_of(stripe, err["enterprise_uscc"])
    (inv,) = stripe.list_invoices(customer)
    assert inv["total"] == spend - subsidy and inv["status"] == "open"
    assert len(items_and_lines(stripe, err["enterprise_uscc"])) == (2 if subsidy else 1) + \
        (1 if err["enterprise_uscc"] == month["usccs"][0] else 0)
    s = rows(db)[err["enterprise_uscc"]]
    assert (s.status, s.attempts, s.last_error, s.total) == (FINALIZED, 2, None, spend - subsidy)


def test_subsidy_above_spend_is_refused_before_anything_is_sent(month, db, stripe, as_key):
    u3 = month["usccs"][3]
    as_key("provider", "prov-a").delete("/v1/usage-records/big", json={"reason": "wrong tenant"})
    # Not reconciled since: the approved payable now exceeds what is metered.
    summary = issue_statements(db, month["policy"], PERIOD, stripe)
    assert summary["failed"] == 1 and summary["errors"][0]["enterprise_uscc"] == u3
    assert "run the reconciliation of 2026-10 first" in summary["errors"][0]["message"]
    assert stripe.find_customer_by_metadata("uscc", u3) is None
    assert rows(db)[u3].status == "pending"


def test_plan_lists_enterprises_with_usage_or_claims(month, db):
    with db.session() as session:
        plans = plan_statements(session, month["policy"], PERIOD)
    u2 = month["usccs"][2]
    assert [p.enterprise_uscc for p in plans] == sorted(month["usccs"])
    for p in plans:
        assert p.pending == (p.enterprise_uscc == u2)
        assert p.undecided_claims == ((month["undecided"],) if p.pending else ())
        assert (p.spend, p.subsidy) == month["expected"].get(p.enterprise_uscc, (90_000, 0))
        assert all(line.key.startswith(f"stmt:{PERIOD}:{p.enterprise_uscc}:") for line in p.lines)
    with db.session() as session:
        assert plan_statements(session, month["policy"], "2026-09") == []


def test_rate_percent_comes_from_the_policy_rate():
    assert rate_percent(Fraction(1, 2)) == "50%"
    assert rate_percent(Fraction(3, 10)) == "30%"
    assert rate_percent(Fraction(1, 3)) == "33.33%"
    assert rate_percent(Fraction(1, 8)) == "12.5%"


def test_cli_statements_with_progress_and_rerun(month, database_url, stripe_url):
    env = {"VOUCHER_DATABASE_URL": database_url, "VOUCHER_STRIPE_API_BASE": stripe_url,
           "VOUCHER_STRIPE_API_KEY": API_KEY}
    r = CliRunner().invoke(main, ["statements", "--period", PERIOD], env=env)
    assert r.exit_code == 1, r.output  # not every statement of the month is out yet
    assert "statements 2026-10" in r.output and "issued 3 (resumed 0)" in r.output
    assert "pending 1 · failed 0" in r.stdout
    assert f"PENDING {month['usccs'][2]}: claims {month['undecided']} undecided" in r.stderr
    approve_undecided(month)
    again = CliRunner().invoke(main, ["statements", "--period", PERIOD, "--json"], env=env)
    assert again.exit_code == 0, again.output
    assert '"skipped": 3' in again.output and '"issued": 1' in again.output
    assert '"pending": 0' in again.output and '"complete": true' in again.output
    no_key = CliRunner().invoke(main, ["statements", "--period", PERIOD],
                                env={**env, "VOUCHER_STRIPE_API_KEY": ""})
    assert no_key.exit_code == 1 and "VOUCHER_STRIPE_API_KEY" in no_key.output


def test_cli_statements_exit_1_when_the_api_is_down(month, database_url):
    from tests.integration.localstripe_compat import free_port

    env = {"VOUCHER_DATABASE_URL": database_url, "VOUCHER_STRIPE_API_KEY": API_KEY,
           "VOUCHER_STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}"}
    r = CliRunner().invoke(main, ["statements", "--period", PERIOD], env=env)
    assert r.exit_code == 1
    # The first statement finds the API unreachable (after the client's retries); the run
    # stops there instead of waiting out the retries of every other enterprise.
    assert "pending 1 · failed 1 · not attempted 2" in r.output and "api_connection_error" in r.output


def test_jobs_reconcile_then_issue(month, db, stripe_url, monkeypatch):
    monkeypatch.setenv("VOUCHER_STRIPE_API_BASE", stripe_url)
    monkeypatch.setenv("VOUCHER_STRIPE_API_KEY", API_KEY)
    rec = reconcile_job(db, "2026-11-02")  # the daily run: every open period, here PERIOD alone
    assert [(p["period"], p["runs"]) for p in rec["periods"]] == [(PERIOD, 3)] and rec["closed"] == []
    with pytest.raises(StatementsIncomplete, match="1 of 4 statements of 2026-10 not issued") as held:
        statements_job(db, PERIOD)
    assert "pending 1: claims still undecided" in str(held.value)
    assert "voucher jobs rerun statements 2026-10" in str(held.value)
    assert (held.value.result["issued"], held.value.result["pending"]) == (3, 1)
    approve_undecided(month)
    summary = statements_job(db, PERIOD)
    assert (summary["issued"], summary["skipped"]) == (1, 3) and summary["object"] == "statement_run"
    monkeypatch.setenv("VOUCHER_STRIPE_API_BASE", "http://127.0.0.1:9")
    with db.session() as session, session.begin():  # a statement still to issue, API unreachable
        session.delete(session.scalars(select(Statement)).first())
    with pytest.raises(StatementsIncomplete, match="1 of 4 statements of 2026-10 not issued"):
        statements_job(db, PERIOD)


def test_a_statements_run_with_pending_enterprises_fails_and_a_rerun_completes_it(
        month, db, database_url, stripe_url, monkeypatch):
    """The job run records the pending count; `voucher jobs rerun` issues the rest once decided."""
    env = {"VOUCHER_DATABASE_URL": database_url, "VOUCHER_STRIPE_API_BASE": stripe_url,
           "VOUCHER_STRIPE_API_KEY": API_KEY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VOUCHER_JOBS_MODULE", raising=False)
    run = run_once(db, "statements", PERIOD, "voucher.scheduler:statements_job")
    assert run.status == "failed" and "pending 1" in run.error
    assert (run.result["issued"], run.result["pending"], run.result["complete"]) == (3, 1, False)
    assert run.result["pending_claims"][0]["claims"] == [month["undecided"]]
    refused = CliRunner().invoke(main, ["jobs", "run", "statements", PERIOD], env=env)
    assert refused.exit_code == 1 and "voucher jobs rerun statements 2026-10" in refused.output

    approve_undecided(month)
    rerun = CliRunner().invoke(main, ["jobs", "rerun", "statements", PERIOD], env=env)
    assert rerun.exit_code == 0, rerun.output
    assert "statements 2026-10 succeeded (attempt 2" in rerun.output
    with db.session() as session:
        (row,) = session.scalars(select(JobRun))
    assert (row.status, row.error, row.result["issued"], row.result["skipped"]) == \
        ("succeeded", None, 1, 3)
    assert all(s.status == FINALIZED for s in rows(db).values()) and len(rows(db)) == 4
