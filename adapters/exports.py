"""CSV and JSONL usage exports from providers → records in the push API's schema (docs/API.md#usage-records, docs/API.md#adapters).

A provider file maps the export's columns (CSV header names, or JSONL keys) to record fields:

    [adapter]
    type = "csv"                      # or "jsonl"
    columns = {record_id="id", tenant="customer", resource="sku", quantity="qty",
               unit="unit", started_at="start", ended_at="end", amount="fee_fen"}
    time_format = "%Y-%m-%d %H:%M:%S" # optional strptime format; default ISO 8601 or epoch seconds
    timezone = "Asia/Shanghai"        # times without an offset are read in this zone
    delimiter = ","                   # CSV only
    encoding = "utf-8-sig"            # for bytes input; a leading BOM is always dropped
    amount_unit = "fen"               # or "yuan" (12.50 → 1250 fen; fractions of a fen are bad rows)
    resources = {"A100-80G" = "gpu.a100"}   # optional: export SKU → resource

Fields: `record_id`, `resource`, `quantity`, `started_at`, `ended_at` are required, and one of
`tenant` (mapped to a USCC through `[tenants]`) or `enterprise_uscc` (taken as is; when both are
mapped a non-empty USCC cell wins). Optional: `unit` (default from the resource's first part:
gpu → gpu_hour, cpu → core_hour, node → node_hour), `amount` (integer fen; absent or empty →
`round_half_up(quantity × price)` from `[prices]`, most specific key first), `currency` (CNY
only). Fields not named in `columns` are looked up under their own name (so an export written
in the push API's field names needs no mapping); a column named explicitly must exist.

Records keep the export's `record_id` as given, without the cluster prefix the pull adapters
add: an export's ids are the provider's own, and ingestion is scoped to the provider already.
Quantities are rounded half-up to 6 decimals; times are emitted in UTC (RFC 3339, `+00:00`).
`metadata` holds `{"tenant": ...}` when the tenant was mapped.

Every non-blank row becomes a record or a `Skipped` carrying its 1-based line number (the CSV
header is line 1; a quoted field spanning lines counts from its first line): `bad_row` (the
detail names the column and what is wrong), `unmapped_tenant`, `no_price`, `duplicate_row`
(the same record_id with the same content again; different content is a `bad_row`). Problems
with the file as a whole (a named column missing from the header, undecodable bytes) raise
`ExportError`; problems with `[adapter]` raise `ConfigError`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from adapters.base import Extracted, Skipped
from adapters.config import ConfigError, ProviderConfig, amount_for, round_quantity
from kernel.uscc import canonical_uscc, uscc_is_valid

FIELDS = (
    "record_id",
    "tenant",
    "enterprise_uscc",
    "resource",
    "quantity",
    "unit",
    "started_at",
    "ended_at",
    "amount",
    "currency",
)
REQUIRED = ("record_id", "resource", "quantity", "started_at", "ended_at")
UNITS = ("gpu_hour", "core_hour", "node_hour")
UNIT_BY_RESOURCE = {"gpu": "gpu_hour", "cpu": "core_hour", "node": "node_hour"}
_RESOURCE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_BOM = "\ufeff"

Source = str | bytes | IO[str] | IO[bytes]


class ExportError(ValueError):
    """The export as a whole cannot be read (not a row problem): the message says why."""


@dataclass(frozen=True)
class ExportFormat:
    """The `[adapter]` settings of a CSV/JSONL provider, checked once."""

    columns: dict[str, str]  # record field → export column, every field
    explicit: frozenset[str]  # fields whose column was named in the provider file
    time_format: str | None
    zone: ZoneInfo
    delimiter: str
    encoding: str
    amount_unit: str
    resources: dict[str, str]


def export_format(config: ProviderConfig) -> ExportFormat:
    """Read and check the export settings of `config` (`ConfigError` names the bad key)."""
    s = config.settings
    where = config.path or config.provider_id

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: [adapter.{key}] {why}")

    given = s.get("columns", {})
    if not isinstance(given, Mapping):
        raise bad("columns", "must be a table record field → column name")
    for key, column in given.items():
        if key not in FIELDS:
            raise bad(f"columns.{key}", f"unknown field; fields are {', '.join(FIELDS)}")
        if not isinstance(column, str) or not column.strip():
            raise bad(f"columns.{key}", "must be a column name")
    columns = {f: f for f in FIELDS} | {k: v.strip() for k, v in given.items()}
    time_format = s.get("time_format")
    if time_format is not None and (not isinstance(time_format, str) or not time_format):
        raise bad("time_format", "must be a strptime format such as '%Y-%m-%d %H:%M:%S'")
    try:
        zone = ZoneInfo(config.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise bad("timezone", f"unknown time zone {config.timezone!r}") from None
    delimiter = s.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise bad("delimiter", "must be one character")
    encoding = s.get("encoding", "utf-8-sig")
    try:
        codecs.lookup(str(encoding))
    except LookupError:
        raise bad("encoding", f"unknown encoding {encoding!r}") from None
    amount_unit = s.get("amount_unit", "fen")
    if amount_unit not in ("fen", "yuan"):
        raise bad("amount_unit", "must be 'fen' or 'yuan'")
    resources = s.get("resources", {})
    if not isinstance(resources, Mapping) or not all(
        isinstance(v, str) and _RESOURCE.fullmatch(v) for v in resources.values()
    ):
        raise bad("resources", "must be a table export SKU → resource such as 'gpu.a100'")
    return ExportFormat(
        columns=columns,
        explicit=frozenset(given),
        time_format=time_format,
        zone=zone,
        delimiter=delimiter,
        encoding=str(encoding),
        amount_unit=amount_unit,
        resources=dict(resources),
    )


# --- one row ----------------------------------------------------------------------------------


class _BadField(ValueError):
    def __init__(self, field: str, why: str) -> None:
        super().__init__(why)
        self.field = field
        self.why = why


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        raise TypeError("is true/false, not a value")
    if isinstance(value, (str, int, Decimal)):
        return str(value).strip()
    raise TypeError(f"is a {type(value).__name__}, not a value")


def _quantity(value: Any) -> Decimal:
    text = _text(value)
    if not text:
        raise ValueError("is empty")
    try:
        quantity = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not quantity.is_finite() or quantity < 0:
        raise ValueError(f"{text!r} must be a finite number ≥ 0")
    return round_quantity(quantity)


def _time(value: Any, fmt: ExportFormat) -> datetime:
    text = _text(value)
    if not text:
        raise ValueError("is empty")
    if fmt.time_format:
        try:
            moment = datetime.strptime(text, fmt.time_format)
        except ValueError:
            raise ValueError(f"{text!r} does not match time_format {fmt.time_format!r}") from None
    elif text.isdigit():  # epoch seconds
        return datetime.fromtimestamp(int(text), UTC)
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 time (set time_format)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=fmt.zone)
    return moment.astimezone(UTC)


def _amount(value: Any, fmt: ExportFormat) -> int | None:
    text = _text(value)
    if not text:
        return None
    if fmt.amount_unit == "fen":
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a whole number of fen")
        return int(text)
    try:
        fen = Decimal(text) * 100
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount in yuan") from None
    if not fen.is_finite() or fen < 0 or fen != fen.to_integral_value():
        raise ValueError(f"{text!r} is not a non-negative amount in whole fen")
    return int(fen)


def _quantity_str(quantity: Decimal) -> str:
    text = format(quantity, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def row_to_record(
    values: Mapping[str, Any], config: ProviderConfig, fmt: ExportFormat, line: int | None
) -> dict[str, Any] | Skipped:
    """One export row, keyed by record field (absent field = not in the export), → record."""

    def get(field: str) -> Any:
        return values.get(field)

    def convert(field: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(get(field), *args)
        except (ValueError, TypeError) as exc:
            raise _BadField(field, str(exc)) from None

    try:
        for field in REQUIRED:
            if field not in values:
                raise _BadField(field, "is missing")
        record_id = convert("record_id", _text)
        if not record_id or any(ord(c) < 32 for c in record_id):
            raise _BadField("record_id", "must be a non-empty printable string")
        resource_text = convert("resource", _text)
        resource = fmt.resources.get(resource_text, resource_text.lower())
        if not _RESOURCE.fullmatch(resource):
            raise _BadField(
                "resource", f"{resource_text!r} is not a resource such as gpu.a100 or cpu"
            )
        quantity = convert("quantity", _quantity)
        unit = convert("unit", _text).lower()
        if not unit:
            unit = UNIT_BY_RESOURCE.get(resource.split(".")[0], "")
            if not unit:
                raise _BadField("unit", f"is empty and cannot be told from resource {resource!r}")
        elif unit not in UNITS:
            raise _BadField("unit", f"{unit!r} is not one of {', '.join(UNITS)}")
        started_at = convert("started_at", _time, fmt)
        ended_at = convert("ended_at", _time, fmt)
        if ended_at < started_at:
            raise _BadField("ended_at", "is before started_at")
        amount = convert("amount", _amount, fmt)
        currency = convert("currency", _text).upper() or "CNY"
        if currency != "CNY":
            raise _BadField("currency", f"{currency!r} is not CNY")
        tenant = convert("tenant", _text)
        uscc = canonical_uscc(convert("enterprise_uscc", _text))
        if uscc and not uscc_is_valid(uscc):
            raise _BadField("enterprise_uscc", f"{uscc!r} is not a valid USCC (GB 32100-2015)")
        if not uscc and not tenant:
            which = (
                "tenant"
                if "tenant" in values or "enterprise_uscc" not in values
                else "enterprise_uscc"
            )
            raise _BadField(which, "is empty")
    except _BadField as bad:
        column = fmt.columns[bad.field]
        return Skipped("bad_row", f"column {column!r} ({bad.field}): {bad.why}", line)

    metadata: dict[str, Any] | None = None
    if quantity == 0:  # v2: a record's quantity is > 0 (docs/API.md#record-codes)
        return Skipped("zero_quantity", f"record_id {record_id!r}: quantity rounds to 0", line,
                       tenant or None)
    if not uscc:
        mapped = config.uscc_for(tenant)
        if mapped is None:
            return Skipped("unmapped_tenant", f"tenant {tenant!r}", line, tenant)
        uscc, metadata = mapped, {"tenant": tenant}
    if amount is None:
        price = config.price_for(resource)
        if price is None:
            return Skipped(
                "no_price", f"no price for {resource!r} and no amount", line, tenant or None
            )
        amount = amount_for(quantity, price)
    record: dict[str, Any] = {
        "record_id": record_id,
        "enterprise_uscc": uscc,
        "resource": resource,
        "unit": unit,
        "quantity": _quantity_str(quantity),
        "started_at": started_at.isoformat(),
        "ended_at": ended_at.isoformat(),
        "amount": amount,
        "currency": currency,
    }
    if metadata:
        record["metadata"] = metadata
    return record


def _collect(items: Iterable[dict[str, Any] | Skipped], lines: list[int | None]) -> Extracted:
    """Records and skips, with a record_id seen again reported on its own line."""
    out = Extracted()
    first: dict[str, tuple[int | None, dict[str, Any]]] = {}
    for item, line in zip(items, lines, strict=False):
        if isinstance(item, Skipped):
            out.skipped.append(item)
            continue
        rid = item["record_id"]
        if rid not in first:
            first[rid] = (line, item)
            out.records.append(item)
        elif first[rid][1] == item:
            out.skipped.append(
                Skipped("duplicate_row", f"record_id {rid!r} as on line {first[rid][0]}", line)
            )
        else:
            out.skipped.append(
                Skipped(
                    "bad_row",
                    f"column record_id: {rid!r} already on line {first[rid][0]} "
                    "with different content",
                    line,
                )
            )
    return out


# --- whole files ------------------------------------------------------------------------------


def _read(source: Source, encoding: str) -> str:
    data = source if isinstance(source, (str, bytes)) else source.read()
    if isinstance(data, bytes):
        try:
            data = data.decode(encoding)
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ExportError(f"line {line}: not {encoding} text ({exc.reason})") from None
    return data.removeprefix(_BOM)


def parse_csv(source: Source, config: ProviderConfig) -> Extracted:
    """Records from a CSV export (text, bytes or a file object) mapped by `[adapter] columns`."""
    fmt = export_format(config)
    reader = csv.reader(
        io.StringIO(_read(source, fmt.encoding), newline=""), delimiter=fmt.delimiter
    )
    rows: list[tuple[int, list[str]] | Skipped] = []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append(Skipped("bad_row", f"not CSV: {exc}", line))
            continue
        if row and any(cell.strip() for cell in row):
            rows.append((line, row))

    header_at = next((i for i, r in enumerate(rows) if not isinstance(r, Skipped)), None)
    if header_at is None:
        return Extracted(skipped=[r for r in rows if isinstance(r, Skipped)])
    header_line, header_cells = rows[header_at]  # type: ignore[misc]
    header = [h.strip().removeprefix(_BOM) for h in header_cells]
    index = _header_index(header, fmt, header_line)

    items: list[dict[str, Any] | Skipped] = []
    lines: list[int | None] = []
    for entry in rows[:header_at] + rows[header_at + 1 :]:
        if isinstance(entry, Skipped):
            items.append(entry)
            lines.append(entry.line)
            continue
        line, row = entry
        lines.append(line)
        if len(row) != len(header):
            items.append(
                Skipped("bad_row", f"{len(row)} fields, the header has {len(header)}", line)
            )
            continue
        values = {field: row[i] for field, i in index.items()}
        items.append(row_to_record(values, config, fmt, line))
    return _collect(items, lines)


def _header_index(header: list[str], fmt: ExportFormat, line: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        seen.setdefault(name, i)
    index: dict[str, int] = {}
    missing: list[str] = []
    for field, column in fmt.columns.items():
        if column in seen:
            if header.count(column) > 1:
                raise ExportError(
                    f"line {line}: column {column!r} ({field}) appears twice in the header"
                )
            index[field] = seen[column]
        elif field in fmt.explicit:
            missing.append(f"{column!r} ({field})")
    missing += [
        f"{fmt.columns[f]!r} ({f})" for f in REQUIRED if f not in index and f not in fmt.explicit
    ]
    if "tenant" not in index and "enterprise_uscc" not in index:
        missing.append(
            f"{fmt.columns['tenant']!r} (tenant) or {fmt.columns['enterprise_uscc']!r} "
            "(enterprise_uscc)"
        )
    if missing:
        raise ExportError(f"line {line}: the header lacks {', '.join(missing)}; it has {header}")
    return index


def parse_jsonl(source: Source, config: ProviderConfig) -> Extracted:
    """Records from JSON Lines (one object a line; keys mapped by `[adapter] columns`).

    Numbers are read as Decimal, never float. Blank lines are skipped but counted.
    """
    fmt = export_format(config)
    text = _read(source, fmt.encoding)

    def parsed() -> Iterator[tuple[int, dict[str, Any] | Skipped]]:
        for line, raw in enumerate(text.split("\n"), start=1):
            raw = raw.strip().removeprefix(_BOM)
            if not raw:
                continue
            try:
                obj = json.loads(raw, parse_float=Decimal)
            except ValueError as exc:
                yield line, Skipped("bad_row", f"not JSON: {exc}", line)
                continue
            if not isinstance(obj, dict):
                yield line, Skipped("bad_row", "not a JSON object", line)
                continue
            values = {f: obj[c] for f, c in fmt.columns.items() if c in obj}
            yield line, row_to_record(values, config, fmt, line)

    pairs = list(parsed())
    return _collect([p[1] for p in pairs], [p[0] for p in pairs])
