"""Nothing lost under faults: SIGKILL during ingestion, PostgreSQL stopped mid-load.

Each test pushes batches from several threads at a real gunicorn server while a
reconciliation loop runs beside them, breaks something, and then checks from the database:
every acknowledged (200) batch is present exactly once, every other batch is entirely
present or entirely absent (never half), pushing the unacknowledged ones again completes
them, and the ledger and audit-chain invariants hold. Each prints pushed / acknowledged /
found.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests
from sqlalchemy import func, select

from billing.ledger import verify as verify_ledger
from config.settings import Settings
from kernel.audit import verify_chain
from kernel.db import Database
from metering.models import UsageRecord
from tests.conftest import World, new_key
from tests.factories import claim, invoice, record, setup_programme, usage
from tests.server import Server, free_port
from voucher.app import create_app
from voucher.migrate import upgrade

BATCH = 200  # records per batch: larger than any single statement's chunk would make a half
PERIODS = ("2026-07", "2026-08", "2026-09")


# --- load -------------------------------------------------------------------------------------

@dataclass
class Load:
    """Threads pushing numbered batches at `target["url"]`; each batch's outcome is kept."""

    key: str
    uscc: str
    target: dict
    threads: int = 4
    outcomes: dict[str, str] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    missing_retry_after: int = 0
    billing: Counter = field(default_factory=Counter)
    finance_key: str | None = None

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self._n = itertools.count()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def body(self, prefix: str) -> dict:
        return {"records": [record(i, self.uscc, record_id=f"{prefix}{i:03d}") for i in range(BATCH)]}

    def push(self, prefix: str) -> str:
        try:
            r = requests.post(f"{self.target['url']}/v1/usage-records", json=self.body(prefix),
                              headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        except requests.RequestException:
            return "connection_error"
        with self._lock:
            self.statuses[r.status_code] += 1
            if r.status_code == 503 and not r.headers.get("Retry-After"):
                self.missing_retry_after += 1
        if r.status_code == 200:
            body = r.json()
            assert body["accepted"] + body["duplicates"] == BATCH, body
            return "acked"
        return str(r.status_code)

    def _pusher(self, deadline: float) -> None:
        while not self.stop.is_set() and time.monotonic() < deadline:
            prefix = f"b{next(self._n):05d}-"
            outcome = self.push(prefix)
            with self._lock:
                self.outcomes[prefix] = outcome
            if outcome == "connection_error":
                time.sleep(0.05)  # the server is down: do not spin

    def _reconciler(self, deadline: float) -> None:
        """Reconciliations beside the pushes, so a fault can land mid-reconciliation too."""
        for period in itertools.cycle(PERIODS):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            try:
                r = requests.post(f"{self.target['url']}/v1/reconciliations", json={"period": period},
                                  headers={"Authorization": f"Bearer {self.finance_key}"}, timeout=30)
                status = str(r.status_code)
            except requests.RequestException:
                status = "connection_error"
                time.sleep(0.05)
            with self._lock:
                self.billing[status] += 1

    def start(self, seconds: float) -> Load:
        deadline = time.monotonic() + seconds
        self._workers = [threading.Thread(target=self._pusher, args=(deadline,), daemon=True)
                         for _ in range(self.threads)]
        if self.finance_key:
            self._workers.append(threading.Thread(target=self._reconciler, args=(deadline,), daemon=True))
        for t in self._workers:
            t.start()
        return self

    def acked_count(self) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes.values() if o == "acked")

    def join(self) -> None:
        for t in self._workers:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self._workers), "load threads did not stop"


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def rows_per_batch(db: Database) -> dict[str, int]:
    prefix = func.substr(UsageRecord.record_id, 1, 7)
    with db.session() as s:
        dupes = s.execute(select(UsageRecord.record_id).group_by(UsageRecord.provider_id, UsageRecord.record_id)
                          .having(func.count() > 1)).all()
        assert not dupes, f"records stored twice: {dupes[:5]}"
        return dict(s.execute(select(prefix, func.count()).where(UsageRecord.record_id.like("b%"))
                              .group_by(prefix)).all())


