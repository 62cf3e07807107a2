"""Slow clients cannot take the workers (issue 15, item 4): a real gunicorn, config/gunicorn.conf.py.

More connections than workers × threads send their heads a byte at a time; `/healthz` keeps
answering within a second, and a head that never completes is dropped after the header timeout.
Loopback only; every loop is bounded.
"""

from __future__ import annotations

import socket
import threading
import time

import requests

from tests.server import Server

WORKERS, THREADS = 2, 2
SLOW_CLIENTS = 3 * WORKERS * THREADS + 2  # well over every thread of every worker
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 200 + b"\r\n\r\n"


def trickle(port: int, stop: threading.Event, closed: list[float], started: float) -> None:
    """Send HEAD a byte every 0.1 s until stopped; note when the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for byte in HEAD[:-4]:  # never the blank line that ends the head
            if stop.is_set():
                return
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed.append(time.monotonic() - started)
                return
            time.sleep(0.1)


def test_slow_heads_do_not_take_the_workers_and_are_dropped_after_the_header_timeout(
        database_url, tmp_path):
    server = Server(database_url, workers=WORKERS, log_path=tmp_path / "gunicorn.log",
                    env={"VOUCHER_THREADS": str(THREADS), "VOUCHER_HEADER_TIMEOUT": "3"})
    with server:
        stop, closed, started = threading.Event(), [], time.monotonic()
        clients = [threading.Thread(target=trickle, args=(server.port, stop, closed, started),
                                    daemon=True) for _ in range(SLOW_CLIENTS)]
        for t in clients:
            t.start()
        try:
            time.sleep(1)  # every slow client connected and trickling
            timings = []
            for _ in range(8):
                t0 = time.monotonic()
                r = requests.get(f"{server.url}/healthz", timeout=5,
                                 headers={"Connection": "close"})
                timings.append(time.monotonic() - t0)
                assert r.status_code == 200
                time.sleep(0.1)
            assert max(timings) < 1.0, timings
            with requests.Session() as kept_alive:  # later heads on one connection are read too
                for _ in range(3):
                    assert kept_alive.get(f"{server.url}/healthz", timeout=5).status_code == 200
            for t in clients:  # a head never completes: the server drops it at ~3 s
                t.join(timeout=10)
        finally:
            stop.set()
        assert len(closed) == SLOW_CLIENTS, f"{len(closed)} of {SLOW_CLIENTS} dropped"
        assert all(2.5 < when < 8 for when in closed), closed
