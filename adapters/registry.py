"""The single list of usage-source adapter types (docs/ARCHITECTURE.md#add-adapter).

Provider-file validation (`adapters.config`), `voucher import --format`, pulls (`voucher pull`,
the pull job: `adapters.pull`) and the console upload all read this table; no other module
names a type. A type can be imported from a file (`parse`), pulled (`pull`), and offered in
the console's upload form (`upload`, files a provider exports by hand).

Back-ends are named as "module:attribute" and imported on first use, so reading the table
costs nothing (the Slurm and Prometheus clients load only when used).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.base import Adapter, Extracted
    from adapters.config import ProviderConfig


@dataclass(frozen=True)
class AdapterType:
    name: str
    parse: str | None = None  # "module:function" (text or bytes, config) -> Extracted
    pull: str | None = None  # "module:Class" (config) -> Adapter
    upload: bool = False  # offered in the console upload form
    json_body: bool = False  # the file is one JSON document, parsed before `parse` sees it


ADAPTERS: dict[str, AdapterType] = {a.name: a for a in (
    AdapterType("sacct", parse="adapters.slurm:parse_sacct", pull="adapters.slurm:SacctAdapter"),
    AdapterType("slurmrestd", parse="adapters.slurm:parse_slurmrestd",
                pull="adapters.slurm:SlurmrestdAdapter", json_body=True),
    AdapterType("prometheus", pull="adapters.prometheus:PrometheusAdapter"),
    AdapterType("csv", parse="adapters.exports:parse_csv", upload=True),
    AdapterType("jsonl", parse="adapters.exports:parse_jsonl", upload=True),
)}

TYPES: tuple[str, ...] = tuple(ADAPTERS)  # what a provider file's [adapter] type may be
IMPORT_FORMATS: tuple[str, ...] = tuple(n for n, a in ADAPTERS.items() if a.parse)
PULL_TYPES: tuple[str, ...] = tuple(n for n, a in ADAPTERS.items() if a.pull)
UPLOAD_FORMATS: tuple[str, ...] = tuple(n for n, a in ADAPTERS.items() if a.upload)


def _load(target: str) -> Callable[..., Any]:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def parse_file(fmt: str, text: str | bytes, config: ProviderConfig) -> Extracted:
    """Parse an exported file of format `fmt` (one of IMPORT_FORMATS) into records."""
    kind = ADAPTERS.get(fmt)
    if kind is None or kind.parse is None:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(IMPORT_FORMATS)}")
    return _load(kind.parse)(json.loads(text) if kind.json_body else text, config)


def make_adapter(config: ProviderConfig) -> Adapter:
    """The pull adapter for a provider file whose type can pull (one of PULL_TYPES)."""
    kind = ADAPTERS.get(config.type)
    if kind is None or kind.pull is None:
        raise ValueError(f"{config.provider_id}: adapter type {config.type!r} is import-only")
    return _load(kind.pull)(config)