def check_outcome(name: str, db: Database, load: Load, say) -> None:
    """Acked → whole; anything else → whole or nothing; replaying the rest completes them."""
    found = rows_per_batch(db)
    outcomes = Counter(load.outcomes.values())
    acked = [p for p, o in load.outcomes.items() if o == "acked"]
    unacked = [p for p, o in load.outcomes.items() if o != "acked"]
    present_unacked = [p for p in unacked if found.get(p) == BATCH]
    say(f"\n[{name}] pushed {len(load.outcomes)} batches × {BATCH} records "
          f"({len(load.outcomes) * BATCH} records); outcomes {dict(outcomes)}; "
          f"HTTP statuses {dict(load.statuses)}; reconciliations {dict(load.billing)}")
    say(f"[{name}] acknowledged {len(acked)} batches ({len(acked) * BATCH} records); found "
          f"{sum(found.values())} records in {len(found)} batches, all whole; of the "
          f"{len(unacked)} unacknowledged, {len(present_unacked)} had committed before the fault")
    half = {p: n for p, n in found.items() if n != BATCH}
    assert not half, f"half batches: {half}"
    lost = [p for p in acked if found.get(p) != BATCH]
    assert not lost, f"acknowledged batches missing: {lost}"
    assert set(found) <= set(load.outcomes), "rows of batches nobody pushed"
    # The client's remedy for an unanswered push is to push again: that must complete it.
    with ThreadPoolExecutor(max_workers=load.threads) as pool:
        replayed = dict(zip(unacked, pool.map(load.push, unacked), strict=True))
    assert all(o == "acked" for o in replayed.values()), replayed
    found = rows_per_batch(db)
    assert all(found.get(p) == BATCH for p in load.outcomes), "replay did not complete every batch"
    say(f"[{name}] after pushing the {len(unacked)} unacknowledged batches again: "
          f"{sum(found.values())} records in {len(found)} batches, each exactly once")
    with db.session() as s:
        ledger = verify_ledger(s)
        chain = verify_chain(s)
    assert ledger.ok, ledger.breaches
    assert chain.ok, [str(p) for p in chain.problems]
    say(f"[{name}] ledger: {ledger.postings} postings, {ledger.balances} balances, no breach; "
          f"audit chain: {chain.entries} entries intact")


def prepare_billing(world: World) -> tuple[str, str, str]:
    """Registry, keys, and three months of usage, invoices and claims to reconcile."""
    _, (uscc,) = setup_programme(world.finance, providers=("prov-a",), enterprises=1)
    provider = world.as_key("provider", "prov-a")
    enterprise = world.as_key("enterprise", uscc)
    for n, period in enumerate(PERIODS):
        usage(provider, uscc, 30_000 + n, period=period, rid=f"u-{period}")
        invoice(provider, f"INV-{period}", uscc, 30_000 + n, period=period)
        claim(enterprise, [("prov-a", f"INV-{period}", 30_000 + n)], period=period)
    return uscc, new_key(world.db, "provider", "prov-a"), new_key(world.db, "finance")


def process_children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return sorted(kids)


# --- SIGKILL ----------------------------------------------------------------------------------

def test_sigkill_of_workers_during_pushes_loses_no_acknowledged_record(pg, say):
    uscc, key, finance_key = prepare_billing(pg)
    with Server(pg.url, workers=2) as server:
        load = Load(key, uscc, {"url": server.url}, finance_key=finance_key).start(seconds=20)
        killed: list[int] = []
        # One worker first; then every worker at once until a push has been cut mid-request
        # (with four pushers on two workers that is almost always the first time).
        for round_ in range(6):
            assert wait_until(lambda n=load.acked_count() + 3: load.acked_count() >= n, 20)
            workers = process_children(server.proc.pid)
            victims = workers[:1] if round_ == 0 else workers
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            killed += victims
            # gunicorn's master replaces them; the load carries on.
            assert wait_until(lambda v=victims: not set(v) & set(process_children(server.proc.pid))
                              and len(process_children(server.proc.pid)) == 2, 20)
            if round_ and "connection_error" in load.outcomes.values():
                break
        n = load.acked_count()
        assert wait_until(lambda: load.acked_count() >= n + 20, 20), "no pushes acked after the kills"
        load.stop.set()
        load.join()
        cut = sum(1 for o in load.outcomes.values() if o == "connection_error")
        say(f"\n[sigkill-worker] SIGKILLed workers {killed}; {cut} pushes cut mid-request")
        assert cut > 0, "no push was in flight when the workers died"
        # Only the killed workers' requests may fail; no 5xx from anyone.
        assert not [s for s in load.statuses if s >= 500], load.statuses
        check_outcome("sigkill-worker", pg.db, load, say)


