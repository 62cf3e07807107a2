"""Console pages. Thin like the API's blueprints: check scope, call the domain services, render.

Scope is the API's, exactly: an enterprise sees only itself (another enterprise's page or
claim answers 404), a provider only itself, finance everything; a page for another role
answers 403. Writes go through the same services as the API (billing.claims,
billing.reconciliation, adapters.pull) in their own transaction.
"""

from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_babel import format_date
from markupsafe import Markup
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from adapters.registry import UPLOAD_FORMATS
from api.auth import db_session
from api.errors import ApiError, refusal
from billing import budget as budget_svc
from billing import claims as claims_svc
from billing import ledger, lifecycle, settlements
from billing import redemptions as redemptions_svc
from billing.models import (
    Claim,
    ClaimAdjustment,
    ClaimItem,
    LedgerPosting,
    ProviderInvoice,
    Reconciliation,
)
from billing.reconciliation import adjustments_of, reconcile
from billing.redemption_models import Redemption, SettlementBatch
from console import charts
from console.i18n import _, _l, current_lang, html_lang, local_date, local_datetime, remember_lang
from console.security import (
    CSRF_FIELD,
    CsrfRefused,
    check_csrf,
    csrf_token,
    current_user,
    login_required,
    own_subject,
    safe_next,
    security_headers,
)
from console.security import sign_in as start_session
from console.security import sign_out as end_session
from console.words import (
    CAP_BASIS,
    CLAIM_STATUS,
    CODES,
    JOB_STATUS,
    PROVIDER_KIND,
    RECORD_CODES,
    REDEMPTION_STATUS,
    RISK_SIGNALS,
    ROLES,
    SETTLEMENT_STATUS,
    SKIP_REASONS,
    SOURCES,
    STACKING,
    explain,
    money,
    word,
)
from kernel.db import utcnow
from kernel.errors import DomainError
from kernel.keys import authenticate
from kernel.periods import (
    current_period,
    day_of,
    local_year,
    parse_day,
    parse_period,
    period_year,
    previous_period,
    year_periods,
)
from kernel.uscc import canonical_uscc
from kernel.vocabulary import RECONCILED, ClaimStatus, Event, SettlementMode, UsageStatus
from metering.batches import recent_batches
from metering.models import Enterprise, ModelFiling, Provider, UsageRecord

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static")

NEAR_CAP = 0.9  # the share of the cap at which an enterprise is "near the cap" (as in /metrics)
_YUAN = re.compile(r"^[0-9]{1,13}(\.[0-9]{1,2})?$")
M = TypeVar("M")  # a mapped class


class FormError(Exception):
    """A form the service refused; the message is already in the reader's language."""


def end_reads() -> None:
    """Close the request session's read transaction before a write in a session of its own.

    On SQLite every transaction takes the write lock (BEGIN IMMEDIATE), so a read left open
    would block the write; committing (not rolling back) keeps the loaded objects usable.
    """
    db_session().commit()


def policy():
    return current_app.extensions["voucher.policy"]


def programmes():
    """The default programme and the others (docs/POLICY.md#programmes)."""
    return current_app.extensions["voucher.programmes"]


def database():
    return current_app.extensions["voucher.db"]


def this_year() -> int:
    return local_year(datetime.now(UTC), policy().timezone)


# --- request plumbing -----------------------------------------------------------------------

@bp.before_request
def _before() -> None:
    remember_lang()
    if request.method == "POST":
        check_csrf()


bp.after_request(security_headers)


@bp.app_template_filter("money")
def _money_filter(fen: int | None) -> str:
    return money(fen)


@bp.context_processor
def _context() -> dict[str, Any]:
    user = current_user()

    def lang_url(lang: str) -> str:
        """This page in the other language; a page only a POST shows goes to the start page."""
        rule = request.url_rule
        if rule is None or "GET" not in (rule.methods or ()) or request.endpoint == "console.static":
            return url_for("console.index", lang=lang)
        view_args = request.view_args or {}
        args = {k: v for k, v in request.args.to_dict(flat=True).items() if k not in view_args}
        args["lang"] = lang
        return url_for(request.endpoint, **view_args, **args)

    return {
        "user": user,
        "role_word": word(ROLES, user.role) if user else "",
        "csrf_field": Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{csrf_token()}">'),
        "lang": current_lang(),
        "html_lang": html_lang(),
        "lang_url": lang_url,
        "dt": local_datetime,
        "d": local_date,
        "word": word,
        "words": {"status": CLAIM_STATUS, "codes": CODES, "cap_basis": CAP_BASIS,
                  "kind": PROVIDER_KIND, "job": JOB_STATUS, "source": SOURCES,
                  "record_codes": RECORD_CODES, "roles": ROLES, "skip": SKIP_REASONS,
                  "signals": RISK_SIGNALS,
                  "redemption": REDEMPTION_STATUS, "settlement": SETTLEMENT_STATUS,
                  "stacking": STACKING},
        "explain": explain,
        "sep": _("；"),
        "nav": _nav(user),
    }


