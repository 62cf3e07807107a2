"""The write floor for redemption authorisations: a bare Flask endpoint that does the least a
durable write can, one INSERT committed on its own (autocommit: one round trip), and nothing else.

`bench/redemptions.py` measures it beside the bare endpoint (`bench/bare_app.py`) under the same
gunicorn command, settings and workers, so the report shows how much of the bare endpoint's
rate any durable write keeps on this machine before the service's own work is counted. Raw
psycopg on one autocommit connection per thread (no pool, no ORM, no BEGIN/COMMIT round
trips), the same body read and answer shape.

    python -m gunicorn -c config/gunicorn.conf.py bench.floor_app:app
"""

from __future__ import annotations

import os
import threading

import psycopg
from flask import Flask, request

from bench.common import libpq

app = Flask(__name__)
app.json.sort_keys = False  # type: ignore[attr-defined]  # as the service's own app
_local = threading.local()
TABLE = "bench_write_floor"
CREATE = f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, reference text UNIQUE, amount bigint)"


def thread_connection() -> psycopg.Connection:
    """This thread's own autocommit connection (no pool: the floors measure the least a write takes)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(libpq(os.environ["VOUCHER_DATABASE_URL"]), autocommit=True)
    return conn


@app.post("/v1/redemptions")
def redemption():
    body = request.get_json()
    conn = thread_connection()
    (rid,) = conn.execute(f"INSERT INTO {TABLE} (reference, amount) VALUES (%s, %s) RETURNING id",
                          (body["reference"], body["list_amount"])).fetchone()
    return {"object": "redemption", "id": f"rdm_{rid}", "reference": body["reference"],
            "enterprise_uscc": body["enterprise_uscc"], "period": body["period"],
            "list_amount": body["list_amount"]}, 201


@app.get("/readyz")
def ready():
    return {"status": "ready"}
