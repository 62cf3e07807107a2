"""The web console with Flask's test client: sessions, CSRF, scope, languages, figures.

The browser half (a real Chromium against gunicorn) is tests/integration/test_console_browser.py.
"""

from __future__ import annotations

import base64
import gettext
import io
import json
import os
import re
import stat
import threading
import zlib
from html.parser import HTMLParser

import pytest
from sqlalchemy import select

from billing.models import Claim, QuotaBalance
from console import charts, secret_key_file
from console.i18n import MO_FILE, PO_FILE, extract_catalog, read_po
from console.views import parse_yuan
from console.words import money
from kernel.keys import revoke_key
from metering.batches import IngestBatch
from tests.conftest import Api
from tests.console_seed import JX, PERIOD, WZ, YEAR, provider_file, seed

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")
EXTERNAL = re.compile(r"""(?:https?:)?//(?!127\.0\.0\.1|localhost)[\w.-]+""")


class Console:
    """A browser-like client: keeps the cookie, echoes the CSRF token of the last page."""

    def __init__(self, client) -> None:
        self.client = client
        self.token: str | None = None

    def get(self, url: str, **kw):
        r = self.client.get(url, **kw)
        m = CSRF.search(r.get_data(as_text=True)) if r.mimetype == "text/html" else None
        if m:
            self.token = m.group(1)
        return r

    def post(self, url: str, data: dict | None = None, csrf: bool = True, **kw):
        data = dict(data or {})
        if csrf:
            if self.token is None:
                self.get("/console/sign-in")
            data.setdefault("csrf_token", self.token)
        return self.client.post(url, data=data, **kw)

    def sign_in(self, key: str):
        self.get("/console/sign-in")
        r = self.post("/console/sign-in", {"api_key": key})
        assert r.status_code == 302, r.get_data(as_text=True)
        return r

    def text(self, url: str) -> str:
        r = self.get(url)
        assert r.status_code == 200, (url, r.status_code)
        return r.get_data(as_text=True)


@pytest.fixture
def world(db):
    return seed(db)


@pytest.fixture
def console(app):
    return Console(app.test_client())


def fig(html: str, id_: str) -> str:
    m = re.search(rf'id="{id_}"[^>]*>([^<]*)<', html)
    assert m, id_
    return m.group(1).strip()


def claim_row(db, claim_id: str) -> Claim:
    with db.session() as s:
        return s.get(Claim, int(claim_id[4:]))


def balance(db, uscc: str) -> tuple[int, int]:
    with db.session() as s:
        row = s.scalars(select(QuotaBalance).where(QuotaBalance.enterprise_uscc == uscc,
                                                   QuotaBalance.year == YEAR)).one()
        return row.reserved, row.granted


class _Text(HTMLParser):
    """Visible text of a page (no tags, no attribute values, no <title>/<desc> of charts)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    p = _Text()
    p.feed(html)
    return " ".join(p.parts)


def session_payload(response) -> dict:
    cookie = next(v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith("voucher_console="))
    value = cookie.split(";")[0].split("=", 1)[1]
    compressed = value.startswith(".")
    body = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)


# --- signing in and out -------------------------------------------------------------------------

def test_sign_in_exchanges_the_key_for_a_cookie_that_never_holds_it(console, world):
    console.get("/console/sign-in")
    r = console.post("/console/sign-in", {"api_key": world.keys["enterprise"]})
    assert r.status_code == 302 and r.headers["Location"] == "/console/"
    cookie = [v for k, v in r.headers.items() if k == "Set-Cookie" and v.startswith("voucher_console=")][0]
    flags = {p.strip().split("=")[0].lower(): p.strip() for p in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"] == "SameSite=Strict" and flags["path"] == "Path=/console"
    assert "secure" not in flags  # only with VOUCHER_COOKIE_SECURE / cookie_secure
    payload = session_payload(r)
    assert set(payload) == {"sid", "csrf", "_permanent"}  # a session token, nothing of the key
    secret = world.keys["enterprise"].split("_", 2)[2]
    assert secret not in json.dumps(payload) and world.keys["enterprise"] not in cookie
    home = console.get("/console/")
    assert home.status_code == 302 and home.headers["Location"] == f"/console/enterprises/{world.usccs['A']}"


def test_the_cookie_is_secure_when_configured(db, settings):
    from config.settings import Settings
    from voucher.app import create_app

    assert Settings.from_env(env={"VOUCHER_COOKIE_SECURE": "1"}).cookie_secure is True
    assert Settings.from_env(env={}).cookie_secure is False
    world = seed(db)
    console = Console(create_app(settings.with_(cookie_secure=True), database=db).test_client())
    console.get("/console/sign-in", base_url="https://localhost")
    r = console.post("/console/sign-in", {"api_key": world.keys["finance"]}, base_url="https://localhost")
    cookie = [v for k, v in r.headers.items() if k == "Set-Cookie" and v.startswith("voucher_console=")][0]
    assert "Secure" in cookie.split("; ")


def test_a_wrong_key_is_refused_with_401_and_no_session(console, world):
    console.get("/console/sign-in")
    r = console.post("/console/sign-in", {"api_key": "vch_0000000000000000_nope"})
    assert r.status_code == 401
    assert "API 密钥无效或已被吊销" in r.get_data(as_text=True)
    assert console.get("/console/").status_code == 302


def test_guessing_keys_at_the_sign_in_form_is_limited(db, settings):
    from voucher.app import create_app

    world = seed(db)
    console = Console(create_app(settings.with_(auth_fail_limit=2), database=db).test_client())
    console.get("/console/sign-in")
    for _ in range(2):
        assert console.post("/console/sign-in", {"api_key": "vch_0000000000000000_guess"}).status_code == 401
    assert console.post("/console/sign-in", {"api_key": "vch_0000000000000000_guess"}).status_code == 429
    r = console.post("/console/sign-in", {"api_key": world.keys["finance"]})  # even the right key
    assert r.status_code == 429 and "登录失败次数过多" in r.get_data(as_text=True)


def test_pages_need_a_session_and_come_back_after_sign_in(console, world):
    r = console.get(f"/console/enterprises/{world.usccs['A']}?year=2026")
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/console/sign-in?next=%2Fconsole%2Fenterprises%2F")
    console.get(r.headers["Location"])
    r = console.post("/console/sign-in", {"api_key": world.keys["enterprise"],
                                          "next": f"/console/enterprises/{world.usccs['A']}?year=2026"})
    assert r.headers["Location"] == f"/console/enterprises/{world.usccs['A']}?year=2026"


def test_sign_in_never_redirects_off_the_console(app, world):
    for target in ("https://evil.example/", "//evil.example/x", "/v1/claims", "/console\\@evil"):
        console = Console(app.test_client())
        console.get("/console/sign-in")
        r = console.post("/console/sign-in", {"api_key": world.keys["finance"], "next": target})
        assert r.headers["Location"] == "/console/", target


def test_next_with_control_characters_is_not_followed(app, world):
    """CR/LF (header splitting) and tabs (dropped by browsers) in `next`: the default page."""
    for target in ("/console/\r\nSet-Cookie: x=1", "/console/\n//evil.example/", "/console\t/x",
                   "/console/\x00", "/console/\x7f"):
        console = Console(app.test_client())
        page = console.get("/console/sign-in", query_string={"next": target})
        assert page.status_code == 200 and 'name="next"' not in page.get_data(as_text=True)
        r = console.post("/console/sign-in", {"api_key": world.keys["finance"], "next": target})
        assert r.status_code == 302 and r.headers["Location"] == "/console/", target


@pytest.mark.parametrize("year", ["202²", "①", "٢٠٢٦", "２０２６", "2026\n", "0000"])
def test_year_of_non_ascii_digits_is_400(console, world, year):
    console.sign_in(world.keys["finance"])
    assert console.get("/console/quotas", query_string={"year": year}).status_code == 400
    assert console.get(f"/console/enterprises/{world.usccs['A']}",
                       query_string={"year": year}).status_code == 400


def test_claim_id_beyond_64_bits_is_404(console, world):
    console.sign_in(world.keys["finance"])
    for cid in ("clm_9223372036854775808", "clm_99999999999999999999999", "clm_²"):
        assert console.get(f"/console/claims/{cid}").status_code == 404, cid


def test_sign_out_ends_the_session(console, world):
    console.sign_in(world.keys["finance"])
    console.get("/console/registry")
    r = console.post("/console/sign-out")
    assert r.status_code == 302 and r.headers["Location"] == "/console/sign-in"
    assert console.get("/console/registry").status_code == 302


class Clock:
    """The console's clock, set by hand (Unix seconds)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app):
    app.extensions["console.clock"] = clock = Clock()
    return clock