def _nav(user) -> list[tuple[str, str, str]]:
    """(endpoint key, url, label) of the pages the user's role may open."""
    if user is None:
        return []
    if user.role == "enterprise":
        return [("enterprise", url_for("console.enterprise", uscc=user.subject), _("额度与申领")),
                ("new_claim", url_for("console.new_claim", uscc=user.subject), _("提交申领")),
                ("contracts", url_for("console.contracts_page"), _("合同"))]
    if user.role == "provider":
        return [("provider", url_for("console.provider", provider_id=user.subject), _("数据与发票")),
                ("contracts", url_for("console.contracts_page"), _("合同"))]
    return [("reconciliation", url_for("console.reconciliations"), _("月度对账")),
            ("quotas", url_for("console.quotas"), _("额度使用")),
            ("budget", url_for("console.budget"), _("项目预算")),
            ("simulation", url_for("console.simulation"), _("政策模拟")),
            ("settlements", url_for("console.settlements_page"), _("核销结算")),
            ("registry", url_for("console.registry"), _("企业与服务商")),
            ("risk_registry", url_for("console.risk_registry"), _("合同与目录价")),
            ("jobs", url_for("console.jobs"), _("作业记录"))]


def _error_page(status: int, title: str, detail: str):
    return render_template("console/error.html", status=status, title=title, detail=detail), status


@bp.errorhandler(CsrfRefused)
def _csrf_refused(_exc):
    return _error_page(400, _("请求被拒绝"),
                       _("表单缺少有效的安全令牌（CSRF），可能已过期。请返回、刷新页面后重试。"))


@bp.errorhandler(ApiError)
@bp.errorhandler(DomainError)
def _refused(exc: ApiError | DomainError):
    err = refusal(exc)
    return _error_page(err.status, _("无法完成"), err.message)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    status = exc.code or 500
    titles = {
        400: (_("请求有误"), _("请求的内容无法识别。")),
        403: (_("无权访问"), _("您的角色不能打开此页面。")),
        404: (_("页面不存在"), _("没有这个页面，或者您无权查看它。")),
        405: (_("请求有误"), _("此页面不接受这种请求。")),
        413: (_("文件过大"), _("上传的文件超过了允许的大小。")),
    }
    title, detail = titles.get(status, (_("出错了"), exc.description or ""))
    return _error_page(status, title, detail)


@bp.route("/<path:_anything>", methods=["GET", "POST"])
def _unknown(_anything: str):
    abort(404)


# --- signing in and out ---------------------------------------------------------------------

@bp.get("/")
@login_required()
def index():
    user = current_user()
    if user.role == "enterprise":
        return redirect(url_for(".enterprise", uscc=user.subject))
    if user.role == "provider":
        return redirect(url_for(".provider", provider_id=user.subject))
    return redirect(url_for(".reconciliations"))


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    from api.ratelimit import limiter_of

    error, status = None, 200
    target = safe_next(request.values.get("next"))
    if request.method == "POST":
        limiter, address = limiter_of(current_app), request.remote_addr or "-"
        wait = limiter.retry_after(address)
        if wait is not None:
            error, status = _("登录失败次数过多，请 %(n)s 秒后再试。", n=wait), 429
        else:
            key = request.form.get("api_key", "").strip()
            session_ = db_session()
            principal = authenticate(session_, key) if key else None
            session_.rollback()
            if principal is not None:
                start_session(principal)
                return redirect(target or url_for(".index"))
            wait = limiter.failed(address) if key else None
            if wait is not None:
                error, status = _("登录失败次数过多，请 %(n)s 秒后再试。", n=wait), 429
            else:
                error, status = _("API 密钥无效或已被吊销。"), 401
    elif current_user() is not None:
        return redirect(target or url_for(".index"))
    notices = {"expired": _("会话已过期，请重新登录。"), "revoked": _("密钥已被吊销，会话已结束。")}
    notice = notices.get(request.args.get("ended", ""))
    return render_template("console/sign_in.html", error=error, notice=notice, next=target), status


@bp.post("/sign-out")
def sign_out():
    end_session()
    flash(_("您已退出登录。"), "info")
    return redirect(url_for(".sign_in"))


# --- enterprise -------------------------------------------------------------------------------

def _year_arg() -> int:
    raw = request.args.get("year")
    if raw is None or raw == "":
        return this_year()
    if not re.fullmatch(r"[0-9]{4}", raw) or not 2000 <= int(raw) <= 2100:  # ASCII digits only
        abort(400)
    return int(raw)


def _own_or_404(model: type[M], role: str, ident: str) -> M:
    """The `model` row `ident` a user of `role` may see only if it is its own; 404 if missing."""
    own_subject(role, ident)
    row = db_session().get(model, ident)
    if row is None:
        abort(404)
    return row


def _enterprise_or_404(uscc: str) -> Enterprise:
    return _own_or_404(Enterprise, "enterprise", uscc)


def monthly_spend(session, uscc: str, year: int) -> dict[str, dict[str, int]]:
    """Active metered usage of one enterprise per provider and month of `year` (one query)."""
    rows = session.execute(
        select(UsageRecord.provider_id, UsageRecord.period, func.sum(UsageRecord.amount))
        .where(UsageRecord.enterprise_uscc == uscc, UsageRecord.status == UsageStatus.ACTIVE,
               UsageRecord.period >= f"{year}-01", UsageRecord.period <= f"{year}-12")
        .group_by(UsageRecord.provider_id, UsageRecord.period))
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for provider_id, period, amount in rows:
        out[provider_id][period] = int(amount)
    return dict(out)


