"""`GET /v1/budget[?year=]`: the programme's budget (docs/API.md#budget), finance only."""

from __future__ import annotations

from flask import Blueprint, current_app

from api.auth import db_session, requires
from api.billing import programme_arg
from api.http import query_arg
from api.openapi import doc, query
from api.schemas.budget import Budget
from billing.budget import figures
from kernel.db import utcnow
from kernel.periods import day_of, parse_day

bp = Blueprint("budget", __name__, url_prefix="/v1")


def _year(value: str) -> int:
    year = int(value)
    if not 2000 <= year <= 2100:
        raise ValueError("must be a year such as 2026")
    return year


@doc("Read the programme's budget", response=Budget, tags=["billing"],
     description="Reserved and granted across every enterprise in the year against the policy's "
                 "`[budget] annual`, what waits for budget, and the day it runs out at the pace "
                 "of the last 90 days.",
     query=[query("year", "Calendar year (default: this year, Asia/Shanghai)", type="integer"),
            query("program", "A programme id (docs/API.md#quota-programmes); the default programme when omitted")])
@bp.get("/budget")
@requires("finance")
def read_budget():
    today = parse_day(day_of(utcnow()))  # Asia/Shanghai
    year = query_arg("year", _year, default=today.year)
    programme = programme_arg()
    default = current_app.extensions["voucher.policy"]
    session = db_session()
    answer = figures(session, programme, year, today, waitlist=programme is default)
    programmes = current_app.extensions["voucher.programmes"]
    if not programmes.others:
        return Budget.dump(answer)
    every = [(p.id, figures(session, p, year, today, waitlist=False)) for p in (default, *programmes.others)]
    annuals = [f.annual for _id, f in every]
    return Budget.dump(answer, combined={
        "programmes": [i for i, _f in every], "annual": None if None in annuals else sum(annuals),
        "reserved": sum(f.reserved for _i, f in every), "granted": sum(f.granted for _i, f in every)})
