"""`voucher webhooks` processes against a real receiver: a SIGKILLed worker loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.test_events import PERIOD, programme
from tests.test_webhooks import all_event_ids, register
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
VOUCHER = str(Path(sys.executable).parent / "voucher")
LEASE = 2.0


def worker(db_url: str, *args: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOUCHER_")}
    env.update(VOUCHER_DATABASE_URL=db_url, VOUCHER_WEBHOOK_LEASE_SECONDS=str(LEASE),
               VOUCHER_WEBHOOK_BACKOFF_SECONDS="0.1", VOUCHER_WEBHOOK_TIMEOUT_SECONDS="1")
    with log.open("ab") as out:
        return subprocess.Popen([VOUCHER, "webhooks", "--poll", "0.1", "--batch", "2", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_a_sigkilled_worker_loses_nothing(finance, as_key, db, tmp_path):
    receiver = Receiver(delay=0.4).start()  # slow: the worker is killed mid-batch
    try:
        register(finance, receiver.url)
        register(finance, receiver.url + "?again")
        programme(finance, as_key)
        finance.post("/v1/reconciliations", json={"period": PERIOD})
        finance.post("/v1/claims/clm_1/approve", json={})
        expected = all_event_ids(finance)
        first = worker(db.url, log=tmp_path / "first.log")
        deadline = time.monotonic() + 30
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.received, (tmp_path / "first.log").read_text()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert len(receiver.received) < 2 * len(expected)  # killed with work left
        time.sleep(LEASE + 0.5)  # the killed worker's leases expire
        second = worker(db.url, "--once", log=tmp_path / "second.log")
        assert second.wait(60) == 0, (tmp_path / "second.log").read_text()
    finally:
        receiver.stop()
    got = Counter(receiver.event_ids())
    assert set(got) == set(expected)
    assert sum(got.values()) >= 2 * len(expected)  # every event to both endpoints
    # at least once: only what the killed worker had in flight may arrive twice
    assert sum(got.values()) - 2 * len(expected) <= 2
    deliveries = [d for ep in finance.get("/v1/webhook-endpoints").json["data"]
                  for d in finance.get(f"/v1/webhook-endpoints/{ep['id']}/deliveries").json["data"]]
    assert {d["status"] for d in deliveries} == {"succeeded"}
