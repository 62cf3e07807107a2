"""Report downloads: `GET /v1/reconciliations/{period}/report.csv|.xlsx` (finance only)."""

from __future__ import annotations

import tempfile

from flask import Blueprint, current_app, send_file

from api.auth import db_session, requires
from api.errors import not_found
from api.http import period_arg
from api.openapi import doc
from billing.models import Reconciliation
from billing.reports import FORMATS, filename, write_report

bp = Blueprint("reports", __name__, url_prefix="/v1")

SPOOL_BYTES = 8 * 1024 * 1024  # larger reports go to a temporary file, not memory


def _report(period: str, fmt: str):
    period_arg(period, "reconciliation")
    session = db_session()
    if session.get(Reconciliation, period) is None:
        raise not_found("reconciliation", period)
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    write_report(session, period, fmt, out, policy=current_app.extensions["voucher.policy"])
    session.rollback()  # end the read transaction before the body is sent
    out.seek(0)
    return send_file(out, mimetype=FORMATS[fmt], as_attachment=True,
                     download_name=filename(period, fmt), max_age=0)


_DOWNLOADS = {  # format: (summary, description) of its route
    "csv": ("Download the month's report as CSV",
            "One row per claim item (`record_type` item) and per clawback adjustment; amounts "
            "in integer fen; UTF-8 with a byte-order mark; English header row. Columns add up to "
            "the reconciliation summary's totals."),
    "xlsx": ("Download the month's report as an Excel workbook",
             "Sheets 汇总 Summary (totals, counts by status, by county and provider with charts, "
             "discrepancies, enterprises at the cap), 明细 Claim items and 调整 Adjustments; "
             "amounts in yuan with two decimals; Chinese headers with English below."),
}


def _download_view(fmt: str, summary: str, description: str):
    """`GET /v1/reconciliations/<period>/report.<fmt>`, endpoint `reports.report_<fmt>`."""

    def view(period: str):
        return _report(period, fmt)

    view.__name__ = view.__qualname__ = f"report_{fmt}"
    view = doc(summary, description=description, tags=["reconciliations"],
               response_content_type=FORMATS[fmt],
               errors={404: "No reconciliation has been run for the period"})(view)
    return bp.get(f"/reconciliations/<period>/report.{fmt}")(requires("finance")(view))


report_csv = _download_view("csv", *_DOWNLOADS["csv"])
report_xlsx = _download_view("xlsx", *_DOWNLOADS["xlsx"])
