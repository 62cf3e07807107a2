"""Policy simulation in the console (docs/POLICY.md#simulation), finance only: choose one of the
policy files beside the service's own (or upload a TOML file) and a year; the page shows per
enterprise the actual and simulated payable, totals, the budget impact and a chart, and the
same workbook as `voucher simulate` downloads from the same form.

Thin like the rest of the console: billing/simulation.py replays the year in a read-only
transaction of its own; nothing is written.
"""

from __future__ import annotations

import io
import tomllib
from datetime import date
from pathlib import Path

from flask import current_app, render_template, request, send_file
from flask_babel import format_date
from markupsafe import Markup

from billing.policy import Policy, PolicyError
from billing.policy_file import default_policy_path, load_policy, parse_policy
from billing.simulation import read_only, simulate
from billing.simulation_report import write_xlsx
from console import charts
from console.i18n import _
from console.security import login_required
from console.views import FormError, bp, database, end_reads, policy, this_year
from console.words import money
from kernel.periods import year_periods

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_UPLOAD = 64 * 1024  # a policy file is a page of TOML


def own_policy_path() -> Path:
    """The service's policy file: its folder holds the files offered."""
    return Path(current_app.config["VOUCHER_SETTINGS"].policy_path or default_policy_path())


def policy_dir() -> Path:
    return own_policy_path().parent


def policy_files() -> list[str]:
    return sorted(p.name for p in policy_dir().glob("*.toml"))


def _chosen_policy() -> tuple[Policy, str]:
    """The uploaded file if there is one, else the chosen file of the policies folder."""
    upload = request.files.get("upload")
    try:
        if upload is not None and upload.filename:
            raw = upload.read(MAX_UPLOAD + 1)
            if len(raw) > MAX_UPLOAD:
                raise FormError(_("政策文件太大（最多 64 KB）。"))
            name = Path(upload.filename).name
            try:
                return parse_policy(tomllib.loads(raw.decode("utf-8")), name), name
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise PolicyError(None, f"not valid TOML: {exc}", name) from None
        name = request.form.get("policy", "")
        if name not in policy_files():
            raise FormError(_("请选择一个政策文件或上传一个。"))
        return load_policy(policy_dir() / name), name
    except PolicyError as exc:
        raise FormError(_("政策文件有误：%(error)s", error=str(exc))) from None


def _year() -> int:
    raw = request.form.get("year", "")
    if not raw.isascii() or not raw.isdigit() or not 2000 <= int(raw) <= 2100:
        raise FormError(_("年份应为 2000 到 2100 之间的整数。"))
    return int(raw)


@bp.route("/simulation", methods=["GET", "POST"])
@login_required("finance")
def simulation():
    files = policy_files()
    own = own_policy_path().name  # offered first: another file, the one a person came to try
    form = {"year": this_year(), "policy": next((f for f in files if f != own), own)}
    if request.method == "GET":
        return render_template("console/simulation.html", files=files, form=form, sim=None,
                               active="simulation")
    try:
        form["policy"] = request.form.get("policy", form["policy"])
        form["year"] = request.form.get("year", "")
        year = _year()
        other, source = _chosen_policy()
    except FormError as exc:
        return render_template("console/simulation.html", files=files, form=form, sim=None,
                               error=str(exc), active="simulation"), 422
    end_reads()  # the replay's own read-only transaction must not wait behind this request's
    with database().session() as session, read_only(session):
        sim = simulate(session, policy(), other, year)
    if request.form.get("action") == "xlsx":
        buf = io.BytesIO()
        write_xlsx(sim, buf)
        buf.seek(0)
        return send_file(buf, mimetype=XLSX, as_attachment=True,
                         download_name=f"voucher-simulation-{other.id}-{year}.xlsx")
    months = year_periods(year)
    chart = Markup(charts.paired_bars(
        categories=[format_date(date(year, m, 1), "MMM") for m in range(1, 13)],
        series=[(_("实际应付"), [sim.months[p][0] for p in months]),
                (_("模拟应付"), [sim.months[p][1] for p in months])],
        chart_id="simulation", title=_("%(year)s 年每月实际与模拟应付", year=year),
        desc=_("全年实际应付 %(actual)s，按 %(policy)s 模拟应付 %(simulated)s。",
               actual=money(sim.actual), policy=other.id, simulated=money(sim.simulated)),
        money=money))
    return render_template("console/simulation.html", files=files, form=form, sim=sim, source=source,
                           months=months, chart=chart, active="simulation")