def copy_cookie(console: Console, app) -> Console:
    """Another browser holding a copy of `console`'s cookie, as a thief would."""
    cookie = console.client.get_cookie("voucher_console", path="/console")
    other = Console(app.test_client())
    other.client.set_cookie("voucher_console", cookie.value, path="/console")
    return other


def test_a_copied_cookie_opens_nothing_after_sign_out(console, world, app):
    console.sign_in(world.keys["finance"])
    thief = copy_cookie(console, app)
    assert thief.get("/console/registry").status_code == 200  # the copy works while signed in
    console.get("/console/registry")  # the page's CSRF token
    assert console.post("/console/sign-out").headers["Location"] == "/console/sign-in"
    r = thief.get("/console/registry")
    assert r.status_code == 302 and "/console/sign-in" in r.headers["Location"]


def test_the_cookie_holds_a_random_token_and_the_database_only_its_hash(console, world, app, db):
    from console.sessions import ConsoleSession

    console.sign_in(world.keys["finance"])
    with console.client.session_transaction("/console/") as s:
        token = s["sid"]
        assert set(s) <= {"sid", "csrf", "lang", "_flashes", "_permanent"}
    with db.session() as s:
        ids = s.scalars(select(ConsoleSession.id)).all()
    assert len(token) >= 43 and token not in ids and len(ids) == 1


def test_an_idle_session_expires(console, world, app, clock):
    console.sign_in(world.keys["finance"])
    thief = copy_cookie(console, app)
    clock.now += app.config["CONSOLE_IDLE_SECONDS"] - 10
    assert console.get("/console/registry").status_code == 200  # used in time: the idle clock restarts
    clock.now += app.config["CONSOLE_IDLE_SECONDS"] + 1
    r = console.get("/console/registry")
    assert r.status_code == 302 and "ended=expired" in r.headers["Location"]
    assert "会话已过期" in console.text(r.headers["Location"])
    assert console.get("/console/registry").status_code == 302  # the session was cleared
    assert thief.get("/console/registry").status_code == 302


def test_no_session_outlives_its_maximum_age(console, world, app, clock):
    console.sign_in(world.keys["finance"])
    thief = copy_cookie(console, app)
    step = app.config["CONSOLE_IDLE_SECONDS"] // 2
    while clock.now + step < 1_800_000_000 + app.config["CONSOLE_MAX_AGE_SECONDS"]:
        clock.now += step  # busy all along
        assert console.get("/console/registry").status_code == 200
    clock.now = 1_800_000_000 + app.config["CONSOLE_MAX_AGE_SECONDS"] + 1
    assert "ended=expired" in console.get("/console/registry").headers["Location"]
    assert thief.get("/console/registry").status_code == 302


def test_timeouts_are_settings(db, settings):
    from voucher.app import create_app

    app = create_app(settings.with_(console_idle_seconds=60, console_max_age_seconds=600), database=db)
    assert (app.config["CONSOLE_IDLE_SECONDS"], app.config["CONSOLE_MAX_AGE_SECONDS"]) == (60, 600)


