"""The console in a real headless Chromium against a real gunicorn (issue 6 acceptance).

Debian's /usr/bin/chromium (scripts/ensure-chromium.sh installs it; Playwright's own browser
download is never used) drives the pages the way a person does: signs in with a key, reads
the figures, files the forms, downloads the report. Every request the browser makes is
recorded and must go to this host. Screenshots of each page in both languages land in
test-output/screenshots/; with VOUCHER_UPDATE_SCREENSHOTS=1 a few are copied to
docs/screenshots/ for the README.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from console.words import money
from kernel.db import Database
from tests.conftest import PG_URL, create_pg_database, drop_pg_database
from tests.console_seed import JX, PERIOD, YEAR, provider_file, seed
from tests.server import Server
from voucher.migrate import upgrade

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
FOR_README = ("enterprise-quota-zh", "finance-reconciliation-zh", "finance-claim-en",
              "provider-ingestion-en", "enterprise-quota-phone-zh")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A migrated, seeded database (PostgreSQL when configured) behind two gunicorn workers."""
    tmp = tmp_path_factory.mktemp("console-browser")
    pg_name = None
    if PG_URL:
        pg_name, url = create_pg_database(PG_URL)
    else:
        url = f"sqlite:///{tmp / 'voucher.db'}"
    try:
        upgrade(url)
        db = Database(url)
        world = seed(db)
        db.dispose()
        provider_file(tmp / "providers", world.usccs["A"])
        env = {"VOUCHER_SECRET_KEY": os.urandom(32).hex(), "VOUCHER_PROVIDERS_DIR": str(tmp / "providers"),
               "VOUCHER_LOG_JSON": "0", "VOUCHER_WORKERS": "2"}
        with Server(url, workers=2, env=env, log_path=tmp / "gunicorn.log") as server:
            yield server, world
    finally:
        if pg_name:
            drop_pg_database(PG_URL, pg_name)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "run scripts/ensure-chromium.sh (Debian's chromium)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Visit:
    """One browser context (one person): records every request and console error it causes."""

    def __init__(self, browser, server, *, width: int = 1280, height: int = 800) -> None:
        self.server = server
        self.context = browser.new_context(viewport={"width": width, "height": height},
                                           locale="zh-CN", timezone_id="Asia/Shanghai",
                                           accept_downloads=True)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.context.on("response", self._subresource)
        self.context.on("requestfailed", self._failed)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _subresource(self, response) -> None:
        # Pages may answer 400/403/404 on purpose; their stylesheet and icon never may.
        if response.request.resource_type != "document" and response.status >= 400:
            self.errors.append(f"{response.status} {response.url}")

    def _failed(self, request) -> None:
        # A navigation cancels what the previous page was still loading (its icon): not a fault.
        if request.failure != "net::ERR_ABORTED":
            self.errors.append(f"failed: {request.url} ({request.failure})")

    def _console(self, message) -> None:
        # "Failed to load resource" repeats a status already judged above; anything else
        # (a Content-Security-Policy violation, a script error) is a failure.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def url(self, path: str) -> str:
        return self.server.url + path

    def goto(self, path: str, status: int = 200):
        response = self.page.goto(self.url(path))
        assert response is not None and response.status == status, (path, response and response.status)
        return response

    def sign_in(self, key: str, lang: str = "zh") -> None:
        self.goto(f"/console/sign-in?lang={lang}")
        self.page.get_by_label("API 密钥" if lang == "zh" else "API key").fill(key)
        self.page.get_by_role("button", name="登录" if lang == "zh" else "Sign in").click()
        self.page.wait_for_load_state()
        assert "/sign-in" not in self.page.url, self.page.content()[:2000]

    def sign_out(self) -> None:
        self.page.get_by_role("button", name="退出登录").click()
        self.page.wait_for_url("**/console/sign-in")
        assert "您已退出登录" in self.page.locator(".flashes").inner_text()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def figure(self, id_: str) -> str:
        return self.page.locator(f"#{id_}").inner_text().strip()

    def close(self) -> None:
        self.context.close()
        hosts = {urlsplit(u).hostname for u in self.requests if not u.startswith(("data:", "blob:"))}
        assert self.requests and hosts <= LOCAL_HOSTS, f"requests left the host: {sorted(hosts)}"
        assert not self.errors, self.errors  # a CSP violation would show up here


@pytest.fixture
def visit(browser, stack):
    opened: list[Visit] = []

    def make(**kw) -> Visit:
        v = Visit(browser, stack[0], **kw)
        opened.append(v)
        return v

    yield make
    for v in opened:
        v.close()


