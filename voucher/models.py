"""Every mapped table, imported in one place so Alembic and tests see the whole schema."""

from metering.models import Enterprise, ModelFiling, Provider, UsageRecord  # noqa: F401
from voucher.db import Base  # noqa: F401
from voucher.keys import ApiKey  # noqa: F401