def test_revoking_the_key_ends_its_console_session(console, world, db, app):
    console.sign_in(world.keys["finance"])
    thief = copy_cookie(console, app)
    assert console.get("/console/registry").status_code == 200
    key_id = "key_" + world.keys["finance"].split("_")[1]
    with db.session() as s, s.begin():
        revoke_key(s, key_id)
    r = console.get("/console/registry")
    assert r.status_code == 302 and "ended=revoked" in r.headers["Location"]
    assert thief.get("/console/registry").status_code == 302


def test_voucher_keys_revoke_deletes_the_keys_console_sessions(console, world, db, settings, monkeypatch):
    from click.testing import CliRunner

    from console.sessions import ConsoleSession
    from voucher.cli import main

    console.sign_in(world.keys["finance"])
    key_id = "key_" + world.keys["finance"].split("_")[1]
    monkeypatch.setenv("VOUCHER_DATABASE_URL", settings.database_url)
    result = CliRunner().invoke(main, ["keys", "revoke", key_id])
    assert result.exit_code == 0, result.output
    with db.session() as s:
        assert s.scalars(select(ConsoleSession).where(ConsoleSession.api_key_id == key_id)).all() == []
    assert console.get("/console/registry").status_code == 302


# --- CSRF ---------------------------------------------------------------------------------------

def test_a_form_without_its_csrf_token_is_refused(console, world, db):
    console.sign_in(world.keys["finance"])
    console.get(f"/console/claims/{world.claims['B']}")
    r = console.post(f"/console/claims/{world.claims['B']}/approve", {"reason": "ok"}, csrf=False)
    assert r.status_code == 400
    assert "CSRF" in r.get_data(as_text=True) and r.mimetype == "text/html"
    r = console.post(f"/console/claims/{world.claims['B']}/approve",
                     {"reason": "ok", "csrf_token": "forged"})
    assert r.status_code == 400
    assert claim_row(db, world.claims["B"]).status == "flagged"


def test_sign_in_itself_needs_the_csrf_token(console, world):
    r = console.post("/console/sign-in", {"api_key": world.keys["finance"]}, csrf=False)
    assert r.status_code == 400


def test_another_sessions_token_is_refused(app, world):
    first, second = Console(app.test_client()), Console(app.test_client())
    first.sign_in(world.keys["finance"])
    second.sign_in(world.keys["finance"])
    r = second.post("/console/sign-out", {"csrf_token": first.token})
    assert r.status_code == 400


# --- scope --------------------------------------------------------------------------------------

def test_an_enterprise_cannot_open_another_enterprises_pages(console, world):
    console.sign_in(world.keys["enterprise"])
    other = world.usccs["B"]
    assert console.get(f"/console/enterprises/{other}").status_code == 404
    assert console.get(f"/console/enterprises/{other.lower()}").status_code == 404
    assert console.get(f"/console/enterprises/{other}/claims/new").status_code == 404
    assert console.get(f"/console/claims/{world.claims['B']}").status_code == 404
    assert console.get("/console/claims/clm_999999").status_code == 404
    r = console.post(f"/console/enterprises/{other}/claims/new", {"period": PERIOD})
    assert r.status_code == 404
    # …nor the pages of other roles
    for url in ("/console/reconciliations/2026-10", "/console/quotas", "/console/registry",
                "/console/jobs", f"/console/providers/{JX}"):
        assert console.get(url).status_code == 403, url
    assert console.post(f"/console/claims/{world.claims['A']}/approve", {"reason": "x"}).status_code == 403
    assert console.get(f"/console/claims/{world.claims['A']}").status_code == 200


def test_a_provider_sees_only_itself(console, world):
    console.sign_in(world.keys["provider"])
    assert console.get("/console/").headers["Location"] == f"/console/providers/{JX}"
    assert console.get(f"/console/providers/{JX}").status_code == 200
    assert console.get(f"/console/providers/{WZ}").status_code == 404
    assert console.post(f"/console/providers/{WZ}/upload", {"format": "csv"}).status_code == 404
    assert console.get(f"/console/enterprises/{world.usccs['A']}").status_code == 403
    assert console.get(f"/console/claims/{world.claims['A']}").status_code == 403


def test_finance_sees_every_page(console, world):
    console.sign_in(world.keys["finance"])
    assert console.get("/console/").headers["Location"] == "/console/reconciliations"
    for url in (f"/console/enterprises/{world.usccs['B']}", f"/console/claims/{world.claims['B']}",
                f"/console/providers/{WZ}", "/console/reconciliations/2026-10", "/console/quotas",
                "/console/registry", "/console/jobs", "/console/reconciliations?list=1"):
        assert console.get(url).status_code == 200, url
    assert console.get("/console/reconciliations").headers["Location"].endswith("/reconciliations/2026-10")
    # uploading usage is the provider's own act, as POST /v1/usage-records is
    assert console.post(f"/console/providers/{JX}/upload", {"format": "csv"}).status_code == 403


def test_unknown_console_pages_are_html_404s(console, world):
    r = console.get("/console/nowhere/at/all")
    assert r.status_code == 404 and r.mimetype == "text/html"
    console.sign_in(world.keys["finance"])
    assert console.get("/console/reconciliations/2026-13").status_code == 404
    assert console.get("/console/enterprises/91330402MA0000999X").status_code == 404


# --- what the pages show ------------------------------------------------------------------------

def test_quota_figures_on_the_page_equal_the_apis(console, world, client):
    api = Api(client, world.keys["enterprise"]).get(f"/v1/enterprises/{world.usccs['A']}/quota?year={YEAR}").json
    console.sign_in(world.keys["enterprise"])
    html = console.text(f"/console/enterprises/{world.usccs['A']}?year={YEAR}")
    for field in ("cap", "granted", "reserved", "remaining"):
        assert fig(html, f"quota-{field}") == money(api[field]), field
        assert f'id="quota-{field}" data-fen="{api[field]}"' in html
    assert 'data-code="new_model_filing"' in html and api["cap_basis"] == "new_model_filing"
    assert fig(html, "quota-reserved") == "¥1,234,567.89"
    assert fig(html, "quota-cap") == "¥5,000,000.00"


