"""The console's words for the service's codes: statuses, roles, discrepancy explanations."""

from __future__ import annotations

from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from kernel.money import yuan

ROLES = {"finance": _l("财政局"), "provider": _l("算力服务商"), "enterprise": _l("企业")}

CLAIM_STATUS = {
    "submitted": _l("已提交"),
    "verified": _l("已核验"),
    "flagged": _l("有差异"),
    "approved": _l("已批准"),
    "rejected": _l("已驳回"),
}

CAP_BASIS = {"standard": _l("标准上限"), "new_model_filing": _l("新取得大模型备案的上限")}

PROVIDER_KIND = {"intelligent_computing": _l("智算中心"), "supercomputing": _l("超算中心")}

JOB_STATUS = {"running": _l("运行中"), "succeeded": _l("成功"), "failed": _l("失败")}

SOURCES = {"api": _l("接口推送"), "import": _l("命令行导入"), "pull": _l("自动拉取"),
           "console": _l("控制台上传")}

CODES = {
    "invoice_not_found": _l("发票不存在"),
    "invoice_amount_mismatch": _l("付款与发票不符"),
    "invoice_claimed_twice": _l("发票重复申领"),
    "usage_invoice_mismatch": _l("计量与发票不符"),
    "outside_policy_window": _l("不在政策期内"),
    "enterprise_not_eligible": _l("企业不符合条件"),
    "provider_not_listed": _l("服务商不在目录"),
    "cap_reached": _l("已达年度上限"),
}

# Per-record rejection codes of the ingestion path (docs/API.md#record-codes).
RECORD_CODES = {
    "invalid_uscc": _l("统一社会信用代码无效"),
    "unknown_enterprise": _l("企业未登记"),
    "missing_timezone": _l("时间缺少时区"),
    "invalid_time_range": _l("时间范围无效"),
    "invalid_quantity": _l("数量无效"),
    "invalid_amount": _l("金额无效"),
    "unsupported_unit": _l("不支持的计量单位"),
    "unsupported_currency": _l("不支持的币种"),
    "conflict": _l("同一记录号内容不同"),
    "invalid_field": _l("字段无效"),
}

# Why a row of an export or a pull produced no record (adapters.base.Skipped.reason).
SKIP_REASONS = {
    "unmapped_tenant": _l("租户未对应到企业"),
    "no_price": _l("没有价格"),
    "bad_row": _l("格式错误的行"),
    "duplicate_row": _l("文件内重复的行"),
    "not_ended": _l("作业尚未结束"),
    "step_row": _l("作业步骤行"),
}


def word(table: dict[str, Any], key: str | None) -> str:
    """The translated word for a code, or the code itself when there is none."""
    if key is None:
        return "—"
    value = table.get(key)
    return str(value) if value is not None else key


def money(fen: int | None) -> str:
    """¥1,234,567.89 in both languages (integer arithmetic, no floats)."""
    return "—" if fen is None else yuan(int(fen), "¥")


def explain(d: dict[str, Any], period: str | None = None) -> str:
    """One discrepancy in words, with the figures that produced it."""
    code = d.get("code")
    if code == "invoice_not_found":
        return _("没有找到服务商 %(provider)s 开给本企业、属于本月的发票 %(invoice)s，该项不计补贴。",
                 provider=d.get("provider_id", "?"), invoice=d.get("invoice_no", "?"))
    if code == "invoice_amount_mismatch":
        return _("实付 %(paid)s，发票金额 %(invoiced)s，相差 %(diff)s，超过容差 %(tol)s。",
                 paid=money(d.get("amount_paid")), invoiced=money(d.get("invoice_amount")),
                 diff=money(abs(int(d.get("difference", 0)))), tol=money(d.get("tolerance")))
    if code == "invoice_claimed_twice":
        return _("发票 %(invoice)s 已在申领 %(first)s 中使用，一张发票只能申领一次。",
                 invoice=d.get("invoice_no", "?"), first=d.get("first_claim_id", "?"))
    if code == "usage_invoice_mismatch":
        return _("本月计量用量 %(metered)s，发票金额 %(invoiced)s，相差 %(diff)s，超过容差 %(tol)s。",
                 metered=money(d.get("metered")), invoiced=money(d.get("invoice_amount")),
                 diff=money(abs(int(d.get("difference", 0)))), tol=money(d.get("tolerance")))
    if code == "outside_policy_window":
        return _("%(period)s 不在政策有效期 %(start)s 至 %(end)s 内，整笔申领不计补贴。",
                 period=d.get("period", period or "?"), start=d.get("effective_from", "?"),
                 end=d.get("effective_until", "?"))
    if code == "enterprise_not_eligible":
        return _("该企业目前不符合本政策的申领条件，整笔申领不计补贴。")
    if code == "provider_not_listed":
        return _("服务商 %(provider)s 在 %(period)s 不在算力服务商目录中（列入 %(start)s，移出 %(end)s），整笔申领不计补贴。",
                 provider=d.get("provider_id", "?"), period=period or "?",
                 start=d.get("listed_from") or "—", end=d.get("listed_until") or "—")
    if code == "cap_reached":
        return _("按政策应补 %(before)s，但年度剩余额度只有 %(remaining)s（上限 %(cap)s），核减为 %(payable)s。",
                 before=money(d.get("payable_before_cap")), remaining=money(d.get("remaining")),
                 cap=money(d.get("cap")), payable=money(d.get("payable")))
    return str(d.get("message") or code or "?")
