"""The reference for quota look-ups: a bare Flask JSON endpoint and nothing else.

Served by the same gunicorn command and settings as the service (`config/gunicorn.conf.py`,
the same workers), on the same path, answering a body of the same shape, so the ratio
between the two is what the service adds: hooks, authentication, the database read.

    python -m gunicorn -c config/gunicorn.conf.py bench.bare_app:app
"""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)
app.json.sort_keys = False  # type: ignore[attr-defined]  # as the service's own app


@app.get("/v1/enterprises/<uscc>/quota")
def quota(uscc: str):
    return {"object": "quota", "enterprise_uscc": uscc, "year": request.args.get("year", type=int),
            "currency": "CNY", "cap": 200_000_000, "cap_basis": "standard", "granted": 0,
            "reserved": 0, "remaining": 200_000_000, "policy_id": "bare"}


@app.get("/readyz")
def ready():
    return {"status": "ready"}
