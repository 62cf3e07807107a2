"""The finance console's policy simulation page (docs/POLICY.md#simulation): choose or upload a
policy file and a year, see the figures billing/simulation.py computes, download the workbook.
The year is tests/billing/test_simulation.py's (actual ¥6,059,500)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from openpyxl import load_workbook

from billing.simulation_report import SHEETS
from console.words import money
from tests.billing.test_simulation import year  # noqa: F401  (the fixture)
from tests.conftest import new_key
from tests.test_console import CJK, Console

POLICY = (Path(__file__).parents[1] / "config/policies/jiaxing-2025.toml").read_text(encoding="utf-8")
YUAN = 100


@pytest.fixture
def finance_console(app, db):
    c = Console(app.test_client())
    c.sign_in(new_key(db, "finance"))
    c.get("/console/simulation")  # the session's CSRF token, as a browser would have it
    return c


def shown(html: str) -> dict[str, str]:
    return dict(re.findall(r'<dd id="sim-([\w-]+)">([^<]*)</dd>', html))


def test_finance_chooses_the_shipped_policy_and_sees_the_actual_figures_again(year, finance_console):  # noqa: F811
    page = finance_console.text("/console/simulation")
    assert '<option value="jiaxing-2025.toml"' in page and 'name="upload"' in page
    r = finance_console.post("/console/simulation", {"policy": "jiaxing-2025.toml", "year": "2026",
                                                     "action": "show"})
    assert r.status_code == 200, r.get_data(as_text=True)
    html = r.get_data(as_text=True)
    figures = shown(html)
    assert figures["actual"] == figures["simulated"] == money(6_059_500 * YUAN)
    assert figures["difference"] == money(0) and figures["cap-hits"] == "1 → 1"
    assert figures["budget"] == "不限"
    assert '<svg class="chart columns"' in html and html.count('id="sim-9') == 4  # four enterprises
    assert "=1+2" in html and 'aria-current="page"' in html
    english = finance_console.text("/console/simulation?lang=en")
    assert "Policy simulation" in english and not CJK.search(english.split('<main', 1)[1].replace("中文", ""))


def test_an_uploaded_policy_at_40_percent_and_its_workbook(year, finance_console):  # noqa: F811
    toml = POLICY.replace('rate = "0.5"', 'rate = "0.4"').replace(
        'id = "jiaxing-ai-plus-2025"', 'id = "rate-40"', 1).encode()
    r = finance_console.post("/console/simulation", {"year": "2026", "action": "show",
                                                     "upload": (io.BytesIO(toml), "rate-40.toml")},
                             content_type="multipart/form-data")
    assert r.status_code == 200, r.get_data(as_text=True)[:3000]
    figures = shown(r.get_data(as_text=True))
    assert figures["simulated"] == money(5_241_600 * YUAN)
    assert figures["difference"] == money(-817_900 * YUAN)
    r = finance_console.post("/console/simulation", {"year": "2026", "action": "xlsx",
                                                     "upload": (io.BytesIO(toml), "rate-40.toml")},
                             content_type="multipart/form-data")
    assert r.status_code == 200 and r.mimetype.endswith("spreadsheetml.sheet")
    assert "voucher-simulation-rate-40-2026.xlsx" in r.headers["Content-Disposition"]
    assert load_workbook(io.BytesIO(r.data)).sheetnames == list(SHEETS)


def test_a_bad_policy_file_or_year_is_explained_on_the_page(finance_console):
    bad = POLICY.replace("standard = 200_000_000", "standard = 2000000.0").encode()
    r = finance_console.post("/console/simulation", {"year": "2026", "upload": (io.BytesIO(bad), "bad.toml")},
                             content_type="multipart/form-data")
    assert r.status_code == 422 and "caps.standard" in r.get_data(as_text=True)
    r = finance_console.post("/console/simulation", {"year": "2026", "upload": (io.BytesIO(b"rate = ["), "x.toml")},
                             content_type="multipart/form-data")
    assert r.status_code == 422 and "not valid TOML" in r.get_data(as_text=True)
    r = finance_console.post("/console/simulation", {"policy": "../secret.toml", "year": "2026"})
    assert r.status_code == 422 and 'id="sim-error"' in r.get_data(as_text=True)
    r = finance_console.post("/console/simulation", {"policy": "jiaxing-2025.toml", "year": "２０２６"})
    assert r.status_code == 422


@pytest.mark.parametrize("role", ["enterprise", "provider"])
def test_only_finance_opens_the_page(app, db, role):
    from tests.factories import make_uscc

    subject = make_uscc(100) if role == "enterprise" else "prov-a"
    if role == "enterprise":
        from metering.models import Enterprise

        with db.session() as s, s.begin():
            s.add(Enterprise(uscc=subject, name="e", eligible=True))
    else:
        from datetime import date

        from metering.models import Provider

        with db.session() as s, s.begin():
            s.add(Provider(id=subject, name="p", kind="intelligent_computing", listed_from=date(2025, 5, 13)))
    c = Console(app.test_client())
    c.sign_in(new_key(db, role, subject))
    assert c.get("/console/simulation").status_code == 403


def test_paired_bars_put_the_series_side_by_side_on_one_axis():
    from console import charts

    svg = charts.paired_bars(categories=["Jan", "Feb"], series=[("actual", [100_00, 0]), ("simulated", [50_00, -1])],
                             chart_id="t", title="t", desc="d", money=money)
    bars = re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="(#\w+)">'
                      r"<title>([^<]*)</title>", svg)
    assert [b[5] for b in bars] == ["Jan · actual: ¥100.00", "Jan · simulated: ¥50.00",
                                    "Feb · actual: ¥0.00", "Feb · simulated: -¥0.01"]
    (_, y0, _, h0, c0, _), (x1, y1, _, h1, c1, _) = bars[:2]
    assert float(h0) == 2 * float(h1) and c0 != c1  # ¥100 vs ¥50 on one scale, two colours
    assert float(bars[3][3]) == 0  # a negative figure draws no bar
