"""The service's words: every status, code and event name, and the one label table.

Each set of values is an `enum.StrEnum` whose members are the very strings the API and the
database carry (`ClaimStatus.FLAGGED == "flagged"`), so replacing a literal by a member
changes nothing on the wire or on disk (docs/API.md lists the values).

LABELS is the one label table (docs/ARCHITECTURE.md#rule-homes): Chinese text per value,
which is also the message id of the English translation in the console's Babel catalogue
(`console/translations/en/LC_MESSAGES/messages.po`; `python -m console.i18n` extracts the
`N_(...)` strings below). The console shows them through Flask-Babel (console/words.py),
the reports print the Chinese beside the code, and the CLI translates through the same
catalogue (console/i18n.py `translate`). Nothing here imports a web framework.
"""

from __future__ import annotations

from enum import StrEnum


def N_(text: str) -> str:
    """Marks a label for the catalogue's extraction; returns it unchanged (Chinese)."""
    return text


class ClaimStatus(StrEnum):
    SUBMITTED = "submitted"
    VERIFIED = "verified"
    FLAGGED = "flagged"
    APPROVED = "approved"
    REJECTED = "rejected"
    WAITLISTED = "waitlisted"  # the programme's budget cannot fund it yet (docs/API.md#budget)


CLAIM_STATUSES: tuple[ClaimStatus, ...] = tuple(ClaimStatus)
OPEN = (ClaimStatus.SUBMITTED, ClaimStatus.VERIFIED, ClaimStatus.FLAGGED,
        ClaimStatus.WAITLISTED)  # reconciliation may change them
RECONCILED = (ClaimStatus.VERIFIED, ClaimStatus.FLAGGED)  # hold a reservation; awaiting a decision


class RedemptionStatus(StrEnum):
    """A redemption's status (docs/API.md#redemptions): a hold on the quota that is captured,
    voided or expires; a captured one is reconciled (flagged when a check fails), then settled
    with the provider in a quarterly batch, or rejected by finance."""

    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    FLAGGED = "flagged"
    VOIDED = "voided"
    EXPIRED = "expired"
    REJECTED = "rejected"
    SETTLED = "settled"


REDEMPTION_STATUSES: tuple[RedemptionStatus, ...] = tuple(RedemptionStatus)
HOLDING = (RedemptionStatus.AUTHORIZED, RedemptionStatus.CAPTURED, RedemptionStatus.FLAGGED)  # hold a reservation


class SettlementStatus(StrEnum):
    """A quarterly settlement batch's status (docs/API.md#settlements)."""

    PENDING = "pending"
    APPROVED = "approved"


class Stacking(StrEnum):
    """How a programme combines with the others on the same spend (docs/POLICY.md#programmes)."""

    HIGHEST_NOT_BOTH = "highest_not_both"  # 就高不重复
    STACK = "stack"  # 叠加, up to the programme's stack_limit of the spend
    EXCLUSIVE = "exclusive"  # 排他


class SettlementMode(StrEnum):
    """How the subsidy reaches the enterprise (docs/POLICY.md#settlement-modes)."""

    REIMBURSEMENT = "reimbursement"
    REDEMPTION = "redemption"


class PeriodState(StrEnum):
    """A billing period's state (kernel/billing_periods.py): closed periods' figures are final."""

    OPEN = "open"
    CLOSED = "closed"


class Discrepancy(StrEnum):
    """Discrepancy codes of a claim or an item (docs/API.md#discrepancy-codes)."""

    INVOICE_NOT_FOUND = "invoice_not_found"
    INVOICE_AMOUNT_MISMATCH = "invoice_amount_mismatch"
    INVOICE_CLAIMED_TWICE = "invoice_claimed_twice"
    USAGE_INVOICE_MISMATCH = "usage_invoice_mismatch"
    OUTSIDE_POLICY_WINDOW = "outside_policy_window"
    ENTERPRISE_NOT_ELIGIBLE = "enterprise_not_eligible"
    PROVIDER_NOT_LISTED = "provider_not_listed"
    CAP_REACHED = "cap_reached"
    USAGE_VOIDED_AFTER_APPROVAL = "usage_voided_after_approval"
    INVOICE_ALREADY_REDEEMED = "invoice_already_redeemed"  # a claim (or a 2nd redemption) names a redeemed invoice
    INVOICE_ALREADY_CLAIMED = "invoice_already_claimed"  # a redemption names an invoice a claim held first
    BUDGET_EXHAUSTED = "budget_exhausted"
    RISK_REVIEW = "risk_review"  # the risk score is above the policy's review threshold


