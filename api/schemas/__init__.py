"""One pydantic model per resource: it validates the request, serialises the answer and is the
OpenAPI component (api.openapi). A module per area; everything is importable from here."""

from api.schemas.base import (
    ErrorBody,
    ErrorDetail,
    Page,
    Resource,
    error_of,
    list_of,
    loc_to_param,
    normalise_uscc,
)
from api.schemas.billing import (
    Adjustment,
    Claim,
    ClaimIn,
    ClaimItem,
    ClaimItemIn,
    DecisionIn,
    Discrepancy,
    InvoiceIn,
    OtherSubsidy,
    OtherSubsidyIn,
    ProviderInvoice,
    Quota,
    Reconciliation,
    ReconciliationIn,
    RejectIn,
)
from api.schemas.registry import (
    Enterprise,
    EnterpriseIn,
    EnterprisePatch,
    FilingIn,
    ModelFiling,
    Provider,
    ProviderIn,
    ProviderPatch,
)
from api.schemas.service import ApiKey, ApiKeyIn, AuditActor, AuditEvent, Health, JobRun, Ready
from api.schemas.usage import RecordResult, UsageBatch, UsageBatchIn, UsageRecord, VoidIn

__all__ = [
    "Adjustment", "ApiKey", "ApiKeyIn", "AuditActor", "AuditEvent", "Claim", "ClaimIn", "ClaimItem",
    "ClaimItemIn", "DecisionIn", "Discrepancy", "Enterprise", "EnterpriseIn", "EnterprisePatch",
    "ErrorBody", "ErrorDetail", "FilingIn", "Health", "InvoiceIn", "JobRun", "ModelFiling",
    "OtherSubsidy", "OtherSubsidyIn", "Page", "Provider", "ProviderIn", "ProviderInvoice",
    "ProviderPatch", "Quota", "Ready", "Reconciliation", "ReconciliationIn", "RecordResult",
    "RejectIn", "Resource", "UsageBatch", "UsageBatchIn", "UsageRecord", "VoidIn", "error_of",
    "list_of", "loc_to_param", "normalise_uscc",
]