def test_enterprise_page_explains_discrepancies_in_words(console, world):
    console.sign_in(world.keys["enterprise_b"])
    html = console.text(f"/console/enterprises/{world.usccs['B']}?year={YEAR}")
    assert "有差异" in html
    assert "本月计量用量 ¥100,000.00，发票金额 ¥105,000.00，相差 ¥5,000.00，超过容差 ¥1.00。" in html
    assert '<svg class="chart columns"' in html and '<svg class="chart bar"' in html and 'role="img"' in html


def test_spend_chart_is_per_provider_and_month(console, world):
    console.sign_in(world.keys["enterprise"])
    html = console.text(f"/console/enterprises/{world.usccs['A']}?year={YEAR}")
    assert "10月 · 嘉兴智算中心: ¥2,469,135.78" in html
    assert "8月 · 乌镇超算中心: ¥44,000.00" in html
    # August 88,000 + 44,000; September 123,456 + 61,728; October 2,469,135.78 + 30,000
    assert "全年合计 ¥2,816,319.78" in html


def test_finance_approves_a_flagged_claim_with_a_reason_and_the_quota_moves(console, world, db):
    b = world.claims["B"]
    c = claim_row(db, b)
    assert c.status == "flagged" and c.payable == 10_000_000
    reserved, granted = balance(db, world.usccs["B"])
    console.sign_in(world.keys["finance"])
    html = console.text(f"/console/claims/{b}")
    assert fig(html, "quota-reserved") == money(reserved) and 'id="approve-form"' in html
    # a flagged claim is not approved without a reason
    r = console.post(f"/console/claims/{b}/approve", {"reason": "  "})
    assert r.status_code == 302
    assert "必须写明理由" in console.text(r.headers["Location"])
    assert claim_row(db, b).status == "flagged"
    r = console.post(f"/console/claims/{b}/approve", {"reason": "经复核，乌镇发票含 5,000 元存储费，接受"})
    assert r.status_code == 302 and r.headers["Location"] == f"/console/claims/{b}"
    html = console.text(r.headers["Location"])
    assert "已批准" in html and "¥100,000.00 由预留转为已发放" in html
    c = claim_row(db, b)
    assert c.status == "approved" and c.decision_reason.startswith("经复核")
    assert balance(db, world.usccs["B"]) == (reserved - c.payable, granted + c.payable)
    assert fig(html, "quota-granted") == money(granted + c.payable)
    assert 'id="approve-form"' not in html  # decided: no more buttons


def test_reject_needs_a_reason_and_releases_the_reservation(console, world, db):
    a = world.claims["A"]
    reserved, _ = balance(db, world.usccs["A"])
    console.sign_in(world.keys["finance"])
    console.get(f"/console/claims/{a}")
    console.post(f"/console/claims/{a}/reject", {"reason": ""})
    assert claim_row(db, a).status == "verified"
    console.post(f"/console/claims/{a}/reject", {"reason": "发票与合同主体不一致"})
    assert claim_row(db, a).status == "rejected"
    assert balance(db, world.usccs["A"])[0] == reserved - 123_456_789
    # deciding twice is refused with words, not an error page
    r = console.post(f"/console/claims/{a}/approve", {"reason": "x"})
    assert "已经作出决定" in console.text(r.headers["Location"])


def test_an_enterprise_submits_a_claim_from_the_invoices_on_file(console, world, db):
    console.sign_in(world.keys["enterprise"])
    url = f"/console/enterprises/{world.usccs['A']}/claims/new"
    html = console.text(url)
    assert "WZ-2026-10-A" in html and "JX-2026-10-A" in html
    assert re.search(r"JX-2026-10-A\s*<br><span class=\"muted\">已在申领 clm_\d+ 中", html)
    inv = re.search(r'name="invoice" value="(inv_\d+)"\s*checked>\s*</td>\s*<td><label[^>]*>乌镇', html)
    assert inv, "the unclaimed invoice is ticked"
    r = console.post(url, {"period": PERIOD, "invoice": inv.group(1), f"paid_{inv.group(1)}": "¥30,000.00",
                           "other_program_0": "省级算力补贴", "other_amount_0": "1,000.5"})
    assert r.status_code == 302, r.get_data(as_text=True)
    claim_id = r.headers["Location"].rsplit("/", 1)[1]
    c = claim_row(db, claim_id)
    assert c.enterprise_uscc == world.usccs["A"] and c.period == PERIOD and c.status == "submitted"
    assert [(i.provider_id, i.invoice_no, i.amount_paid) for i in c.items] == [(WZ, "WZ-2026-10-A", 3_000_000)]
    assert c.other_subsidies == [{"program": "省级算力补贴", "amount": 100_050}]
    assert "已提交" in console.text(r.headers["Location"])


def test_a_claim_form_with_bad_amounts_is_answered_with_reasons(console, world, db):
    console.sign_in(world.keys["enterprise"])
    url = f"/console/enterprises/{world.usccs['A']}/claims/new"
    html = console.text(url)
    inv = re.search(r'name="invoice" value="(inv_\d+)"\s*checked', html).group(1)
    with db.session() as s:
        before = len(s.scalars(select(Claim)).all())
    r = console.post(url, {"period": PERIOD, "invoice": inv, f"paid_{inv}": "30000.001"})
    assert r.status_code == 422 and "最多两位小数" in r.get_data(as_text=True)
    r = console.post(url, {"period": PERIOD})
    assert r.status_code == 422 and "请至少选择一张" in r.get_data(as_text=True)
    with db.session() as s:
        assert len(s.scalars(select(Claim)).all()) == before


