"""Per-provider adapter configuration (docs/API.md#adapters; keys in docs/ADAPTERS.md): one TOML file per provider.

Secrets are named by environment variable (`token_env`), never stored in the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from adapters.registry import TYPES
from config.settings import secret
from kernel.uscc import canonical_uscc, valid_uscc

Fen = int
ADAPTER_TYPES = TYPES  # the registry's list (adapters/registry.py)
QUANTITY_STEP = Decimal("0.000001")


class ConfigError(ValueError):
    """A provider file is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class ProviderConfig:
    provider_id: str
    type: str
    cluster: str
    settings: dict[str, Any]
    tenants: dict[str, str]
    prices: dict[str, Fen]
    timezone: str = "UTC"
    path: Path | None = field(default=None, compare=False)

    def uscc_for(self, tenant: str) -> str | None:
        return self.tenants.get(tenant)

    def price_for(self, resource: str) -> Fen | None:
        """The most specific price key wins: `gpu.a100` over `gpu`."""
        parts = resource.split(".")
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if key in self.prices:
                return self.prices[key]
        return None

    def secret(self, key: str = "token_env") -> str | None:
        return secret(self.settings.get(key))

    def bearer_token(self, key: str = "token_env") -> str | None:
        """The credential named by `[adapter] token_env` (None if the file names none);
        ConfigError if it names a variable that is not set."""
        if not self.settings.get(key):
            return None
        token = self.secret(key)
        if not token:
            raise ConfigError(f"{self.path or self.provider_id}: [adapter.{key}] "
                              f"variable {self.settings[key]} is not set")
        return token


def round_quantity(q: Decimal) -> Decimal:
    return q.quantize(QUANTITY_STEP, rounding=ROUND_HALF_UP)


def amount_for(quantity: Decimal, price: Fen) -> Fen:
    """`round_half_up(quantity × price)` fen, from the already-rounded quantity (docs/API.md#adapters)."""
    return int((quantity * price).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def load_provider_config(path: Path | str) -> ProviderConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: [{key}] {why}")

    adapter = data.get("adapter")
    if not isinstance(adapter, dict):
        raise bad("adapter", "missing table")
    kind = adapter.get("type")
    if kind not in ADAPTER_TYPES:
        raise bad("adapter.type", f"must be one of {', '.join(ADAPTER_TYPES)}")
    cluster = adapter.get("cluster", path.stem)
    if not isinstance(cluster, str) or not cluster:
        raise bad("adapter.cluster", "must be a non-empty string")
    tz = adapter.get("timezone", "UTC")
    tenants = data.get("tenants", {})
    if not isinstance(tenants, dict):
        raise bad("tenants", "must be a table")
    for name, code in tenants.items():
        if valid_uscc(code) is None:
            raise bad(f"tenants.{name}", f"{code!r} is not a valid USCC")
    prices = data.get("prices", {})
    if not isinstance(prices, dict):
        raise bad("prices", "must be a table")
    for key, value in prices.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"prices.{key}", "must be a non-negative integer (fen per unit)")
    settings = {k: v for k, v in adapter.items() if k not in ("type", "cluster", "timezone")}
    return ProviderConfig(
        provider_id=data.get("provider_id", path.stem),
        type=kind,
        cluster=cluster,
        settings=settings,
        tenants={k: canonical_uscc(v) for k, v in tenants.items()},  # docs/API.md#uscc
        prices=dict(prices),
        timezone=tz,
        path=path,
    )


def load_all(directory: Path | str) -> dict[str, ProviderConfig]:
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    configs = [load_provider_config(p) for p in sorted(directory.glob("*.toml"))]
    return {c.provider_id: c for c in configs}
