"""Every mapped table, imported in one place so Alembic and tests see the whole schema."""

from api.buckets import RateBucket  # noqa: F401
from api.idempotency import IdempotencyKey  # noqa: F401
from billing.budget import ProgrammeBudget  # noqa: F401
from billing.models import (  # noqa: F401
    Claim,
    ClaimAdjustment,
    ClaimItem,
    LedgerPosting,
    ProviderInvoice,
    QuotaBalance,
    Reconciliation,
)
from billing.redemption_models import Redemption, SettlementBatch  # noqa: F401
from billing.statements import Statement  # noqa: F401
from console.sessions import ConsoleSession  # noqa: F401
from kernel.audit import AuditEvent  # noqa: F401
from kernel.billing_periods import BillingPeriod  # noqa: F401
from kernel.db import Base  # noqa: F401
from kernel.jobruns import JobRun  # noqa: F401
from kernel.keys import ApiKey  # noqa: F401
from kernel.outbox import OutboxEvent  # noqa: F401
from kernel.webhooks import WebhookDelivery, WebhookEndpoint  # noqa: F401
from metering.batches import IngestBatch  # noqa: F401
from metering.contracts import Contract, PriceEntry, RelatedParty  # noqa: F401
from metering.models import Enterprise, ModelFiling, Provider, UsageRecord  # noqa: F401
