"""The console's words for the service's codes: the label table of kernel/vocabulary.py through
Flask-Babel, and the discrepancy explanations."""

from __future__ import annotations

from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from kernel.money import yuan
from kernel.vocabulary import (
    LABELS,
    N_,
    CapBasis,
    ClaimStatus,
    Discrepancy,
    JobStatus,
    ProviderKind,
    RecordCode,
    RedemptionStatus,
    RiskSignal,
    Role,
    SettlementStatus,
    SkipReason,
    Source,
    Stacking,
)


def _translated(kind) -> dict[str, Any]:
    """The label table of `kind` (kernel/vocabulary.py), translated lazily for the page's language."""
    return {value: _l(text) for value, text in LABELS[kind].items()}


ROLES = _translated(Role)
CLAIM_STATUS = _translated(ClaimStatus)
CAP_BASIS = _translated(CapBasis)
PROVIDER_KIND = _translated(ProviderKind)
JOB_STATUS = _translated(JobStatus)
SOURCES = _translated(Source)
CODES = _translated(Discrepancy)
RECORD_CODES = _translated(RecordCode)  # docs/API.md#record-codes
RISK_SIGNALS = _translated(RiskSignal)  # docs/API.md#risk
SKIP_REASONS = _translated(SkipReason)  # adapters.base.Skipped.reason
REDEMPTION_STATUS = _translated(RedemptionStatus)
SETTLEMENT_STATUS = _translated(SettlementStatus)
STACKING = _translated(Stacking)  # docs/POLICY.md#programmes


def word(table: dict[str, Any], key: str | None) -> str:
    """The translated word for a code, or the code itself when there is none."""
    if key is None:
        return "—"
    value = table.get(key)
    return str(value) if value is not None else key


def money(fen: int | None) -> str:
    """¥1,234,567.89 in both languages (integer arithmetic, no floats)."""
    return "—" if fen is None else yuan(int(fen), "¥")


def _mismatch(figure: str):
    """The figures of invoice_amount_mismatch / usage_invoice_mismatch: `figure` against the invoice."""
    def args(d: dict[str, Any], period: str | None) -> dict[str, str]:
        return {figure: money(d.get("amount_paid" if figure == "paid" else "metered")),
                "invoiced": money(d.get("invoice_amount")),
                "diff": money(abs(int(d.get("difference", 0)))), "tol": money(d.get("tolerance"))}
    return args


# code -> (message id with %(name)s placeholders, the placeholders' values from the discrepancy)
_EXPLAIN = {
    Discrepancy.INVOICE_NOT_FOUND: (
        N_("没有找到服务商 %(provider)s 开给本企业、属于本月的发票 %(invoice)s，该项不计补贴。"),
        lambda d, period: {"provider": d.get("provider_id", "?"), "invoice": d.get("invoice_no", "?")}),
    Discrepancy.INVOICE_AMOUNT_MISMATCH: (
        N_("实付 %(paid)s，发票金额 %(invoiced)s，相差 %(diff)s，超过容差 %(tol)s。"), _mismatch("paid")),
    Discrepancy.INVOICE_CLAIMED_TWICE: (
        N_("发票 %(invoice)s 已在申领 %(first)s 中使用，一张发票只能申领一次。"),
        lambda d, period: {"invoice": d.get("invoice_no", "?"), "first": d.get("first_claim_id", "?")}),
    Discrepancy.USAGE_INVOICE_MISMATCH: (
        N_("本月计量用量 %(metered)s，发票金额 %(invoiced)s，相差 %(diff)s，超过容差 %(tol)s。"),
        _mismatch("metered")),
    Discrepancy.OUTSIDE_POLICY_WINDOW: (
        N_("%(period)s 不在政策有效期 %(start)s 至 %(end)s 内，整笔申领不计补贴。"),
        lambda d, period: {"period": d.get("period", period or "?"), "start": d.get("effective_from", "?"),
                           "end": d.get("effective_until", "?")}),
    Discrepancy.ENTERPRISE_NOT_ELIGIBLE: (
        N_("该企业目前不符合本政策的申领条件，整笔申领不计补贴。"), lambda d, period: {}),
    Discrepancy.PROVIDER_NOT_LISTED: (
        N_("服务商 %(provider)s 在 %(period)s 不在算力服务商目录中（列入 %(start)s，移出 %(end)s），该服务商的发票不计补贴。"),
        lambda d, period: {"provider": d.get("provider_id", "?"), "period": period or "?",
                           "start": d.get("listed_from") or "—", "end": d.get("listed_until") or "—"}),
    Discrepancy.CAP_REACHED: (
        N_("按政策应补 %(before)s，但年度剩余额度只有 %(remaining)s（上限 %(cap)s），核减为 %(payable)s。"),
        lambda d, period: {"before": money(d.get("payable_before_cap")), "remaining": money(d.get("remaining")),
                           "cap": money(d.get("cap")), "payable": money(d.get("payable"))}),
    Discrepancy.USAGE_VOIDED_AFTER_APPROVAL: (
        N_("批准时发放 %(granted)s；批准后部分用量作废，现只支持 %(payable)s，已追回 %(clawed)s。"),
        lambda d, period: {"granted": money(d.get("granted_at_approval")), "payable": money(d.get("payable")),
                           "clawed": money(d.get("clawed_back"))}),
}


def explain(d: dict[str, Any], period: str | None = None) -> str:
    """One discrepancy in words, with the figures that produced it."""
    code = d.get("code")
    entry = _EXPLAIN.get(code)
    if entry is None:
        return str(d.get("message") or code or "?")
    text, args = entry
    return _(text, **args(d, period))