def test_reconciliation_lists_discrepancies_first_and_filters(console, world):
    console.sign_in(world.keys["finance"])
    html = console.text(f"/console/reconciliations/{PERIOD}")
    rows = re.findall(r'<tr id="claim-(\d+)"', html)
    flagged = {world.claims["B"][4:], world.claims["D"][4:]}
    assert set(rows[:2]) == flagged and len(rows) == 4
    assert 'id="tile-flagged">2<' in html
    only = lambda q: re.findall(r'<tr id="claim-(\d+)"', console.text(f"/console/reconciliations/{PERIOD}?{q}"))  # noqa: E731
    assert only("code=invoice_not_found") == [world.claims["D"][4:]]
    assert only("code=usage_invoice_mismatch") == [world.claims["B"][4:]]
    assert only("county=嘉善县") == sorted([world.claims["D"][4:], world.claims["C"][4:]],
                                       key=lambda i: i != world.claims["D"][4:])
    assert set(only(f"provider={WZ}")) == {world.claims["B"][4:]}
    assert only("status=verified") == [world.claims["A"][4:], world.claims["C"][4:]]
    assert "没有找到服务商 jx-zhisuan 开给本企业、属于本月的发票 JX-2026-10-NOPE" in html


def test_finance_runs_a_reconciliation_from_the_page(console, world):
    console.sign_in(world.keys["finance"])
    console.get("/console/reconciliations?list=1")
    r = console.post("/console/reconciliations", {"period": PERIOD})
    assert r.status_code == 302
    assert "第 2 次运行" in console.text(r.headers["Location"])
    r = console.post("/console/reconciliations", {"period": "2026-9"})
    assert "YYYY-MM" in console.text(r.headers["Location"])


def test_finance_downloads_the_months_report_from_the_page(console, world, client):
    console.sign_in(world.keys["finance"])
    html = console.text(f"/console/reconciliations/{PERIOD}")
    assert f'href="/console/reconciliations/{PERIOD}/report.xlsx"' in html
    api = Api(client, world.keys["finance"])
    for fmt in ("csv", "xlsx"):
        r = console.get(f"/console/reconciliations/{PERIOD}/report.{fmt}")
        assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
        same = api.get(f"/v1/reconciliations/{PERIOD}/report.{fmt}")
        assert r.mimetype == same.mimetype
        if fmt == "csv":
            assert r.data == same.data
        else:
            assert r.data[:2] == b"PK"
    assert console.get("/console/reconciliations/2026-01/report.csv").status_code == 404
    assert console.get(f"/console/reconciliations/{PERIOD}/report.pdf").status_code == 404


def test_quota_page_puts_the_enterprises_near_the_cap_first(console, world):
    console.sign_in(world.keys["finance"])
    html = console.text(f"/console/quotas?year={YEAR}")
    rows = re.findall(r'<tr id="q-(\w+)"', html)
    assert rows[0] == world.usccs["C"] and len(rows) == 4
    assert 'id="near-cap-count">1<' in html
    assert "95%" in html and "接近上限" in html


def test_budget_page_shows_the_figures_of_the_api(console, world, app):
    import dataclasses

    shipped = app.extensions["voucher.policy"]
    app.extensions["voucher.policy"] = dataclasses.replace(shipped, budget_annual=500_000_000)
    api = Api(app.test_client(), world.keys["finance"]).get(f"/v1/budget?year={YEAR}").json
    console.sign_in(world.keys["finance"])
    html = console.text(f"/console/budget?year={YEAR}")
    shown = dict(re.findall(r'<dd id="budget-([\w-]+)">([^<]*)</dd>', html))
    assert shown == {"annual": money(api["annual"]), "reserved": money(api["reserved"]),
                     "granted": money(api["granted"]), "remaining": money(api["remaining"]),
                     "waitlisted-claims": str(api["waitlisted_claims"]),
                     "waitlisted": money(api["waitlisted"]),
                     "forecast": api["forecast_exhausted_on"] or "—"}
    assert api["reserved"] + api["granted"] > 0
    assert '<svg class="chart burn-down"' in html and 'class="annual"' in html and 'class="used"' in html
    assert 'aria-current="page"' in html and "项目预算" in html
    assert "Programme budget" in console.text(f"/console/budget?year={YEAR}&lang=en")
    app.extensions["voucher.policy"] = shipped
    html = console.text(f"/console/budget?year={YEAR}&lang=zh")
    assert 'id="budget-annual">不限<' in html and 'class="annual"' not in html


def test_burn_down_chart_draws_the_forecast_to_the_annual_line():
    labels = {"used": "Used", "annual": "Annual", "forecast": "Forecast"}
    svg = charts.burn_down(days=365, used=[0, 100, 300], annual=1_000, forecast_day=10,
                           ticks=[(0, "Jan")], chart_id="b", title="t", desc="d", labels=labels,
                           money=money)
    assert svg.startswith('<svg class="chart burn-down"') and " style=" not in svg
    assert 'class="forecast"' in svg and "Annual: ¥10.00" in svg and "Used: ¥3.00" in svg
    unlimited = charts.burn_down(days=365, used=[0], annual=None, forecast_day=None, ticks=[],
                                 chart_id="b", title="t", desc="d", labels=labels, money=money)
    assert 'class="forecast"' not in unlimited and ">Forecast<" not in unlimited and ">Annual<" not in unlimited
    assert ">Forecast<" in svg and ">Annual<" in svg


def test_registry_and_job_pages(console, world, db):
    from kernel.jobruns import claim as claim_job

    with db.session() as s:
        claim_job(s, "reconcile", "2026-10", process="test:1")
    console.sign_in(world.keys["finance"])
    html = console.text("/console/registry")
    assert "嘉兴智算中心" in html and world.usccs["D"] in html and "禾城大模型（2026-04-01）" in html
    html = console.text("/console/jobs")
    assert "reconcile" in html and "运行中" in html and "test:1" in html


# --- uploads and the ingestion log ---------------------------------------------------------------