def provider_names(session, ids) -> dict[str, str]:
    ids = set(ids)
    if not ids:
        return {}
    return dict(session.execute(select(Provider.id, Provider.name).where(Provider.id.in_(ids))).all())


def quota_view(balance: ledger.Balance, chart_id: str = "quota") -> dict[str, Any]:
    used = balance.granted + balance.reserved
    return {
        "balance": balance,
        "used_pct": (used * 100 // balance.cap) if balance.cap else 0,
        "chart": Markup(charts.quota_bar(
            cap=balance.cap, granted=balance.granted, reserved=balance.reserved, chart_id=chart_id,
            title=_("%(year)s 年补贴额度", year=balance.year),
            desc=_("上限 %(cap)s：已发放 %(granted)s，预留 %(reserved)s，剩余 %(remaining)s。",
                   cap=money(balance.cap), granted=money(balance.granted),
                   reserved=money(balance.reserved), remaining=money(balance.remaining)),
            labels={"granted": _("已发放"), "reserved": _("预留"), "remaining": _("剩余")},
            money=money)),
    }


def claim_explanations(c: Claim) -> list[str]:
    out = [explain(d, c.period) for d in c.discrepancies or []]
    for item in c.items:
        out += [explain(d, c.period) for d in item.discrepancies or []]
    return out


@bp.get("/enterprises/<uscc>")
@login_required("enterprise", "finance")
def enterprise(uscc: str):
    uscc = canonical_uscc(uscc)
    ent = _enterprise_or_404(uscc)
    year = _year_arg()
    s = db_session()
    balance = ledger.read_quota(s, policy(), uscc, year)
    # Several programmes (docs/POLICY.md#programmes): each one's quota and their sums.
    programme_rows = None
    if programmes().others:
        covering = ledger.programme_quotas(s, programmes().all, uscc, year) or []
        programme_rows = {"rows": covering, "combined": ledger.Combined.of(covering)}
    spend = monthly_spend(s, uscc, year)
    names = provider_names(s, spend)
    periods = year_periods(year)
    chart = Markup(charts.spend_bars(
        periods=periods, period_labels=[format_date(date(year, m, 1), "MMM") for m in range(1, 13)],
        series=spend,
        names=names, chart_id="spend", title=_("%(year)s 年按服务商的月度算力支出", year=year),
        desc=_("每月计量的算力费用（不含作废记录），按服务商分色堆叠。全年合计 %(total)s。",
               total=money(sum(sum(v.values()) for v in spend.values()))),
        empty=_("本年度还没有计量记录"), money=money))
    spend_table = [(p, [spend[p].get(per, 0) for per in periods], sum(spend[p].values()))
                   for p in sorted(spend, key=lambda p: names.get(p, p))]
    claims = list(s.scalars(select(Claim).where(Claim.enterprise_uscc == uscc)
                            .order_by(Claim.id.desc()).limit(100)))
    holds = redemptions_svc.holding(s, uscc, year)
    claim_names = provider_names(s, {i.provider_id for c in claims for i in c.items}
                                 | {r.provider_id for r in holds})
    return render_template(
        "console/enterprise.html", ent=ent, year=year, quota=quota_view(balance), chart=chart,
        programme_quotas=programme_rows,
        periods=periods, spend_table=spend_table, names=names, claims=claims,
        claim_names=claim_names, explanations={c.id: claim_explanations(c) for c in claims}, holds=holds,
        filings=list(s.scalars(select(ModelFiling).where(ModelFiling.enterprise_uscc == uscc)
                               .order_by(ModelFiling.obtained_on))),
        active="enterprise")


def parse_yuan(text: str) -> int:
    """'1,234.5' or '¥1234.50' → 123450 fen, exactly; ValueError otherwise."""
    cleaned = (text or "").replace(",", "").replace("¥", "").replace("，", "").strip()
    if not _YUAN.fullmatch(cleaned):
        raise ValueError(text)
    try:
        return int(Decimal(cleaned) * 100)
    except InvalidOperation:
        raise ValueError(text) from None


SERVICE_ERRORS = {
    "period_not_closed": _l("只能为已经结束的月份申领。"),
    "unknown_provider": _l("申领中的服务商未登记。"),
    "duplicate_item": _l("同一张发票在申领中出现了两次。"),
    "unknown_enterprise": _l("企业未登记。"),
    "claim_not_reconciled": _l("该申领尚未经过月度对账，暂不能批准。"),
    "claim_decided": _l("该申领已经作出决定，不能再更改。"),
    "reason_required": _l("批准有差异的申领时，必须写明理由。"),
    "period_closed": _l("该月已关闭，数字为最终结果。"),
    "claims_undecided": _l("该月还有尚未决定的申领，批准或驳回后才能关闭。"),
    "period_not_over": _l("只能关闭已经结束的月份。"),
    "conflict": _l("与已登记的内容不一致：同一编号或同一天已有不同的记录。"),
    "redemptions_undecided": _l("该月还有有差异的核销尚未决定，批准或驳回后才能关闭。"),
    "quota_exhausted": _l("该企业本年度的补贴额度已经用完。"),
    "enterprise_not_eligible": _l("该企业不符合申领条件。"),
    "outside_policy_window": _l("该月份不在政策有效期内。"),
    "settlement_mode_disabled": _l("现行政策未开启这种结算方式。"),
    "reference_conflict": _l("该业务参考号已用于另一笔核销。"),
    "redemption_not_authorized": _l("只有已冻结的核销可以确认。"),
    "redemption_expired": _l("冻结已经过期，不能再确认。"),
    "invoice_already_redeemed": _l("该发票已经被另一笔核销使用。"),
    "amount_above_list": _l("确认金额不能高于冻结时的标价金额。"),
    "settlement_empty": _l("该结算批次中没有可以结算的核销。"),
}


def service_error(exc: DomainError) -> str:
    """The service's refusal in the reader's language (its English message as a fallback)."""
    text = SERVICE_ERRORS.get(exc.code)
    return str(text) if text else exc.message


@bp.route("/enterprises/<uscc>/claims/new", methods=["GET", "POST"])
@login_required("enterprise", "finance")
def new_claim(uscc: str):
    uscc = canonical_uscc(uscc)
    ent = _enterprise_or_404(uscc)
    s = db_session()
    closed = current_period(tz=policy().timezone)
    periods = list(s.scalars(
        select(ProviderInvoice.period).where(ProviderInvoice.enterprise_uscc == uscc,
                                             ProviderInvoice.period < closed)
        .distinct().order_by(ProviderInvoice.period.desc())))
    period = request.values.get("period") or (periods[0] if periods else None)
    if period is not None and period not in periods:
        period = None
    invoices = list(s.scalars(
        select(ProviderInvoice).where(ProviderInvoice.enterprise_uscc == uscc,
                                      ProviderInvoice.period == period)
        .order_by(ProviderInvoice.provider_id, ProviderInvoice.invoice_no))) if period else []
    held: dict[tuple[str, str], int] = {}
    if invoices:
        for claim_id, pid, no in s.execute(
                select(Claim.id, ClaimItem.provider_id, ClaimItem.invoice_no)
                .join(ClaimItem, ClaimItem.claim_id == Claim.id)
                .where(Claim.enterprise_uscc == uscc, Claim.period == period,
                       Claim.status != ClaimStatus.REJECTED)):
            held.setdefault((pid, no), claim_id)
    names = provider_names(s, {i.provider_id for i in invoices})
    end_reads()
    errors: list[str] = []
    form = request.form
    if request.method == "POST" and period:
        items, others = [], []
        chosen = set(form.getlist("invoice"))
        for inv in invoices:
            if f"inv_{inv.id}" not in chosen:
                continue
            try:
                paid = parse_yuan(form.get(f"paid_inv_{inv.id}", ""))
                if paid <= 0:
                    raise ValueError
            except ValueError:
                errors.append(_("发票 %(no)s 的实付金额应为大于 0 的金额，最多两位小数。", no=inv.invoice_no))
                continue
            items.append({"provider_id": inv.provider_id, "invoice_no": inv.invoice_no,
                          "amount_paid": paid})
        if not chosen:
            errors.append(_("请至少选择一张已支付的发票。"))
        for n in range(3):
            program = form.get(f"other_program_{n}", "").strip()
            amount = form.get(f"other_amount_{n}", "").strip()
            if not program and not amount:
                continue
            try:
                fen = parse_yuan(amount)
                if not program or len(program) > 200:
                    raise ValueError
            except ValueError:
                errors.append(_("其他补贴第 %(n)s 行需要项目名称和金额。", n=n + 1))
                continue
            others.append({"program": program, "amount": fen})
        if not errors:
            try:
                with database().session() as ws, ws.begin():
                    claim = claims_svc.submit_claim(ws, uscc, period, items, others,
                                                    current_app.extensions["voucher.claim_limits"],
                                                    policy=policy())
                    claim_id = claim.id
            except DomainError as exc:
                errors.append(service_error(exc))
            else:
                public_id = f"clm_{claim_id}"
                flash(_("申领 %(id)s 已提交，将在该月对账后核验。", id=public_id), "success")
                return redirect(url_for(".claim", claim_id=public_id))
    return render_template("console/claim_new.html", ent=ent, periods=periods, period=period,
                           invoices=invoices, held=held, names=names, errors=errors, form=form,
                           active="new_claim"), (422 if errors else 200)


# --- claims -----------------------------------------------------------------------------------

def _claim_or_404(session, claim_id: str, *, lock: bool = False) -> Claim:
    try:
        cid = claims_svc.parse_claim_id(claim_id)
    except ValueError:
        abort(404)
    claim = (claims_svc.lock_claim(session, policy(), cid) if lock
             else claims_svc.get_claim(session, cid))
    user = current_user()
    if claim is None or (user.role == "enterprise" and claim.enterprise_uscc != user.subject):
        abort(404)
    return claim


@bp.get("/claims/<claim_id>")
@login_required("enterprise", "finance")
def claim(claim_id: str):
    s = db_session()
    c = _claim_or_404(s, claim_id)
    year = period_year(c.period)
    balance = ledger.read_quota(s, policy(), c.enterprise_uscc, year)
    movements = list(s.scalars(select(LedgerPosting).where(LedgerPosting.claim_id == c.id,
                                                           LedgerPosting.amount > 0)
                               .order_by(LedgerPosting.id)))
    adjustments = list(s.scalars(select(ClaimAdjustment).where(ClaimAdjustment.claim_id == c.id)
                                 .order_by(ClaimAdjustment.id)))
    return render_template(
        "console/claim.html", c=c, ent=s.get(Enterprise, c.enterprise_uscc),
        names=provider_names(s, {i.provider_id for i in c.items}),
        quota=quota_view(balance) if balance else None, movements=movements,
        adjustments=adjustments, claim_level=[(d, explain(d, c.period)) for d in c.discrepancies or []],
        other_total=sum(int(o.get("amount", 0)) for o in c.other_subsidies or []),
        decidable=c.status in RECONCILED,
        active="reconciliation" if current_user().role == "finance" else "enterprise")


def _decide(claim_id: str, action: str):
    reason = request.form.get("reason", "").strip()
    try:
        if len(reason) > 2000:
            raise FormError(_("理由最多 2000 字。"))
        end_reads()
        with database().session() as ws, ws.begin():
            c = _claim_or_404(ws, claim_id, lock=True)
            if action == "approve":
                amount = c.payable
                claims_svc.approve(ws, policy(), c, reason or None, programmes().others)
            else:
                if not reason:
                    raise FormError(_("驳回申领时，必须写明理由。"))
                amount = c.payable
                claims_svc.reject(ws, policy(), c, reason, programmes().others)
    except FormError as exc:
        flash(str(exc), "error")
    except DomainError as exc:
        flash(service_error(exc), "error")
    else:
        if action == "approve":
            flash(_("申领 %(id)s 已批准：%(amount)s 由预留转为已发放。", id=claim_id, amount=money(amount)),
                  "success")
        else:
            flash(_("申领 %(id)s 已驳回：预留的 %(amount)s 已释放。", id=claim_id, amount=money(amount)),
                  "success")
    return redirect(url_for(".claim", claim_id=claim_id))


@bp.post("/claims/<claim_id>/approve")
@login_required("finance")
def approve_claim(claim_id: str):
    return _decide(claim_id, "approve")


@bp.post("/claims/<claim_id>/reject")
@login_required("finance")
def reject_claim(claim_id: str):
    return _decide(claim_id, "reject")


# --- provider ---------------------------------------------------------------------------------

def _provider_or_404(provider_id: str) -> Provider:
    return _own_or_404(Provider, "provider", provider_id)


def _provider_page(p: Provider, summary=None, upload_errors=None, status: int = 200):
    s = db_session()
    invoices = list(s.scalars(select(ProviderInvoice).where(ProviderInvoice.provider_id == p.id)
                              .order_by(ProviderInvoice.period.desc(), ProviderInvoice.id.desc())
                              .limit(100)))
    enterprises = {}
    if invoices:
        enterprises = dict(s.execute(select(Enterprise.uscc, Enterprise.name).where(
            Enterprise.uscc.in_({i.enterprise_uscc for i in invoices}))).all())
    redemptions = list(s.scalars(select(Redemption).where(Redemption.provider_id == p.id)
                                 .order_by(Redemption.id.desc()).limit(100)))
    if redemptions:
        enterprises |= dict(s.execute(select(Enterprise.uscc, Enterprise.name).where(
            Enterprise.uscc.in_({r.enterprise_uscc for r in redemptions}))).all())
    batches = list(s.scalars(select(SettlementBatch).where(SettlementBatch.provider_id == p.id)
                             .order_by(SettlementBatch.quarter.desc()).limit(20)))
    return render_template("console/provider.html", p=p, batches=recent_batches(s, p.id, 20),
                           invoices=invoices, enterprises=enterprises, summary=summary,
                           upload_errors=upload_errors or [], formats=UPLOAD_FORMATS,
                           redemptions=redemptions, settlements=batches,
                           redeeming=SettlementMode.REDEMPTION in policy().settlement_modes,
                           period=previous_period(datetime.now(UTC), policy().timezone),
                           now=datetime.now(UTC), active="provider"), status


@bp.get("/providers/<provider_id>")
@login_required("provider", "finance")
def provider(provider_id: str):
    return _provider_page(_provider_or_404(provider_id))


def provider_config(provider_id: str, fmt: str):
    """The provider's adapter file, as `voucher import` reads it (tenants, prices, columns)."""
    from adapters.config import ConfigError, load_provider_config

    path = current_app.config["VOUCHER_SETTINGS"].providers_dir / f"{provider_id}.toml"
    if not path.exists():
        raise FormError(_("还没有 %(id)s 的适配器配置文件（config/providers/%(id)s.toml），"
                          "它把租户对应到统一社会信用代码并给出价格。请联系财政局配置。", id=provider_id))
    try:
        return load_provider_config(path)
    except ConfigError as exc:
        raise FormError(_("适配器配置文件有误：%(error)s", error=str(exc))) from None


@bp.post("/providers/<provider_id>/upload")
@login_required("provider")
def upload(provider_id: str):
    from adapters.pull import ingest_extracted, parse_file

    p = _provider_or_404(provider_id)
    fmt = request.form.get("format", "")
    file = request.files.get("file")
    try:
        if fmt not in UPLOAD_FORMATS:
            raise FormError(_("请选择文件格式（CSV 或 JSONL）。"))
        if file is None or not file.filename:
            raise FormError(_("请选择要上传的文件。"))
        config = provider_config(provider_id, fmt)
        try:
            # Bytes, so the adapter file's `encoding` (say, GBK) decodes them as it does on import.
            extracted = parse_file(fmt, file.read(), config)
        except ValueError as exc:  # ExportError, ConfigError: the file as a whole is unreadable
            raise FormError(_("无法读取文件：%(error)s", error=str(exc))) from None
    except FormError as exc:
        return _provider_page(p, upload_errors=[str(exc)], status=422)
    end_reads()
    summary = ingest_extracted(database(), provider_id, extracted, source="console",
                               label=file.filename[:200], require_contracts=policy().require_contracts)
    return _provider_page(p, summary=summary)


# --- provider: redemptions (核销, docs/API.md#redemptions) ----------------------------------------

def _form_yuan(name: str, label: str) -> int:
    try:
        return parse_yuan(request.form.get(name, ""))
    except ValueError:
        raise FormError(_("%(field)s应为以元为单位的金额，例如 1234.50。", field=label)) from None


def _flash_outcome(work: Callable[[], str]) -> None:
    """Run a form's `work` (it parses, then writes in a transaction of its own) and flash its
    success message, or the refusal in the reader's language."""
    try:
        message = work()
    except FormError as exc:
        flash(str(exc), "error")
    except DomainError as exc:
        flash(service_error(exc), "error")
    else:
        flash(message, "success")


@bp.post("/providers/<provider_id>/redemptions")
@login_required("provider")
def authorize_redemption(provider_id: str):
    """The same service as POST /v1/redemptions: the subsidy held on the enterprise's quota."""
    _provider_or_404(provider_id)

    def work() -> str:
        uscc = canonical_uscc(request.form.get("enterprise_uscc", ""))
        reference = request.form.get("reference", "").strip()
        period = request.form.get("period", "").strip()
        if not reference or len(reference) > 100:
            raise FormError(_("请填写业务参考号（最多 100 个字符）。"))
        try:
            parse_period(period)
        except ValueError:
            raise FormError(_("月份格式应为 YYYY-MM。")) from None
        list_amount = _form_yuan("list_amount", _("标价金额"))
        if list_amount <= 0:
            raise FormError(_("标价金额应大于零。"))
        end_reads()
        with database().session() as ws, ws.begin():
            r, _created = redemptions_svc.authorize(ws, policy(), provider_id, uscc, reference, list_amount,
                                                    period)
            rid = f"rdm_{r.id}"
            return _("核销 %(id)s 已冻结补贴 %(amount)s。", id=rid, amount=money(r.subsidy))

    _flash_outcome(work)
    return redirect(url_for(".provider", provider_id=provider_id))


@bp.post("/redemptions/<redemption_id>/capture")
@login_required("provider")
def capture_redemption(redemption_id: str):
    """The same service as POST /v1/redemptions/{id}/capture: the full-amount invoice."""
    user = current_user()
    try:
        rid = redemptions_svc.parse_redemption_id(redemption_id)
    except ValueError:
        abort(404)
    found = db_session().get(Redemption, rid)
    if found is None or found.provider_id != user.subject:
        abort(404)

    def work() -> str:
        invoice_no = request.form.get("invoice_no", "").strip()
        if not invoice_no or len(invoice_no) > 64:
            raise FormError(_("请填写发票号（最多 64 个字符）。"))
        amount = _form_yuan("amount", _("发票金额"))
        end_reads()
        with database().session() as ws, ws.begin():
            r = redemptions_svc.lock_redemption(ws, policy(), rid)
            assert r is not None
            redemptions_svc.capture(ws, policy(), r, invoice_no, amount)
            return _("核销 %(id)s 已确认：补贴 %(amount)s。", id=redemption_id, amount=money(r.subsidy))

    _flash_outcome(work)
    return redirect(url_for(".provider", provider_id=user.subject))


# --- finance: settlements ---------------------------------------------------------------------

@bp.get("/settlements")
@login_required("finance")
def settlements_page():
    s = db_session()
    batches = list(s.scalars(select(SettlementBatch).order_by(SettlementBatch.quarter.desc(),
                                                              SettlementBatch.provider_id).limit(200)))
    return render_template("console/settlements.html", batches=batches,
                           names=provider_names(s, {b.provider_id for b in batches}), active="settlements")


@bp.post("/settlements/<settlement_id>/approve")
@login_required("finance")
def approve_settlement(settlement_id: str):
    """The same service as POST /v1/settlements/{id}/approve: every hold posted to granted."""
    try:
        sid = settlements.parse_settlement_id(settlement_id)
    except ValueError:
        abort(404)
    if db_session().get(SettlementBatch, sid) is None:
        abort(404)

    def work() -> str:
        end_reads()
        with database().session() as ws, ws.begin():
            batch = settlements.approve(ws, policy(), sid, current_user().key_id)
            return _("结算批次 %(id)s 已批准：%(amount)s 转为已发放。", id=settlement_id,
                     amount=money(batch.subsidy))

    _flash_outcome(work)
    return redirect(url_for(".settlements_page"))


# --- finance: reconciliation ------------------------------------------------------------------

@bp.get("/reconciliations")
@login_required("finance")
def reconciliations():
    s = db_session()
    runs = list(s.scalars(select(Reconciliation).order_by(Reconciliation.period.desc()).limit(36)))
    wanted = request.args.get("period")
    if wanted:
        try:
            parse_period(wanted)
        except ValueError:
            abort(400)
        return redirect(url_for(".reconciliation", period=wanted))
    if runs and request.args.get("list") is None:
        return redirect(url_for(".reconciliation", period=runs[0].period))
    return render_template("console/reconciliations.html", runs=runs,
                           suggested=previous_period(datetime.now(UTC), policy().timezone), active="reconciliation")


@bp.post("/reconciliations")
@login_required("finance")
def run_reconciliation():
    period = request.form.get("period", "")
    try:
        parse_period(period)
    except ValueError:
        flash(_("月份格式应为 YYYY-MM。"), "error")
        return redirect(url_for(".reconciliations", list=1))
    end_reads()
    try:
        with database().session() as ws, ws.begin():
            run, _first = reconcile(ws, policy(), period, others=programmes().others)
    except DomainError as exc:  # a closed period (docs/API.md#period-close)
        flash(service_error(exc), "error")
        return redirect(url_for(".reconciliation", period=period))
    current_app.extensions["voucher.events"].emit(Event.RECONCILED, run)
    flash(_("%(period)s 对账已完成（第 %(n)s 次运行）。", period=period, n=run.runs), "success")
    return redirect(url_for(".reconciliation", period=period))


def claim_codes(c: Claim) -> set[str]:
    return {d["code"] for d in c.discrepancies or []} | {
        d["code"] for i in c.items for d in i.discrepancies or []}


def _period_or_404(period: str) -> None:
    """A month in the URL is `YYYY-MM`; anything else is no such page."""
    try:
        parse_period(period)
    except ValueError:
        abort(404)


@bp.get("/reconciliations/<period>")
@login_required("finance")
def reconciliation(period: str):
    _period_or_404(period)
    s = db_session()
    run = s.get(Reconciliation, period)
    claims = list(s.scalars(select(Claim).where(Claim.period == period).order_by(Claim.id)))
    usccs = {c.enterprise_uscc for c in claims}
    ents = {e.uscc: e for e in s.scalars(select(Enterprise).where(Enterprise.uscc.in_(usccs)))} \
        if usccs else {}
    names = provider_names(s, {i.provider_id for c in claims for i in c.items})
    options = {
        "code": sorted({code for c in claims for code in claim_codes(c)}),
        "county": sorted({e.county for e in ents.values() if e.county}),
        "provider": sorted(names, key=lambda p: names.get(p, p)),
        "status": [st for st in CLAIM_STATUS if any(c.status == st for c in claims)],
    }
    chosen = {k: request.args.get(k, "") for k in options}
    shown = []
    for c in claims:
        if chosen["code"] and chosen["code"] not in claim_codes(c):
            continue
        ent = ents.get(c.enterprise_uscc)
        if chosen["county"] and (ent is None or ent.county != chosen["county"]):
            continue
        if chosen["provider"] and chosen["provider"] not in {i.provider_id for i in c.items}:
            continue
        if chosen["status"] and c.status != chosen["status"]:
            continue
        shown.append(c)
    # Discrepancies first: flagged claims, the most codes first, then the rest by id.
    shown.sort(key=lambda c: (c.status != ClaimStatus.FLAGGED, -len(claim_codes(c)), c.id))
    runs = list(s.scalars(select(Reconciliation.period).order_by(Reconciliation.period.desc()).limit(36)))
    return render_template(
        "console/reconciliation.html", period=period, run=run, summary=(run.summary if run else None),
        claims=shown, total=len(claims), ents=ents, names=names, options=options, chosen=chosen,
        codes_of=claim_codes, explanations={c.id: claim_explanations(c) for c in shown},
        adjustments=adjustments_of(s, period), runs=runs, state=lifecycle.period_view(s, period),
        active="reconciliation")


@bp.post("/reconciliations/<period>/close")
@login_required("finance")
def close_period(period: str):
    """The same rule as POST /v1/reconciliations/{period}/close (billing.lifecycle)."""
    _period_or_404(period)
    end_reads()
    try:
        with database().session() as ws, ws.begin():
            lifecycle.close_period(ws, period)
    except DomainError as exc:
        flash(service_error(exc), "error")
    else:
        flash(_("%(period)s 已关闭：数字不再变化。", period=period), "success")
    return redirect(url_for(".reconciliation", period=period))


@bp.get("/reconciliations/<period>/report.<fmt>")
@login_required("finance")
def report(period: str, fmt: str):
    """The same files as GET /v1/reconciliations/{period}/report.csv|.xlsx (billing.reports)."""
    from billing.reports import FORMATS, filename, write_report

    if fmt not in FORMATS:
        abort(404)
    _period_or_404(period)
    s = db_session()
    if s.get(Reconciliation, period) is None:
        abort(404)
    out = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    write_report(s, period, fmt, out)
    s.rollback()
    out.seek(0)
    return send_file(out, mimetype=FORMATS[fmt], as_attachment=True,
                     download_name=filename(period, fmt), max_age=0)


# --- finance: quotas, registry, jobs ----------------------------------------------------------

def quota_table(session, year: int) -> list[dict[str, Any]]:
    """Every enterprise's quota for `year` (three queries), the most used first."""
    ents = list(session.scalars(select(Enterprise).order_by(Enterprise.uscc)))
    balances = ledger.quotas(session, policy(), year)  # the one quota read (billing/ledger.py)
    out = []
    for e in ents:
        b = balances[e.uscc]
        cap, basis, reserved, granted = b.cap, b.cap_basis, b.reserved, b.granted
        used = reserved + granted
        share = used / cap if cap else 0.0
        out.append({"ent": e, "cap": cap, "cap_basis": basis, "reserved": reserved,
                    "granted": granted, "remaining": b.remaining, "used": used,
                    "pct": used * 100 // cap if cap else 0, "near": share >= NEAR_CAP,
                    "meter": Markup(charts.meter(used=used, cap=cap, warn_at=NEAR_CAP,
                                                 label=_("已用 %(pct)s%%", pct=used * 100 // cap if cap else 0)))})
    out.sort(key=lambda r: (-(r["used"] * 10**6 // r["cap"] if r["cap"] else 0), r["ent"].uscc))
    return out


@bp.get("/quotas")
@login_required("finance")
def quotas():
    year = _year_arg()
    rows = quota_table(db_session(), year)
    totals = {k: sum(r[k] for r in rows) for k in ("cap", "granted", "reserved", "remaining")}
    return render_template("console/quotas.html", year=year, rows=rows, totals=totals,
                           near=sum(1 for r in rows if r["near"]), near_pct=int(NEAR_CAP * 100),
                           active="quotas")


def cumulative_use(daily: dict[date, int], year: int, today: date) -> list[int]:
    """Cumulative net use per day of `year` from 1 January up to `today` (or 31 December for a
    past year; later postings of the year count on its last day)."""
    first, last = date(year, 1, 1), date(year, 12, 31)
    end = min(max(today, first), last)
    per_day = [0] * ((end - first).days + 1)
    for day, fen in daily.items():
        per_day[min(max((day - first).days, 0), len(per_day) - 1)] += fen
    out, total = [], 0
    for fen in per_day:
        total += fen
        out.append(total)
    return out


@bp.get("/budget")
@login_required("finance")
def budget():
    """The same figures as GET /v1/budget (billing.budget.figures) and the burn-down chart."""
    year = _year_arg()
    s = db_session()
    today = parse_day(day_of(utcnow()))  # Asia/Shanghai, as the API
    fig = budget_svc.figures(s, policy(), year, today)
    daily = budget_svc.daily_use(s, year, datetime(year - 1, 1, 1, tzinfo=UTC))
    used = cumulative_use(daily, year, today)
    days = (date(year, 12, 31) - date(year, 1, 1)).days + 1
    forecast_day = None
    if fig.forecast_exhausted_on is not None:
        forecast_day = (fig.forecast_exhausted_on - date(year, 1, 1)).days
    chart = Markup(charts.burn_down(
        days=days, used=used, annual=fig.annual, forecast_day=forecast_day,
        ticks=[((date(year, m, 1) - date(year, 1, 1)).days, format_date(date(year, m, 1), "MMM"))
               for m in range(1, 13)],
        chart_id="burn", title=_("%(year)s 年预算使用", year=year),
        desc=_("每日累计使用（预留 + 已发放）%(used)s，年度预算 %(annual)s，预计用尽日期 %(on)s。",
               used=money(fig.reserved + fig.granted),
               annual=money(fig.annual) if fig.annual is not None else _("不限"),
               on=local_date(fig.forecast_exhausted_on)),
        labels={"used": _("累计使用"), "annual": _("年度预算"), "forecast": _("预测")}, money=money))
    return render_template("console/budget.html", year=year, fig=fig, chart=chart, active="budget")


@bp.get("/registry")
@login_required("finance")
def registry():
    s = db_session()
    providers = list(s.scalars(select(Provider).order_by(Provider.id)))
    enterprises = list(s.scalars(select(Enterprise).order_by(Enterprise.county, Enterprise.uscc)))
    filings: dict[str, list[ModelFiling]] = defaultdict(list)
    for f in s.scalars(select(ModelFiling).order_by(ModelFiling.obtained_on)):
        filings[f.enterprise_uscc].append(f)
    return render_template("console/registry.html", providers=providers, enterprises=enterprises,
                           filings=filings, active="registry")


@bp.get("/jobs")
@login_required("finance")
def jobs():
    from kernel.jobruns import recent_runs

    return render_template("console/jobs.html", runs=recent_runs(db_session(), limit=100),
                           active="jobs")