class RiskSignal(StrEnum):
    """Risk signals of a claim (docs/API.md#risk); billing/risk.py computes them."""

    PRICE_ABOVE_CATALOGUE = "price_above_catalogue"
    NO_CONTRACT = "no_contract"
    RELATED_PARTY = "related_party"
    INELIGIBLE_RESOURCE = "ineligible_resource"
    USAGE_SPIKE = "usage_spike"


class CapBasis(StrEnum):
    STANDARD = "standard"
    NEW_MODEL_FILING = "new_model_filing"
    OUTSIDE_POLICY_WINDOW = "outside_policy_window"  # a year with no day in the window: cap 0


class AdjustmentKind(StrEnum):
    CLAWBACK = "clawback"


class UsageStatus(StrEnum):
    """A usage record's status."""

    ACTIVE = "active"
    VOID = "void"


class RecordOutcome(StrEnum):
    """What a push did with one record (a batch's per-record status)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class RecordCode(StrEnum):
    """Per-record rejection codes of the ingestion path (docs/API.md#record-codes)."""

    INVALID_USCC = "invalid_uscc"
    UNKNOWN_ENTERPRISE = "unknown_enterprise"
    MISSING_TIMEZONE = "missing_timezone"
    INVALID_TIME_RANGE = "invalid_time_range"
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_AMOUNT = "invalid_amount"
    UNSUPPORTED_UNIT = "unsupported_unit"
    UNSUPPORTED_CURRENCY = "unsupported_currency"
    CONFLICT = "conflict"
    INVALID_FIELD = "invalid_field"
    PERIOD_CLOSED = "period_closed"
    NO_CONTRACT = "no_contract"  # policy require_contracts: no confirmed contract covers the usage


class SkipReason(StrEnum):
    """Why a row of an export or a pull produced no record (adapters.base.Skipped.reason)."""

    UNMAPPED_TENANT = "unmapped_tenant"
    NO_PRICE = "no_price"
    BAD_ROW = "bad_row"
    DUPLICATE_ROW = "duplicate_row"
    NOT_ENDED = "not_ended"
    STEP_ROW = "step_row"


class Source(StrEnum):
    """Where an ingestion batch came from."""

    API = "api"
    IMPORT = "import"
    PULL = "pull"
    CONSOLE = "console"


class Role(StrEnum):
    FINANCE = "finance"
    PROVIDER = "provider"
    ENTERPRISE = "enterprise"


class ProviderKind(StrEnum):
    INTELLIGENT_COMPUTING = "intelligent_computing"
    SUPERCOMPUTING = "supercomputing"


class JobStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Event(StrEnum):
    """In-process event names (kernel/events.py)."""

    BATCH_INGESTED = "batch_ingested"
    RECORD_VOIDED = "record_voided"
    RECONCILED = "reconciled"
    JOB_FINISHED = "job_finished"
    JOB_SKIPPED = "job_skipped"


class AuditAction(StrEnum):
    """Actions of the audit chain (kernel/audit.py) written by billing and metering."""

    CLAIM_SUBMITTED = "claim.submitted"
    CLAIM_APPROVED = "claim.approved"
    CLAIM_REJECTED = "claim.rejected"
    CLAIM_CLAWED_BACK = "claim.clawed_back"
    RECONCILIATION_RUN = "reconciliation.run"
    PERIOD_CLOSED = "period.closed"
    STATEMENT_ISSUED = "statement.issued"
    PROVIDER_INVOICE_SUBMITTED = "provider_invoice.submitted"
    USAGE_RECORD_VOIDED = "usage_record.voided"
    REDEMPTION_AUTHORIZED = "redemption.authorized"
    REDEMPTION_CAPTURED = "redemption.captured"
    REDEMPTION_VOIDED = "redemption.voided"
    REDEMPTION_EXPIRED = "redemption.expired"
    REDEMPTION_APPROVED = "redemption.approved"
    REDEMPTION_REJECTED = "redemption.rejected"
    SETTLEMENT_CREATED = "settlement.created"
    SETTLEMENT_APPROVED = "settlement.approved"
    CLAIM_WAITLISTED = "claim.waitlisted"
    QUOTA_THRESHOLD_REACHED = "quota.threshold_reached"
    BUDGET_THRESHOLD_REACHED = "budget.threshold_reached"


class EventType(StrEnum):
    """Types of the events of the outbox (kernel/outbox.py; docs/API.md#events), the names a
    webhook endpoint subscribes to. Each is derived from an audit action (EVENT_OF_ACTION) or,
    for a claim's reconciliation outcome, from the reconciliation's audit entry."""

    CLAIM_VERIFIED = "claim.verified"
    CLAIM_FLAGGED = "claim.flagged"
    CLAIM_APPROVED = "claim.approved"
    CLAIM_REJECTED = "claim.rejected"
    CLAIM_CLAWED_BACK = "claim.clawed_back"
    RECONCILIATION_COMPLETED = "reconciliation.completed"
    PERIOD_CLOSED = "period.closed"
    STATEMENT_ISSUED = "statement.issued"
    REDEMPTION_AUTHORIZED = "redemption.authorized"
    REDEMPTION_CAPTURED = "redemption.captured"
    REDEMPTION_VOIDED = "redemption.voided"
    REDEMPTION_EXPIRED = "redemption.expired"
    SETTLEMENT_APPROVED = "settlement.approved"
    CLAIM_WAITLISTED = "claim.waitlisted"
    QUOTA_THRESHOLD_REACHED = "quota.threshold_reached"
    BUDGET_THRESHOLD_REACHED = "budget.threshold_reached"


# The audit action whose entry raises each event (one event per entry; docs/API.md#events).
# "period.closed" is the close action of the period lifecycle (issue 14), named here by its
# string so this table does not wait for it.
EVENT_OF_ACTION: dict[str, EventType] = {
    AuditAction.CLAIM_APPROVED: EventType.CLAIM_APPROVED,
    AuditAction.CLAIM_REJECTED: EventType.CLAIM_REJECTED,
    AuditAction.CLAIM_CLAWED_BACK: EventType.CLAIM_CLAWED_BACK,
    AuditAction.RECONCILIATION_RUN: EventType.RECONCILIATION_COMPLETED,
    AuditAction.STATEMENT_ISSUED: EventType.STATEMENT_ISSUED,
    "period.closed": EventType.PERIOD_CLOSED,
    AuditAction.REDEMPTION_AUTHORIZED: EventType.REDEMPTION_AUTHORIZED,
    AuditAction.REDEMPTION_CAPTURED: EventType.REDEMPTION_CAPTURED,
    AuditAction.REDEMPTION_VOIDED: EventType.REDEMPTION_VOIDED,
    AuditAction.REDEMPTION_EXPIRED: EventType.REDEMPTION_EXPIRED,
    AuditAction.SETTLEMENT_APPROVED: EventType.SETTLEMENT_APPROVED,
    AuditAction.CLAIM_WAITLISTED: EventType.CLAIM_WAITLISTED,
    AuditAction.QUOTA_THRESHOLD_REACHED: EventType.QUOTA_THRESHOLD_REACHED,
    AuditAction.BUDGET_THRESHOLD_REACHED: EventType.BUDGET_THRESHOLD_REACHED,
}


class DeliveryStatus(StrEnum):
    """A webhook delivery's status (docs/API.md#webhooks)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EndpointStatus(StrEnum):
    """A webhook endpoint's status: disabled after three days of failed deliveries."""

    ENABLED = "enabled"
    DISABLED = "disabled"


# --- the one label table: Chinese text (= the catalogue's message id) per value --------------

LABELS: dict[type[StrEnum], dict[str, str]] = {
    ClaimStatus: {
        ClaimStatus.SUBMITTED: N_("已提交"),
        ClaimStatus.VERIFIED: N_("已核验"),
        ClaimStatus.FLAGGED: N_("有差异"),
        ClaimStatus.APPROVED: N_("已批准"),
        ClaimStatus.REJECTED: N_("已驳回"),
        ClaimStatus.WAITLISTED: N_("候补（预算不足）"),
    },
    Discrepancy: {
        Discrepancy.INVOICE_NOT_FOUND: N_("发票不存在"),
        Discrepancy.INVOICE_AMOUNT_MISMATCH: N_("付款与发票不符"),
        Discrepancy.INVOICE_CLAIMED_TWICE: N_("发票重复申领"),
        Discrepancy.USAGE_INVOICE_MISMATCH: N_("计量与发票不符"),
        Discrepancy.OUTSIDE_POLICY_WINDOW: N_("不在政策期内"),
        Discrepancy.ENTERPRISE_NOT_ELIGIBLE: N_("企业不符合条件"),
        Discrepancy.PROVIDER_NOT_LISTED: N_("服务商不在目录"),
        Discrepancy.CAP_REACHED: N_("已达年度上限"),
        Discrepancy.USAGE_VOIDED_AFTER_APPROVAL: N_("批准后用量作废，已追回差额"),
        Discrepancy.BUDGET_EXHAUSTED: N_("年度预算不足"),
        Discrepancy.INVOICE_ALREADY_REDEEMED: N_("发票已核销"),
        Discrepancy.INVOICE_ALREADY_CLAIMED: N_("发票已申领"),
        Discrepancy.RISK_REVIEW: N_("风险评分超过复核阈值"),
    },
    RedemptionStatus: {
        RedemptionStatus.AUTHORIZED: N_("已冻结"),
        RedemptionStatus.CAPTURED: N_("已核销"),
        RedemptionStatus.FLAGGED: N_("有差异"),
        RedemptionStatus.VOIDED: N_("已撤销"),
        RedemptionStatus.EXPIRED: N_("已过期"),
        RedemptionStatus.REJECTED: N_("已驳回"),
        RedemptionStatus.SETTLED: N_("已结算"),
    },
    SettlementStatus: {SettlementStatus.PENDING: N_("待批准"), SettlementStatus.APPROVED: N_("已批准")},
    SettlementMode: {SettlementMode.REIMBURSEMENT: N_("事后申领"), SettlementMode.REDEMPTION: N_("服务商核销"),
    },
    Stacking: {Stacking.HIGHEST_NOT_BOTH: N_("就高不重复"), Stacking.STACK: N_("叠加"),
               Stacking.EXCLUSIVE: N_("排他")},
    RiskSignal: {
        RiskSignal.PRICE_ABOVE_CATALOGUE: N_("单价高于目录价"),
        RiskSignal.NO_CONTRACT: N_("无已确认合同"),
        RiskSignal.RELATED_PARTY: N_("关联方交易"),
        RiskSignal.INELIGIBLE_RESOURCE: N_("非补贴资源"),
        RiskSignal.USAGE_SPIKE: N_("用量激增"),
    },
    CapBasis: {CapBasis.STANDARD: N_("标准上限"), CapBasis.NEW_MODEL_FILING: N_("新取得大模型备案的上限"),
               CapBasis.OUTSIDE_POLICY_WINDOW: N_("政策期外年度（上限为0）")},
    AdjustmentKind: {AdjustmentKind.CLAWBACK: N_("追回")},
    Role: {Role.FINANCE: N_("财政局"), Role.PROVIDER: N_("算力服务商"), Role.ENTERPRISE: N_("企业")},
    ProviderKind: {ProviderKind.INTELLIGENT_COMPUTING: N_("智算中心"),
                   ProviderKind.SUPERCOMPUTING: N_("超算中心")},
    JobStatus: {JobStatus.RUNNING: N_("运行中"), JobStatus.SUCCEEDED: N_("成功"), JobStatus.FAILED: N_("失败")},
    Source: {Source.API: N_("接口推送"), Source.IMPORT: N_("命令行导入"), Source.PULL: N_("自动拉取"),
             Source.CONSOLE: N_("控制台上传")},
    RecordCode: {
        RecordCode.INVALID_USCC: N_("统一社会信用代码无效"),
        RecordCode.UNKNOWN_ENTERPRISE: N_("企业未登记"),
        RecordCode.MISSING_TIMEZONE: N_("时间缺少时区"),
        RecordCode.INVALID_TIME_RANGE: N_("时间范围无效"),
        RecordCode.INVALID_QUANTITY: N_("数量无效"),
        RecordCode.INVALID_AMOUNT: N_("金额无效"),
        RecordCode.UNSUPPORTED_UNIT: N_("不支持的计量单位"),
        RecordCode.UNSUPPORTED_CURRENCY: N_("不支持的币种"),
        RecordCode.CONFLICT: N_("同一记录号内容不同"),
        RecordCode.INVALID_FIELD: N_("字段无效"),
        RecordCode.PERIOD_CLOSED: N_("账期已关闭"),
        RecordCode.NO_CONTRACT: N_("无已确认合同"),
    },
    PeriodState: {PeriodState.OPEN: N_("未关闭"), PeriodState.CLOSED: N_("已关闭")},
    SkipReason: {
        SkipReason.UNMAPPED_TENANT: N_("租户未对应到企业"),
        SkipReason.NO_PRICE: N_("没有价格"),
        SkipReason.BAD_ROW: N_("格式错误的行"),
        SkipReason.DUPLICATE_ROW: N_("文件内重复的行"),
        SkipReason.NOT_ENDED: N_("作业尚未结束"),
        SkipReason.STEP_ROW: N_("作业步骤行"),
    },
}

# The short kind names a statement's line reads (智算 / 超算), beside the catalogue's full names.
PROVIDER_KIND_SHORT = {ProviderKind.INTELLIGENT_COMPUTING: "智算", ProviderKind.SUPERCOMPUTING: "超算"}


def label(kind: type[StrEnum], value: str | None, default: str | None = None) -> str:
    """The Chinese label of `value` in the table of `kind`; `default` (else the value) when none."""
    if value is None:
        return default if default is not None else "—"
    text = LABELS[kind].get(value)
    if text is not None:
        return text
    return default if default is not None else value