def api(server, key: str, path: str) -> dict:
    r = requests.get(server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def both_languages(v: Visit, name: str) -> None:
    """Screenshot the page in Chinese, switch with the header link, screenshot in English."""
    v.shot(f"{name}-zh")
    v.page.get_by_role("link", name="English").click()
    v.page.wait_for_load_state()
    assert v.page.locator("html").get_attribute("lang") == "en"
    v.shot(f"{name}-en")
    v.page.get_by_role("link", name="中文").click()
    v.page.wait_for_load_state()
    assert v.page.locator("html").get_attribute("lang") == "zh-CN"


def test_each_role_signs_in_and_sees_its_pages_in_both_languages(visit, stack):
    server, world = stack
    a = world.usccs["A"]
    v = visit()
    v.goto("/console/sign-in")
    both_languages(v, "sign-in")

    v.sign_in(world.keys["enterprise"])
    assert v.page.url.endswith(f"/console/enterprises/{a}")
    assert v.page.get_by_role("navigation", name="主导航").is_visible()
    for path, name in ((f"/console/enterprises/{a}?year={YEAR}", "enterprise-quota"),
                       (f"/console/enterprises/{a}/claims/new", "enterprise-claim-form"),
                       (f"/console/claims/{world.claims['A']}", "enterprise-claim")):
        v.goto(path)
        both_languages(v, name)

    p = visit()
    p.sign_in(world.keys["provider"], lang="en")
    assert p.page.url.endswith(f"/console/providers/{JX}")
    assert p.page.get_by_role("heading", name="Recent ingestion results").is_visible()
    p.page.get_by_role("link", name="中文").click()
    both_languages(p, "provider-ingestion")

    f = visit()
    f.sign_in(world.keys["finance"])
    for path, name in ((f"/console/reconciliations/{PERIOD}", "finance-reconciliation"),
                       (f"/console/claims/{world.claims['B']}", "finance-claim"),
                       (f"/console/quotas?year={YEAR}", "finance-quotas"),
                       (f"/console/budget?year={YEAR}", "finance-budget"),
                       ("/console/registry", "finance-registry"),
                       ("/console/jobs", "finance-jobs")):
        f.goto(path)
        both_languages(f, name)

    phone = visit(width=390, height=844)
    phone.sign_in(world.keys["enterprise"])
    phone.goto(f"/console/enterprises/{a}?year={YEAR}")
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    phone.shot("enterprise-quota-phone-zh")
    phone.sign_out()
    phone.goto(f"/console/enterprises/{a}", status=200)  # back to the sign-in form
    assert "/console/sign-in" in phone.page.url
    phone.sign_in(world.keys["finance"])
    phone.goto(f"/console/reconciliations/{PERIOD}")
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= 390
    phone.shot("finance-reconciliation-phone-zh")

    if os.environ.get("VOUCHER_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for name in FOR_README:
            shutil.copyfile(SHOTS / f"{name}.png", DOCS / f"{name}.png")


def test_quota_figures_on_the_page_equal_the_apis(visit, stack):
    server, world = stack
    a = world.usccs["A"]
    quota = api(server, world.keys["enterprise"], f"/v1/enterprises/{a}/quota?year={YEAR}")
    v = visit()
    v.sign_in(world.keys["enterprise"])
    v.goto(f"/console/enterprises/{a}?year={YEAR}")
    for field in ("cap", "granted", "reserved", "remaining"):
        assert v.figure(f"quota-{field}") == money(quota[field]), field
        assert v.page.locator(f"#quota-{field}").get_attribute("data-fen") == str(quota[field])
    assert v.page.locator("#quota-cap-basis").get_attribute("data-code") == quota["cap_basis"]
    assert v.figure("quota-reserved") == "¥1,234,567.89"
    chart = v.page.get_by_role("img", name=f"{YEAR} 年补贴额度")
    assert chart.is_visible()


def test_finance_approves_a_flagged_claim_with_a_reason_and_the_quota_moves(visit, stack):
    server, world = stack
    b, claim_id = world.usccs["B"], world.claims["B"]
    before = api(server, world.keys["finance"], f"/v1/enterprises/{b}/quota?year={YEAR}")
    claim = api(server, world.keys["finance"], f"/v1/claims/{claim_id}")
    assert claim["status"] == "flagged" and claim["payable"] > 0

    v = visit()
    v.sign_in(world.keys["finance"])
    v.goto(f"/console/reconciliations/{PERIOD}")
    v.page.get_by_label("差异类型").select_option("usage_invoice_mismatch")
    v.page.get_by_role("button", name="筛选").click()
    v.page.wait_for_load_state()
    rows = v.page.locator("#claims tbody tr")
    assert rows.count() == 1
    rows.get_by_role("link", name=claim_id).click()
    v.page.wait_for_load_state()
    assert v.figure("quota-reserved") == money(before["reserved"])
    assert v.figure("quota-granted") == money(before["granted"])

    v.page.get_by_label("批准理由").fill("经复核，乌镇发票含 5,000 元存储费，按计量部分补贴")
    v.page.get_by_role("button", name=f"批准 {money(claim['payable'])}").click()
    v.page.wait_for_load_state()
    assert "已批准" in v.page.locator(".flashes").inner_text()
    v.shot("finance-claim-approved-zh")

    after = api(server, world.keys["finance"], f"/v1/enterprises/{b}/quota?year={YEAR}")
    assert after["granted"] == before["granted"] + claim["payable"]
    assert after["reserved"] == before["reserved"] - claim["payable"]
    assert v.figure("quota-granted") == money(after["granted"])
    assert v.figure("quota-reserved") == money(after["reserved"])
    decided = api(server, world.keys["finance"], f"/v1/claims/{claim_id}")
    assert decided["status"] == "approved" and decided["decision_reason"].startswith("经复核")

    # …and the month's report downloads from the same page
    v.goto(f"/console/reconciliations/{PERIOD}")
    with v.page.expect_download() as download:
        v.page.get_by_role("link", name="下载 XLSX").click()
    assert download.value.suggested_filename.endswith(".xlsx")
    assert Path(download.value.path()).read_bytes()[:2] == b"PK"


def test_a_form_without_its_csrf_token_is_refused(visit, stack):
    server, world = stack
    a = world.usccs["A"]
    claims_before = api(server, world.keys["enterprise"], "/v1/claims")["data"]
    v = visit()
    v.sign_in(world.keys["enterprise"])
    v.goto(f"/console/enterprises/{a}/claims/new")
    v.page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    with v.page.expect_response(lambda r: r.request.method == "POST") as posted:
        v.page.get_by_role("button", name="提交申领").last.click()
    assert posted.value.status == 400
    assert "CSRF" in v.page.locator("main").inner_text()
    v.shot("csrf-refused-zh")
    assert api(server, world.keys["enterprise"], "/v1/claims")["data"] == claims_before
    # with the token (the form as served) the same submission goes through
    v.goto(f"/console/enterprises/{a}/claims/new")
    v.page.get_by_role("button", name="提交申领").last.click()
    v.page.wait_for_load_state()
    assert "/console/claims/clm_" in v.page.url
    assert len(api(server, world.keys["enterprise"], "/v1/claims")["data"]) == len(claims_before) + 1


def test_an_enterprise_cannot_open_another_enterprises_page(visit, stack):
    server, world = stack
    v = visit()
    v.sign_in(world.keys["enterprise"])
    v.goto(f"/console/enterprises/{world.usccs['B']}", status=404)
    assert "页面不存在" in v.page.locator("h1").inner_text()
    v.goto(f"/console/claims/{world.claims['B']}", status=404)
    v.goto("/console/reconciliations/2026-10", status=403)


def test_a_provider_uploads_an_export_and_sees_the_result(visit, stack, tmp_path):
    server, world = stack
    export = tmp_path / "november.csv"
    export.write_text("id,customer,sku,qty,start,end\n"
                      "b-1,hecheng,gpu,4,2026-10-20 08:00:00,2026-10-20 10:00:00\n"
                      "b-2,hecheng,gpu,2,2026-10-21 08:00:00,2026-10-21 09:00:00\n"
                      "b-3,stranger,gpu,1,2026-10-21 08:00:00,2026-10-21 09:00:00\n", encoding="utf-8")
    v = visit()
    v.sign_in(world.keys["provider"])
    v.page.get_by_label("格式").select_option("csv")
    v.page.get_by_label("文件", exact=True).set_input_files(str(export))
    v.page.get_by_role("button", name="上传").click()
    v.page.wait_for_load_state()
    assert v.figure("result-accepted") == "2" and v.figure("result-rejected") == "0"
    assert "stranger" in v.page.locator("#upload-result").inner_text()
    first_row = v.page.locator("#batches tbody tr").first.inner_text()
    assert "控制台上传" in first_row and "november.csv" in first_row
    v.shot("provider-upload-result-zh")


def test_pages_work_from_the_keyboard(visit, stack):
    server, world = stack
    v = visit()
    v.goto("/console/sign-in")
    v.page.keyboard.press("Tab")
    assert v.page.evaluate("document.activeElement.textContent") == "跳到正文"
    for _ in range(10):  # on through the header to the key field
        v.page.keyboard.press("Tab")
        if v.page.evaluate("document.activeElement.id") == "api_key":
            break
    assert v.page.evaluate("document.activeElement.id") == "api_key"
    v.page.keyboard.type(world.keys["finance"])
    v.page.keyboard.press("Enter")
    v.page.wait_for_url("**/console/reconciliations/**")
    # the claims table is a focusable region, and its links follow with Enter
    v.page.locator("#claims").focus()
    assert v.page.evaluate("document.activeElement.getAttribute('role')") == "region"
    v.page.keyboard.press("Tab")
    assert v.page.evaluate("document.activeElement.textContent").startswith("clm_")
    v.page.keyboard.press("Enter")
    v.page.wait_for_url("**/console/claims/clm_*")
    for label in ("批准理由", "驳回理由（必填）"):
        assert v.page.get_by_label(label).is_visible()


def post(server, key: str, path: str, body: dict) -> dict:
    r = requests.post(server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_a_provider_authorises_and_captures_and_finance_approves_the_batch(visit, stack):
    server, world = stack
    a = world.usccs["A"]
    before = api(server, world.keys["finance"], f"/v1/enterprises/{a}/quota?year={YEAR}")

    v = visit()
    v.sign_in(world.keys["provider"])
    v.goto(f"/console/providers/{JX}")
    v.page.get_by_label("统一社会信用代码").fill(a)
    v.page.get_by_label("业务参考号").fill("browser-order-1")
    v.page.get_by_label("月份", exact=True).fill("2026-11")
    v.page.get_by_label("标价金额（元）").fill("2,000.00")
    v.page.get_by_role("button", name="冻结补贴").click()
    v.page.wait_for_load_state()
    assert "已冻结补贴 ¥1,000.00" in v.page.locator(".flashes").inner_text()
    held = api(server, world.keys["finance"], f"/v1/enterprises/{a}/quota?year={YEAR}")
    assert held["reserved"] == before["reserved"] + 100_000

    v.page.get_by_label("发票号", exact=True).fill("JX-BROWSER-1")
    v.page.get_by_label("发票金额（元）").fill("1500")
    v.page.get_by_role("button", name="确认核销").click()
    v.page.wait_for_load_state()
    assert "已确认：补贴 ¥750.00" in v.page.locator(".flashes").inner_text()
    v.shot("provider-redemptions-zh")
    rdm = api(server, world.keys["provider"], "/v1/redemptions")["data"][0]
    assert rdm["status"] == "captured" and rdm["subsidy"] == 75_000

    # the month reconciled (no invoice on file: flagged), finance accepts it, the quarter's batch
    finance = world.keys["finance"]
    post(server, finance, "/v1/reconciliations", {"period": "2026-11"})
    if api(server, finance, f"/v1/redemptions/{rdm['id']}")["status"] == "flagged":
        post(server, finance, f"/v1/redemptions/{rdm['id']}/approve", {"reason": "invoice checked by hand"})
    batch = post(server, finance, "/v1/settlements", {"quarter": "2026Q4"})["data"][0]

    f = visit()
    f.sign_in(finance)
    f.goto("/console/settlements")
    f.page.locator(f"#{batch['id']}").get_by_role("button", name="批准").click()
    f.page.wait_for_load_state()
    assert "已批准" in f.page.locator(".flashes").inner_text()
    assert f.page.locator(f"#{batch['id']} [data-status]").get_attribute("data-status") == "approved"
    f.shot("finance-settlements-zh")
    after = api(server, finance, f"/v1/enterprises/{a}/quota?year={YEAR}")
    assert after["granted"] == before["granted"] + 75_000 and after["reserved"] == before["reserved"]


def test_finance_simulates_the_year_under_a_policy_file(visit, stack):
    server, world = stack
    # Earlier tests of this module push October usage after its reconciliation (the upload); the
    # simulation evaluates open claims as a run would now (docs/POLICY.md#simulation), so the
    # month is re-run first for "actual" to be what the engine says today.
    post(server, world.keys["finance"], "/v1/reconciliations", {"period": PERIOD})
    f = visit()
    f.sign_in(world.keys["finance"])
    f.goto("/console/simulation")
    f.page.get_by_label("政策文件").select_option("jiaxing-2025.toml")
    f.page.get_by_label("年度").fill(str(YEAR))
    f.page.get_by_role("button", name="模拟", exact=True).click()
    f.page.wait_for_load_state()
    # The service's own policy replayed: the actual figures again, to the fen.
    assert f.figure("sim-actual") == f.figure("sim-simulated") != "¥0.00"
    assert f.page.locator("#sim-enterprises tbody tr").count() >= 1
    assert f.page.locator("svg.chart").count() == 1
    f.shot("finance-simulation-zh")