def test_a_provider_uploads_a_csv_export_through_the_import_path(db, settings, tmp_path):
    from voucher.app import create_app

    world = seed(db)
    provider_file(tmp_path / "providers", world.usccs["A"])
    app = create_app(settings.with_(providers_dir=tmp_path / "providers"), database=db)
    console = Console(app.test_client())
    console.sign_in(world.keys["provider"])
    console.get(f"/console/providers/{JX}")
    body = (b"id,customer,sku,qty,start,end\n"
            b"u-1,hecheng,gpu.a100,2,2026-10-03 08:00:00,2026-10-03 09:00:00\n"
            b"u-2,hecheng,gpu,1.5,2026-10-03 09:00:00,2026-10-03 10:00:00\n"
            b"u-3,nobody,gpu,1,2026-10-03 09:00:00,2026-10-03 10:00:00\n")
    def upload():
        return console.post(f"/console/providers/{JX}/upload",
                            {"format": "csv", "file": (io.BytesIO(body), "october.csv")},
                            content_type="multipart/form-data")

    r = upload()
    html = r.get_data(as_text=True)
    assert r.status_code == 200, html
    assert fig(html, "result-accepted") == "2" and fig(html, "result-duplicates") == "0"
    assert "nobody" in html  # the unmapped tenant is named
    html = upload().get_data(as_text=True)
    assert fig(html, "result-accepted") == "0" and fig(html, "result-duplicates") == "2"
    with db.session() as s:
        rows = s.scalars(select(IngestBatch).where(IngestBatch.source == "console")
                         .order_by(IngestBatch.id)).all()
    assert [(b.label, b.accepted, b.duplicates) for b in rows] == [("october.csv", 2, 0), ("october.csv", 0, 2)]
    assert "控制台上传" in html and "october.csv" in html
    assert 'href="/console/?lang=en"' in html  # the switch on a page only a POST shows


def test_an_upload_without_an_adapter_file_says_what_is_missing(console, world):
    console.sign_in(world.keys["provider"])
    console.get(f"/console/providers/{JX}")
    r = console.post(f"/console/providers/{JX}/upload",
                     {"format": "csv", "file": (io.BytesIO(b"id\n"), "x.csv")},
                     content_type="multipart/form-data")
    assert r.status_code == 422 and f"config/providers/{JX}.toml" in r.get_data(as_text=True)
    r = console.post(f"/console/providers/{JX}/upload", {"format": "xml"}, content_type="multipart/form-data")
    assert r.status_code == 422 and "CSV 或 JSONL" in r.get_data(as_text=True)


def test_api_pushes_are_logged_with_their_rejections(world, client, db):
    from tests.factories import record

    api = Api(client, world.keys["provider"])
    r = api.post("/v1/usage-records", json={"records": [
        record(1, world.usccs["A"], record_id="push-1"),
        record(2, "91330402MA0000999X", record_id="push-2"),
        record(3, world.usccs["A"], record_id="push-3", unit="parsec")]})
    assert r.status_code == 200
    with db.session() as s:
        last = s.scalars(select(IngestBatch).order_by(IngestBatch.id.desc())).first()
    assert (last.source, last.provider_id, last.records, last.accepted, last.rejected) == ("api", JX, 3, 1, 2)
    assert sum(last.rejected_by_code.values()) == 2


# --- languages ----------------------------------------------------------------------------------

def test_chinese_by_default_and_english_on_request(console, world):
    console.sign_in(world.keys["finance"])
    html = console.text("/console/quotas")
    assert '<html lang="zh-CN">' in html and "额度使用" in html
    html = console.text("/console/quotas?lang=en")
    assert '<html lang="en">' in html and "Quota use" in html and "额度使用" not in html
    html = console.text("/console/registry")  # remembered for the session
    assert "Enterprises and providers" in html
    assert "企业与服务商" in console.text("/console/registry?lang=zh")


def test_english_pages_have_no_untranslated_text(app, db):
    """With ASCII data, any CJK character on an English page is a string nobody translated."""
    world = seed(db, names="en")
    pages = {
        "enterprise": [f"/console/enterprises/{world.usccs['A']}?year={YEAR}",
                       f"/console/enterprises/{world.usccs['A']}/claims/new",
                       f"/console/claims/{world.claims['A']}"],
        "provider": [f"/console/providers/{JX}"],
        "finance": [f"/console/reconciliations/{PERIOD}", f"/console/claims/{world.claims['B']}",
                    f"/console/claims/{world.claims['D']}", f"/console/quotas?year={YEAR}",
                    f"/console/budget?year={YEAR}",
                    "/console/registry", "/console/jobs", "/console/reconciliations?list=1",
                    f"/console/reconciliations/{PERIOD}?code=usage_invoice_mismatch", "/console/settlements"],
    }
    seen = 0
    for role, urls in pages.items():
        c = Console(app.test_client())
        c.text("/console/sign-in?lang=en")
        c.sign_in(world.keys[role])
        for url in urls:
            text = visible_text(c.text(url)).replace("中文", "")  # the switch names itself
            assert not CJK.findall(text), (url, sorted(set(CJK.findall(text))), text[:2000])
            seen += 1
        for url in ("/console/nowhere", ):
            assert not CJK.findall(visible_text(c.get(url).get_data(as_text=True)).replace("中文", ""))
    assert seen == sum(map(len, pages.values())) == 14


def test_the_catalogue_translates_every_string_and_is_compiled():
    catalog = read_po()
    wanted = {m.id for m in extract_catalog() if m.id}
    have = {m.id: m for m in catalog if m.id}
    assert wanted - set(have) == set(), "run: python -m console.i18n"
    placeholder = re.compile(r"%\((\w+)\)s")
    for msgid, m in have.items():
        assert m.string and not m.fuzzy, msgid
        assert sorted(placeholder.findall(msgid)) == sorted(placeholder.findall(m.string)), msgid
        assert msgid.count("%%") == m.string.count("%%"), msgid
    with open(MO_FILE, "rb") as f:
        compiled = gettext.GNUTranslations(f)
    for msgid, m in have.items():
        assert compiled.gettext(msgid) == m.string, f"{MO_FILE.name} is stale: python -m console.i18n"
    assert PO_FILE.exists()


# --- formats and safety -------------------------------------------------------------------------