def test_sigkill_of_the_whole_server_then_restart_loses_no_acknowledged_record(pg, say):
    uscc, key, finance_key = prepare_billing(pg)
    target: dict = {}
    first = Server(pg.url, workers=2).start()
    target["url"] = first.url
    load = Load(key, uscc, target, finance_key=finance_key).start(seconds=8)
    try:
        assert wait_until(lambda: load.acked_count() >= 5, 20)
        os.killpg(first.proc.pid, signal.SIGKILL)  # master and workers at once, no shutdown
        first.proc.wait(10)
        down_at = time.monotonic()
        time.sleep(0.5)
        second = Server(pg.url, workers=2).start()
        target["url"] = second.url
        say(f"\n[sigkill-server] killed process group {first.proc.pid}; "
              f"restarted in {time.monotonic() - down_at:.1f} s")
        n = load.acked_count()
        assert wait_until(lambda: load.acked_count() >= n + 3, 20), "no pushes acked after restart"
        load.join()
        assert not [s for s in load.statuses if s >= 500], load.statuses
        check_outcome("sigkill-server", pg.db, load, say)
        second.stop()
    finally:
        load.stop.set()
        for server in (first, locals().get("second")):
            if server and server.proc and server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGKILL)


# --- PostgreSQL outage ------------------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A throwaway PostgreSQL cluster (initdb in a temp dir, its own port), stoppable at will."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="voucher-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/voucher"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, cwd=self.dir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def init(self) -> OwnPostgres:
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
        self.start()
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE voucher")
        return self

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                          "-w", "-t", "60", "start", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "stop",
                          "-m", mode)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_pg():
    cluster = OwnPostgres().init()
    try:
        upgrade(cluster.url)
        yield cluster
    finally:
        cluster.destroy()


def test_database_outage_mid_load_answers_503_and_recovers_without_restart(own_pg, say):
    world = World(own_pg.url)
    try:
        uscc, key, finance_key = prepare_billing(world)
        with Server(own_pg.url, workers=2) as server:
            workers = process_children(server.proc.pid)
            load = Load(key, uscc, {"url": server.url}, finance_key=finance_key).start(seconds=9)
            assert wait_until(lambda: load.acked_count() >= 5, 20)
            own_pg.stop("fast")  # terminates the open connections, mid-transaction for some
            stopped = time.monotonic()
            ready = requests.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.headers.get("Retry-After"), ready.text
            assert ready.json()["error"]["code"] == "database_unavailable"
            assert wait_until(lambda: load.statuses[503] >= 3, 10), load.statuses
            time.sleep(0.5)  # answers to batches committed just before the stop have arrived
            acked_during = load.acked_count()
            time.sleep(1.5)
            assert load.acked_count() == acked_during, "acknowledged while the database was down"
            own_pg.start()
            outage = time.monotonic() - stopped
            # The same processes recover: no restart, no new workers.
            assert wait_until(lambda: requests.get(f"{server.url}/readyz", timeout=10).status_code == 200, 30)
            assert wait_until(lambda: load.acked_count() >= acked_during + 5, 30), "no recovery"
            load.join()
            assert process_children(server.proc.pid) == workers, "workers were replaced"
            assert server.proc.poll() is None
            say(f"\n[pg-outage] database down for {outage:.1f} s; 503 answers {load.statuses[503]} "
                  f"(each with Retry-After: {load.missing_retry_after == 0})")
            assert set(load.statuses) <= {200, 503}, f"never a 500: {load.statuses}"
            assert load.missing_retry_after == 0
            assert set(load.billing) <= {"200", "201", "503"}, load.billing
            check_outcome("pg-outage", world.db, load, say)
    finally:
        world.db.dispose()


def test_database_unreachable_at_start_is_503_not_500(tmp_path):
    """No database at all (nothing listens on the port): readiness and writes say 503, retry."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/voucher"
    app = create_app(Settings.from_env(env={}, database_url=url))
    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"]
    r = client.post("/v1/usage-records", json={"records": []},
                    headers={"Authorization": "Bearer vch_0123456789abcdef_" + "x" * 43})
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.json["error"]["code"] == "database_unavailable"
    assert client.get("/healthz").status_code == 200  # alive, just not ready
