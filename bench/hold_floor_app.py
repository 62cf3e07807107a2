"""The hold floor for redemption authorisations: the service's own write, with the least around it.

Where the write floor (bench/floor_app.py) writes one row, this endpoint has the database write
what a plain authorisation writes, through the service's own `voucher_hold` (migration 0019):
the period row's shared lock, the balance row (opened on first use, cap raised) and its
conditional UPDATE, the redemption, the hold's postings, then under the audit chain's lock the
entry and its event. A small SQL wrapper reads the balance row and calls it, so a request is one
round trip through raw psycopg and nothing else: no key check, no read from Python, no decision,
no answer schema, no metrics. `bench/redemptions.py` loads it beside the service in the same run,
on a database of its own, so the report shows what the hold's own rows cost on this machine
whatever the Python in front of them. It decides nothing (half the list amount, the standard cap)
and its audit entries do not hash as the chain's (a fixed text), which is why it is a benchmark
and not a path: the service's rules live in billing/redemptions.py.

    python -m gunicorn -c config/gunicorn.conf.py bench.hold_floor_app:app
"""

from __future__ import annotations

import os
import zlib

import psycopg
from flask import Flask, request

from bench.common import libpq
from bench.floor_app import thread_connection

app = Flask(__name__)
app.json.sort_keys = False  # type: ignore[attr-defined]  # as the service's own app

WRAPPER = """
CREATE OR REPLACE FUNCTION bench_hold(p_provider text, p_reference text, p_uscc text, p_period text,
                                      p_list bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_year integer := left(p_period, 4)::integer;
    v_id bigint := nextval('redemption_id_seq');
    v_half bigint := p_list / 2;
    v_row_cap bigint;
    v_reserved bigint := 0;
    v_granted bigint := 0;
    v_after text;
BEGIN
    SELECT cap, reserved, granted INTO v_row_cap, v_reserved, v_granted FROM quota_balance
     WHERE enterprise_uscc = p_uscc AND year = v_year AND programme_id = 'default' FOR UPDATE;
    v_after := json_build_object('object', 'redemption', 'id', 'rdm_' || v_id, 'provider_id', p_provider,
                                 'reference', p_reference, 'enterprise_uscc', p_uscc, 'period', p_period,
                                 'status', 'authorized', 'list_amount', p_list, 'subsidy', v_half,
                                 'held', v_half, 'created_at', v_now)::text;
    PERFORM voucher_hold(
        v_id, p_provider, p_reference, p_uscc, p_period, v_year, 'default', p_list, v_half, v_half,
        'bench', v_now, v_now + interval '7 days', coalesce(v_reserved, 0), coalesce(v_granted, 0),
        v_row_cap, CAP, 'standard',
        CASE WHEN v_row_cap IS NULL THEN 'open' END, CAP, 'cap standard: CAP fen', md5('open' || v_id),
        md5('hold' || v_id), 'bench hold ' || p_reference,
        NULL, 'provider', 'req_bench', 'redemption.authorized', 'rdm_' || v_id,
        v_after, v_after || ',"prev_hash":"', '","request_id":"req_bench","seq":',
        'redemption.authorized', '{"object":' || v_after || '}', '{}'::bigint[], v_now + interval '3 days');
    RETURN v_id;
END
$$
"""


def install(url: str, cap: int) -> None:
    """Create the wrapper in the hold floor's own database (migrated, registry seeded); `cap`
    is the standard cap in fen, what a new balance row opens with."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(WRAPPER.replace("CAP", str(int(cap))))


@app.post("/v1/redemptions")
def redemption():
    body = request.get_json()
    uscc = body["enterprise_uscc"]
    # the providers' share of the load as in the service's run: each enterprise always with one
    provider = f"bench-prov-{1 + zlib.crc32(uscc.encode()) % int(os.environ['BENCH_PROVIDERS'])}"
    args = (provider, body["reference"], uscc, body["period"], body["list_amount"])
    for attempt in range(3):  # two first holds of one enterprise at once: the second opens nothing
        try:
            (rid,) = thread_connection().execute("SELECT bench_hold(%s, %s, %s, %s, %s)", args).fetchone()
            break
        except psycopg.Error as exc:
            if exc.sqlstate != "VH002" or attempt == 2:
                raise
    half = body["list_amount"] // 2
    return {"object": "redemption", "id": f"rdm_{rid}", "reference": body["reference"],
            "enterprise_uscc": body["enterprise_uscc"], "period": body["period"], "status": "authorized",
            "list_amount": body["list_amount"], "subsidy": half, "held": half}, 201


@app.get("/readyz")
def ready():
    return {"status": "ready"}