def test_amounts_are_yuan_with_separators_and_two_decimals():
    assert money(123_456_789) == "¥1,234,567.89"
    assert money(5) == "¥0.05" and money(0) == "¥0.00" and money(-150) == "-¥1.50"
    assert money(10**15) == "¥10,000,000,000,000.00"
    assert parse_yuan("¥1,234,567.89") == 123_456_789 and parse_yuan("0.1") == 10
    assert parse_yuan(" 30000 ") == 3_000_000
    for bad in ("", "1.234", "-1", "1e3", "abc", "1,2,3.4.5", "NaN"):
        with pytest.raises(ValueError):
            parse_yuan(bad)


def test_dates_are_shown_in_shanghai_time():
    from datetime import UTC, datetime

    from console.i18n import local_datetime

    assert local_datetime(datetime(2026, 10, 31, 16, 30, tzinfo=UTC)) == "2026-11-01 00:30"


def test_no_page_or_stylesheet_names_another_host(console, world):
    htmls = [console.text("/console/sign-in")]
    console.sign_in(world.keys["finance"])
    for url in (f"/console/reconciliations/{PERIOD}", f"/console/claims/{world.claims['B']}",
                f"/console/enterprises/{world.usccs['A']}?year={YEAR}", f"/console/quotas?year={YEAR}",
                "/console/registry", "/console/jobs", f"/console/providers/{JX}", "/console/settlements"):
        r = console.get(url)
        assert r.status_code == 200
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "script-src" not in csp
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["Cache-Control"] == "no-store"
        htmls.append(r.get_data(as_text=True))
    css = console.get("/console/static/console.css")
    assert css.status_code == 200 and "Content-Security-Policy" in css.headers
    for text in [*htmls, css.get_data(as_text=True)]:
        assert EXTERNAL.findall(text) == []
        assert "<script" not in text and " style=" not in text and "@import" not in text
    assert "url(" not in css.get_data(as_text=True)


def redemption_row(html: str, rid: str) -> str:
    m = re.search(rf'<tr id="{rid}">(.*?)</tr>', html, re.S)
    assert m, rid
    return m.group(1)


def test_a_provider_authorises_and_captures_and_finance_settles_the_batch(console, world, db, app):
    """The provider's page holds and captures through billing/redemptions.py; the enterprise sees
    the hold on its quota; finance approves the quarter's batch and the hold becomes granted."""
    from billing import settlements
    from billing.redemption_models import Redemption

    a = world.usccs["A"]
    before = balance(db, a)
    console.sign_in(world.keys["provider"])
    assert "冻结补贴" in console.text(f"/console/providers/{JX}")
    r = console.post(f"/console/providers/{JX}/redemptions", {
        "enterprise_uscc": a, "reference": "order-77", "period": "2026-11", "list_amount": "1,000.00"},
        follow_redirects=True)
    html = r.get_data(as_text=True)
    with db.session() as s:
        rdm = s.scalars(select(Redemption).where(Redemption.reference == "order-77")).one()
        rid, held = f"rdm_{rdm.id}", rdm.held
    assert held == 50_000  # half of ¥1,000.00
    assert f"核销 {rid} 已冻结补贴 ¥500.00" in html
    assert 'data-status="authorized"' in redemption_row(html, rid)
    assert balance(db, a) == (before[0] + 50_000, before[1])  # (reserved, granted)
    # a list amount that is not yuan is refused with words, nothing held
    html = console.post(f"/console/providers/{JX}/redemptions", {
        "enterprise_uscc": a, "reference": "order-78", "period": "2026-11", "list_amount": "ten"},
        follow_redirects=True).get_data(as_text=True)
    assert "标价金额应为以元为单位的金额" in html and "order-78" not in html

    ent = Console(app.test_client())
    ent.sign_in(world.keys["enterprise"])
    holds = ent.text(f"/console/enterprises/{a}?year={YEAR}")
    assert rid in holds and "¥500.00" in holds

    html = console.post(f"/console/redemptions/{rid}/capture", {"invoice_no": "JX-R-77", "amount": "800"},
                        follow_redirects=True).get_data(as_text=True)
    assert f"核销 {rid} 已确认：补贴 ¥400.00" in html
    assert 'data-status="captured"' in redemption_row(html, rid)
    assert balance(db, a) == (before[0] + 40_000, before[1])  # the rest released
    # another provider's redemption is not found; finance may not capture
    assert console.post("/console/redemptions/rdm_999999/capture", {"invoice_no": "X", "amount": "1"}
                        ).status_code == 404

    with db.session() as s, s.begin():  # reconciled clean, then the quarter's batch
        s.get(Redemption, rdm.id).reconciled_at = s.get(Redemption, rdm.id).captured_at
        batch = settlements.build(s, app.extensions["voucher.policy"], "2026Q4")[0]
        sid = f"stl_{batch.id}"
    assert f"{sid}</td>" in console.text(f"/console/providers/{JX}")
    fin = Console(app.test_client())
    fin.sign_in(world.keys["finance"])
    page = fin.text("/console/settlements")  # the session's CSRF token too
    assert 'data-status="pending"' in page and 'data-fen="40000"' in page
    html = fin.post(f"/console/settlements/{sid}/approve", follow_redirects=True).get_data(as_text=True)
    assert f"结算批次 {sid} 已批准：¥400.00 转为已发放" in html and 'data-status="approved"' in html
    assert balance(db, a) == (before[0], before[1] + 40_000)
    assert fin.post("/console/settlements/stl_999999/approve").status_code == 404
    assert console.post(f"/console/settlements/{sid}/approve").status_code == 403


# --- pieces -------------------------------------------------------------------------------------

def test_quota_chart_is_labelled_svg_without_inline_styles():
    svg = charts.quota_bar(cap=200_000_000, granted=50_000_000, reserved=25_000_000, chart_id="q",
                           title="2026 quota", desc="cap <2m>", labels={"granted": "G", "reserved": "R",
                                                                      "remaining": "Left"}, money=money)
    assert svg.startswith('<svg class="chart bar"') and 'role="img"' in svg and 'aria-labelledby="q-t q-d"' in svg
    assert "<title id=\"q-t\">2026 quota</title>" in svg and "cap &lt;2m&gt;" in svg
    assert "G: ¥500,000.00" in svg and "R: ¥250,000.00" in svg and "Left: ¥1,250,000.00" in svg
    assert 'width="160.00"' in svg and 'width="80.00"' in svg  # a quarter and an eighth of 640
    assert "style=" not in svg and "http" not in svg and "<script" not in svg


