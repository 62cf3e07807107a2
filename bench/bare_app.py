"""The reference for quota look-ups and redemption authorisations: bare Flask JSON endpoints and nothing else.

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


@app.post("/v1/redemptions")
def redemption():
    """The reference for authorisations (bench/redemptions.py): the body read, a redemption's shape."""
    body = request.get_json()
    return {"object": "redemption", "id": "rdm_1", "provider_id": "bare", "reference": body["reference"],
            "enterprise_uscc": body["enterprise_uscc"], "period": body["period"], "year": 2026,
            "status": "authorized", "currency": "CNY", "list_amount": body["list_amount"],
            "requested": body["list_amount"] // 2, "subsidy": body["list_amount"] // 2,
            "held": body["list_amount"] // 2, "policy_id": "bare"}, 201


@app.get("/readyz")
def ready():
    return {"status": "ready"}
