"""Prometheus metrics: right under gunicorn with several workers, and every family the app exports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import metrics
from billing.models import QuotaBalance, Reconciliation
from kernel.jobruns import JobRun
from kernel.periods import previous_period
from metering.models import Enterprise, Provider
from tests.conftest import new_key
from tests.factories import claim, invoice, make_uscc, record, setup_programme, usage
from tests.server import ROOT, Server

PROVIDER = "prov-metrics"
UNKNOWN_USCC = make_uscc(900)  # valid check digit, never registered


# --- helpers ----------------------------------------------------------------------------------
def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def seed(db, usccs: list[str]) -> str:
    with db.session() as session, session.begin():
        session.add(Provider(id=PROVIDER, name="Metrics DC", kind="intelligent_computing",
                             county="南湖区", listed_from=date(2025, 5, 13)))
        for i, code in enumerate(usccs):
            session.add(Enterprise(uscc=code, name=f"企业{i}", county="南湖区", eligible=True))
    return new_key(db, "provider", PROVIDER)


def make_batches(usccs: list[str], n_batches: int) -> tuple[list[list[dict]], dict[str, int]]:
    """Batches of 1–7 records: most valid, some for an unknown enterprise, some without offset."""
    batches, seq = [], 0
    for b in range(n_batches):
        batch = []
        for _ in range(1 + b % 7):
            seq += 1
            if seq % 11 == 0:
                batch.append(record(seq, UNKNOWN_USCC))
            elif seq % 13 == 0:
                batch.append(record(seq, usccs[seq % len(usccs)], ended_at="2026-10-15T12:00:00"))
            else:
                batch.append(record(seq, usccs[seq % len(usccs)]))
        batches.append(batch)
    return batches, classify(batches)


def classify(batches: list[list[dict]]) -> dict[str, int]:
    """What a first push of these batches must answer, by outcome or rejection code."""
    out = {"accepted": 0, "unknown_enterprise": 0, "missing_timezone": 0}
    for r in (r for b in batches for r in b):
        if r["enterprise_uscc"] == UNKNOWN_USCC:
            out["unknown_enterprise"] += 1
        elif not r["ended_at"].endswith("+00:00"):
            out["missing_timezone"] += 1
        else:
            out["accepted"] += 1
    return out


def push_all(url: str, key: str, batches: list[list[dict]]) -> list[dict]:
    """Each batch on its own connection, four at a time, so several workers take them."""
    def push(batch):
        r = requests.post(f"{url}/v1/usage-records", json={"records": batch}, timeout=60,
                          headers={"Authorization": f"Bearer {key}", "Connection": "close"})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(push, batches))


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(p) for p in children]


@pytest.fixture
def multiproc_dir(tmp_path):
    path = tmp_path / "prometheus-multiproc"
    path.mkdir()
    return path


def start_server(database_url, multiproc_dir, tmp_path, workers=3) -> Server:
    # One thread per worker, so that concurrent pushes must spread over the workers.
    return Server(database_url, workers=workers, log_path=tmp_path / "gunicorn.log",
                  env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "VOUCHER_THREADS": "1"}).start()


# --- under gunicorn ---------------------------------------------------------------------------
def test_counters_summed_across_workers_equal_records_pushed(db, database_url, multiproc_dir, tmp_path):
    usccs = [make_uscc(100 + i) for i in range(5)]
    key = seed(db, usccs)
    batches, expected = make_batches(usccs, 42)
    n_records = sum(len(b) for b in batches)

    server = start_server(database_url, multiproc_dir, tmp_path)
    try:
        answers = push_all(server.url, key, batches)
        assert sum(a["accepted"] for a in answers) == expected["accepted"]
        # Replays (all duplicates or the same rejections) until a second worker has served some:
        # a worker's event loop accepts whatever connections reach it first, so on a fast
        # machine one worker can take a whole round. Each keeps its own file; /metrics sums them.
        replayed: list[list[dict]] = []
        n_duplicates = 0
        for _ in range(20):
            replay_answers = push_all(server.url, key, batches[::2])
            replayed += batches[::2]
            n_duplicates += sum(a["duplicates"] for a in replay_answers)
            pids = {p.stem.rsplit("_", 1)[1] for p in multiproc_dir.glob("counter_*.db")}
            if len(pids) >= 2:
                break
        assert len(pids) >= 2, f"only {pids} served; the sum across workers was not exercised"
        again = classify(replayed)
        assert n_duplicates == again["accepted"]  # every record accepted before is a duplicate now

        scrapes = [parse(requests.get(f"{server.url}/metrics", timeout=10,
                                      headers={"Connection": "close"}).text) for _ in range(6)]
    finally:
        server.stop()

    for samples in scrapes:  # whichever worker answers the scrape, the totals are the same
        name = "voucher_usage_records_total"
        assert total(samples, name, provider=PROVIDER, outcome="accepted") == expected["accepted"]
        assert total(samples, name, provider=PROVIDER, outcome="duplicate") == n_duplicates
        for code in ("unknown_enterprise", "missing_timezone"):
            assert total(samples, name, provider=PROVIDER, outcome="rejected", code=code) == \
                expected[code] + again[code]
        assert total(samples, name) == n_records + sum(len(b) for b in replayed)

        pushes = len(batches) + len(replayed)
        assert total(samples, "voucher_http_requests_total", route="/v1/usage-records",
                     method="POST", status="200") == pushes
        assert total(samples, "voucher_http_request_duration_seconds_count",
                     route="/v1/usage-records", method="POST") == pushes
        assert total(samples, "voucher_ingest_batch_duration_seconds_count", source="push") == pushes
        assert total(samples, "voucher_ingest_batches_total", source="push") == pushes
        assert total(samples, "voucher_ingest_batch_records_sum", source="push") == \
            n_records + sum(len(b) for b in replayed)
        # Histogram buckets are cumulative and end at the count.
        buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in samples.items()
                          if n == "voucher_ingest_batch_duration_seconds_bucket"))
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        assert buckets[-1] == (float("inf"), pushes)
        # Scrape-time figures from the database are there too.
        ups = [v for (n, _), v in samples.items() if n == "voucher_scrape_source_up"]
        assert ups and all(v == 1 for v in ups)


def test_counts_of_a_killed_worker_survive_and_new_workers_add_to_them(db, database_url, multiproc_dir, tmp_path):
    usccs = [make_uscc(200 + i) for i in range(3)]
    key = seed(db, usccs)
    server = start_server(database_url, multiproc_dir, tmp_path, workers=2)
    try:
        first = [[record(i, usccs[i % 3])] for i in range(20)]
        push_all(server.url, key, first)
        victims = worker_pids(server.proc.pid)
        assert len(victims) == 2
        for pid in victims:  # gunicorn's children: crash them, it forks replacements
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = worker_pids(server.proc.pid)
            if len(alive) == 2 and not set(alive) & set(victims):
                break
            time.sleep(0.2)
        for _ in range(50):
            try:
                requests.get(f"{server.url}/healthz", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.2)
        second = [[record(100 + i, usccs[i % 3])] for i in range(10)]
        push_all(server.url, key, second)
        samples = parse(requests.get(f"{server.url}/metrics", timeout=10).text)
    finally:
        server.stop()
    assert total(samples, "voucher_usage_records_total", provider=PROVIDER, outcome="accepted") == 30
    assert total(samples, "voucher_http_requests_total", route="/v1/usage-records", status="200") == 30


def test_metrics_directory_is_emptied_when_gunicorn_starts(db, database_url, multiproc_dir, tmp_path):
    # A previous run's file: a process that counted 1000 accepted records, then died.
    subprocess.run(
        [sys.executable, "-c", "from api import metrics; "
         f"metrics.USAGE_RECORDS.labels({PROVIDER!r}, 'accepted', '').inc(1000)"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}, cwd=ROOT, check=True)
    assert list(multiproc_dir.glob("counter_*.db"))
    (multiproc_dir / "notes.txt").write_text("not ours")
    key = seed(db, [make_uscc(300)])
    server = start_server(database_url, multiproc_dir, tmp_path, workers=2)
    try:
        push_all(server.url, key, [[record(1, make_uscc(300))]])
        samples = parse(requests.get(f"{server.url}/metrics", timeout=10).text)
    finally:
        server.stop()
    assert total(samples, "voucher_usage_records_total", provider=PROVIDER, outcome="accepted") == 1
    assert (multiproc_dir / "notes.txt").exists()


# --- in process --------------------------------------------------------------------------------
def scrape_finance(finance) -> dict:
    r = finance.get("/metrics/finance")
    assert r.status_code == 200, r.get_data(as_text=True)
    return parse(r.get_data(as_text=True))


def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.mimetype == "text/plain"
    return parse(r.get_data(as_text=True))


def test_http_requests_are_counted_by_route_template_never_by_raw_path(client, finance):
    before = scrape(client)
    assert finance.get("/v1/providers/no-such-provider").status_code == 404
    assert finance.get("/v1/usage-records/some/record/id", query_string={"provider": "x"}).status_code == 404
    assert client.get("/no/such/path/91330402MA2B7K3X13").status_code == 404
    after = scrape(client)

    def delta(**labels):
        return (total(after, "voucher_http_requests_total", **labels)
                - total(before, "voucher_http_requests_total", **labels))

    assert delta(route="/v1/providers/<provider_id>", method="GET", status="404") == 1
    assert delta(route="/v1/usage-records/<path:record_id>", method="GET", status="404") == 1
    assert delta(route="<unmatched>", method="GET", status="404") == 1
    routes = {dict(ls).get("route") for (n, ls) in after if n == "voucher_http_requests_total"}
    assert not any("no-such-provider" in r or "some/record" in r or "MA2B7K3X13" in r for r in routes)


def test_push_counts_outcomes_by_provider_without_uscc_or_record_id_labels(client, db, finance, as_key):
    usccs = [make_uscc(400), make_uscc(401)]
    with db.session() as session, session.begin():
        session.add(Provider(id=PROVIDER, name="M", kind="supercomputing", listed_from=date(2025, 5, 13)))
        for code in usccs:
            session.add(Enterprise(uscc=code, name=code, county="海宁市", eligible=True))
    provider = as_key("provider", PROVIDER)
    before = scrape(client)
    body = {"records": [record(1, usccs[0]), record(2, usccs[1]), record(3, UNKNOWN_USCC),
                        record(4, usccs[0], quantity="-1"), record(5, usccs[0], record_id="")]}
    assert provider.post("/v1/usage-records", json=body).json["accepted"] == 2
    assert provider.post("/v1/usage-records", json={"records": body["records"][:1]}).json["duplicates"] == 1
    assert provider.delete(f"/v1/usage-records/{'rec-2'}").status_code == 200
    after = scrape(client)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    name = "voucher_usage_records_total"
    assert delta(name, provider=PROVIDER, outcome="accepted", code="") == 2
    assert delta(name, provider=PROVIDER, outcome="duplicate") == 1
    assert delta(name, provider=PROVIDER, outcome="rejected", code="unknown_enterprise") == 1
    assert delta(name, provider=PROVIDER, outcome="rejected", code="invalid_quantity") == 1
    assert delta(name, provider=PROVIDER, outcome="rejected") == 3
    assert delta("voucher_usage_records_voided_total", provider=PROVIDER) == 1
    assert delta("voucher_ingest_batch_duration_seconds_count", source="push") == 2
    # Bounded labels: no USCC, record id or key anywhere in the exposition.
    text = client.get("/metrics").get_data(as_text=True)
    for value in [*usccs, UNKNOWN_USCC, "rec-1", "rec-2", "rec-3", provider.key]:
        assert value not in text


def test_adapter_and_job_functions_export_their_series(client):
    before = scrape(client)
    metrics.record_job_run("reconcile", "succeeded", duration=1.5)
    metrics.record_job_run("pull", "Failed Badly!", duration=0.2)
    metrics.record_adapter_pull("prov-x", "succeeded")
    metrics.record_adapter_pull("prov-x", "failed")
    after = scrape(client)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("voucher_job_runs_total", job="reconcile", outcome="succeeded") == 1
    assert delta("voucher_job_runs_total", job="pull", outcome="other") == 1  # codes stay bounded
    assert delta("voucher_job_duration_seconds_count", job="reconcile") == 1
    assert delta("voucher_adapter_pulls_total", provider="prov-x", outcome="failed") == 1
    assert delta("voucher_adapter_pulls_total", provider="prov-x", outcome="succeeded") == 1


def test_subsidy_and_discrepancies_are_read_from_the_ledger_and_the_reconciliation(client, finance, as_key):
    _, (good, bad) = setup_programme(finance, providers=("prov-a",), enterprises=2, county="南湖区")
    provider = as_key("provider", "prov-a")
    usage(provider, good, 100_000, rid="u-good")
    usage(provider, bad, 80_000, rid="u-bad")
    invoice(provider, "INV-1", good, 100_000)
    invoice(provider, "INV-2", bad, 80_000)
    good_claim = claim(as_key("enterprise", good), [("prov-a", "INV-1", 100_000)])
    claim(as_key("enterprise", bad), [("prov-a", "INV-2", 60_000)])  # paid ≠ invoiced
    assert finance.post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 201
    samples = {**scrape(client), **scrape_finance(finance)}
    assert total(samples, "voucher_subsidy_reserved_fen_total", county="南湖区") == 50_000  # §四(一) 50 %
    assert total(samples, "voucher_subsidy_granted_fen_total") == 0
    assert total(samples, "voucher_reconciliation_discrepancies", period="2026-10",
                 code="invoice_amount_mismatch") == 1
    assert total(samples, "voucher_reconciliation_last_run_timestamp_seconds") > 0

    assert finance.post(f"/v1/claims/{good_claim}/approve").status_code == 200
    assert provider.delete("/v1/usage-records/u-good").status_code == 200
    assert finance.post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 200
    samples = scrape_finance(finance)
    assert total(samples, "voucher_subsidy_reserved_fen_total", county="南湖区") == 50_000
    assert total(samples, "voucher_subsidy_granted_fen_total", county="南湖区") == 50_000
    assert total(samples, "voucher_subsidy_clawed_back_fen_total", county="南湖区") == 50_000
    types = {f.name: f.type for f in text_string_to_metric_families(
        finance.get("/metrics/finance").get_data(as_text=True))}
    assert types["voucher_subsidy_granted_fen"] == "counter"


def test_money_is_never_on_the_public_endpoint_and_needs_a_finance_key(client, finance, as_key):
    _, (good,) = setup_programme(finance, providers=("prov-a",), enterprises=1, county="南湖区")
    provider = as_key("provider", "prov-a")
    usage(provider, good, 100_000, rid="u-1")
    invoice(provider, "INV-1", good, 100_000)
    claim(as_key("enterprise", good), [("prov-a", "INV-1", 100_000)])
    assert finance.post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 201
    public = client.get("/metrics").get_data(as_text=True)
    assert "voucher_subsidy_" not in public and "_fen" not in public and "county=" not in public
    assert total(scrape_finance(finance), "voucher_subsidy_reserved_fen_total") == 50_000
    assert client.get("/metrics/finance").status_code == 401
    assert as_key("provider", "prov-a").get("/metrics/finance").status_code == 403
    assert as_key("enterprise", good).get("/metrics/finance").status_code == 403


def test_a_county_outside_the_programme_is_labelled_other_never_as_typed(client, finance, as_key):
    typed = "=HYPERLINK(\"http://x\") 某县"
    _, (good,) = setup_programme(finance, providers=("prov-a",), enterprises=1, county=typed)
    provider = as_key("provider", "prov-a")
    usage(provider, good, 100_000, rid="u-1")
    invoice(provider, "INV-1", good, 100_000)
    claim(as_key("enterprise", good), [("prov-a", "INV-1", 100_000)])
    assert finance.post("/v1/reconciliations", json={"period": "2026-10"}).status_code == 201
    text = finance.get("/metrics/finance").get_data(as_text=True)
    assert "HYPERLINK" not in text and "某县" not in text
    assert total(scrape_finance(finance), "voucher_subsidy_reserved_fen_total", county="other") == 50_000


def test_job_finished_events_of_the_scheduler_are_counted(client):
    from kernel.jobruns import events as job_events

    before = scrape(client)
    job_events.emit("job_finished", "statements", "failed", 0.7)
    after = scrape(client)
    assert (total(after, "voucher_job_runs_total", job="statements", outcome="failed")
            - total(before, "voucher_job_runs_total", job="statements", outcome="failed")) == 1


@pytest.mark.tampers_with_ledger  # writes quota_balance rows directly, without their postings
def test_scrape_time_figures_come_from_the_database(app, client, db):
    now = datetime.now(UTC)
    usccs = [make_uscc(500 + i) for i in range(4)]
    with db.session() as session, session.begin():
        for code in usccs:
            session.add(Enterprise(uscc=code, name=code, county="桐乡市", eligible=True))
        session.flush()
        cap = 200_000_000
        for code, (year, used) in zip(usccs, [(2026, cap), (2026, cap * 9 // 10), (2026, cap * 9 // 10 - 1),
                                              (2027, cap * 95 // 100)], strict=True):
            session.add(QuotaBalance(enterprise_uscc=code, year=year, cap=cap, cap_basis="standard",
                                     reserved=used // 2, granted=used - used // 2, policy_id="p"))
        session.add(Reconciliation(period=previous_period(now), status="completed", runs=2,
                                   policy_id="p", summary={}, first_run_at=now - timedelta(hours=3),
                                   last_run_at=now - timedelta(hours=1)))
        for job, period, status, ago in [("reconcile", "2026-09", "succeeded", 30),
                                         ("reconcile", "2026-10", "failed", 2),
                                         ("pull", "a", "succeeded", 1), ("pull", "b", "running", None)]:
            finished = now - timedelta(hours=ago) if ago else None
            session.add(JobRun(job=job, period=period, status=status, attempt=1, process="h:1",
                               started_at=now - timedelta(hours=40), heartbeat_at=now,
                               finished_at=finished))
    samples = scrape(client)
    assert total(samples, "voucher_enterprises_near_cap", year="2026") == 2
    assert total(samples, "voucher_enterprises_near_cap", year="2027") == 1
    assert total(samples, "voucher_reconciliation_previous_period_runs") == 2
    assert total(samples, "voucher_reconciliation_last_run_timestamp_seconds") == pytest.approx(
        (now - timedelta(hours=1)).timestamp(), abs=1)
    assert total(samples, "voucher_job_last_success_timestamp_seconds", job="reconcile") == pytest.approx(
        (now - timedelta(hours=30)).timestamp(), abs=1)
    assert total(samples, "voucher_job_last_failure_timestamp_seconds", job="reconcile") == pytest.approx(
        (now - timedelta(hours=2)).timestamp(), abs=1)
    assert total(samples, "voucher_job_runs_by_status", job="pull", status="running") == 1
    assert all(v == 1 for (n, _), v in samples.items() if n == "voucher_scrape_source_up")

    # A source can be replaced (billing's own query), and one that fails never breaks the scrape.
    metrics.set_near_cap_source(app, lambda session: {2026: 7})

    def broken(session):
        raise RuntimeError("no such table")

    metrics.scrape_collector(app).register("voucher_broken_thing", "test", [], broken)
    samples = scrape(client)
    assert total(samples, "voucher_enterprises_near_cap", year="2026") == 7
    assert total(samples, "voucher_scrape_source_up", source="voucher_broken_thing") == 0
    assert total(samples, "voucher_scrape_source_up", source="voucher_enterprises_near_cap") == 1
    with pytest.raises(ValueError):
        metrics.scrape_collector(app).register("unprefixed", "x", [], broken)


def test_previous_period_not_reconciled_reads_zero(client, db):
    samples = scrape(client)
    assert total(samples, "voucher_reconciliation_previous_period_runs") == 0
    assert ("voucher_reconciliation_last_run_timestamp_seconds", ()) not in samples


def test_scheduler_serves_its_job_counts_on_its_own_port():
    from kernel.jobruns import events as job_events
    from tests.server import free_port

    port = free_port()
    server, _thread = metrics.start_metrics_server(port, "127.0.0.1")
    try:
        job_events.emit("job_finished", "pull", "succeeded", 0.1)
        samples = parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    finally:
        server.shutdown()
        server.server_close()
    assert total(samples, "voucher_job_runs_total", job="pull", outcome="succeeded") >= 1


def test_every_database_family_is_a_named_constant(app):
    """Dashboards and alerts are checked against the names metrics.py declares."""
    constants = {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str)}
    assert metrics.scrape_collector(app).names() <= constants
    assert metrics.finance_collector(app).names() <= constants
    assert not any("fen" in n or "subsidy" in n for n in metrics.scrape_collector(app).names())