def test_spend_chart_stacks_providers_per_month():
    svg = charts.spend_bars(periods=["2026-01", "2026-02"], period_labels=["Jan", "Feb"],
                            series={"a": {"2026-01": 30_000}, "b": {"2026-01": 10_000, "2026-02": 20_000}},
                            names={"a": "Alpha", "b": "Beta & co"}, chart_id="s", title="t", desc="d",
                            empty="none", money=money)
    assert svg.count("<rect") == 3 + 2  # three bars, two legend swatches
    assert svg.startswith('<svg class="chart columns"')
    assert "Jan · Alpha: ¥300.00" in svg and "Feb · Beta &amp; co: ¥200.00" in svg
    assert ">¥400<" in svg  # the axis reaches the tallest month
    empty = charts.spend_bars(periods=["2026-01"], period_labels=["Jan"], series={}, names={},
                              chart_id="e", title="t", desc="d", empty="nothing yet", money=money)
    assert "nothing yet" in empty


def test_nice_steps():
    assert [charts.nice_step(v) for v in (0, 1, 5, 6, 99, 101, 2_469_136, 10**9)] == \
        [1, 1, 1, 2, 20, 50, 500_000, 200_000_000]


def test_the_secret_key_file_is_private_and_shared(tmp_path):
    path = tmp_path / "var" / "secret_key"
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(secret_key_file(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secret_key_file(path) == keys[0]
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary files left


# --- risk review (docs/API.md#risk, #risk-registries) -------------------------------------------

def test_finance_lists_the_months_claims_by_risk_with_each_signals_figures(console, world, db):
    console.sign_in(world.keys["finance"])
    html = console.text(f"/console/reconciliations/{PERIOD}/risk")
    with db.session() as s:
        claims = list(s.scalars(select(Claim).where(Claim.period == PERIOD)))
    scores = {f"clm_{c.id}": c.risk["score"] for c in claims}
    shown = re.findall(r'id="score-(clm_\d+)">(\d+)<', html)
    assert [int(v) for _, v in shown] == sorted(scores.values(), reverse=True)
    assert {k: int(v) for k, v in shown} == scores
    # no contracts in the seed: every claim has no_contract, explained in Chinese with its figures
    assert "无已确认合同" in html and "没有已确认的合同覆盖" in html
    assert "providers" in html and "jx-zhisuan" in html
    en = console.text(f"/console/reconciliations/{PERIOD}/risk?lang=en")
    assert "is not covered by a confirmed contract" in en
    assert "没有已确认的合同覆盖" not in en
    assert 'id="risk-link"' in console.text(f"/console/reconciliations/{PERIOD}")


def test_provider_registers_a_contract_and_the_enterprise_confirms_it(console, world, db, app):
    from metering.contracts import Contract

    console.sign_in(world.keys["provider"])
    console.get("/console/contracts")
    form = {"enterprise_uscc": world.usccs["A"], "contract_no": "JX-A-2026", "signed_on": "2026-01-02",
            "valid_from": "2026-01-01", "valid_until": "2026-12-31"}
    r = console.post("/console/contracts", form)
    assert r.status_code == 302
    html = console.text("/console/contracts")
    assert "JX-A-2026" in html and "待企业确认" in html
    with db.session() as s:
        c = s.scalars(select(Contract)).one()
        assert (c.provider_id, c.enterprise_uscc, c.confirmed_at) == (JX, world.usccs["A"], None)
        cid = f"ctr_{c.id}"
    # the same form again changes nothing; a reversed range is refused with the field named
    console.post("/console/contracts", form)
    console.post("/console/contracts", {**form, "contract_no": "BAD", "valid_until": "2025-12-31"})
    assert "valid_until is before valid_from" in console.text("/console/contracts")
    with db.session() as s:
        assert len(list(s.scalars(select(Contract)))) == 1

    other = Console(app.test_client())
    other.sign_in(world.keys["enterprise_b"])
    other.get("/console/contracts")
    assert other.post(f"/console/contracts/{cid}/confirm").status_code == 404
    owner = Console(app.test_client())
    owner.sign_in(world.keys["enterprise"])
    assert "确认合同" in owner.text("/console/contracts")
    assert owner.post(f"/console/contracts/{cid}/confirm").status_code == 302
    assert "已确认" in owner.text("/console/contracts")
    with db.session() as s:
        assert s.scalars(select(Contract)).one().confirmed_at is not None


def test_finance_records_list_prices_and_related_parties(console, world, db):
    from metering.contracts import PriceEntry, RelatedParty

    console.sign_in(world.keys["finance"])
    html = console.text("/console/risk-registry")
    assert 'id="price-form"' in html and 'id="related-form"' in html
    price = {"provider_id": JX, "resource": "gpu.h800", "unit": "gpu_hour", "unit_price": "12.50",
             "effective_from": "2026-01-01"}
    assert console.post("/console/prices", price).status_code == 302
    console.post("/console/prices", {**price, "unit_price": "12.505"})  # three decimals: refused
    console.post("/console/prices", {**price, "unit_price": "13"})  # another price, same day: conflict
    page = console.text("/console/risk-registry")
    assert "¥12.50" in page and "最多两位小数" in page and "与已登记的内容不一致" in page
    assert console.post("/console/related-parties", {"provider_id": WZ, "enterprise_uscc": world.usccs["B"],
                                                     "relation": "同一实际控制人"}).status_code == 302
    with db.session() as s:
        assert [(p.provider_id, p.unit_price) for p in s.scalars(select(PriceEntry))] == [(JX, 1250)]
        assert [(x.provider_id, x.enterprise_uscc) for x in s.scalars(select(RelatedParty))] == \
            [(WZ, world.usccs["B"])]
    assert "同一实际控制人" in console.text("/console/risk-registry")

