"""`voucher import-contracts`, `import-prices`, `import-related-parties`: the risk registries
(docs/API.md#risk-registries) from CSV files.

Each row is checked by the API's request model (api/schemas/risk.py) and written by the same
service (metering/contracts.py) in a savepoint of its own: a bad row is reported by its line and
field and leaves nothing, the others are stored. Re-running a file changes nothing (the
services are idempotent: the same content again is "unchanged"). Cells are read as text and
stored as given — "007" stays "007", "=1+1" stays those three characters — and the reports
write stored text as text cells, never formulas.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from voucher.cli_adapters import echo_report
from voucher.cli_settings import settings as cli_settings


@dataclass
class RowsSummary:
    what: str
    rows: int = 0
    created: int = 0
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{self.what}: {self.rows} rows — created {self.created}, unchanged {self.unchanged}, "
                f"rejected {len(self.problems)}"]


def read_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with a header naming exactly `columns` (any order)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="\0extra")
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in columns if c not in header]
    unknown = [h for h in header if h not in columns]
    if missing or unknown:
        raise click.ClickException(f"{path}: line 1: the header must name {', '.join(columns)}"
                                   + (f"; missing {', '.join(missing)}" if missing else "")
                                   + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    reader.fieldnames = header
    out = []
    for row in reader:
        extra = row.pop("\0extra", None)
        cells = {k: (v or "").strip() for k, v in row.items()}
        if extra:
            cells["\0extra"] = "x"
        out.append((reader.line_num, cells))
    return out


def _problem(line: int, param: str | None, message: str) -> str:
    return f"line {line} ({param or 'row'}): {message}"


def import_rows(path: Path, what: str, model: type[BaseModel], columns: tuple[str, ...],
                write: Callable[[Any, dict[str, Any]], tuple[Any, bool]],
                extra: Callable[[dict[str, str]], dict[str, Any]] | None = None) -> RowsSummary:
    """Check each row with `model` and `write(session, values)` it in a savepoint of its own."""
    from kernel.db import Database
    from kernel.errors import DomainError

    rows = read_rows(path, columns)
    summary = RowsSummary(what, rows=len(rows))
    db = Database(cli_settings().database_url)
    with click.progressbar(length=len(rows), label=f"importing {path.name}", show_pos=True,
                           file=sys.stderr) as bar, db.session() as session, session.begin():
        for line, cells in rows:
            bar.update(1)
            if "\0extra" in cells:
                summary.problems.append(_problem(line, None, "more cells than the header names"))
                continue
            values: dict[str, Any] = {k: v for k, v in cells.items() if v != ""}
            try:
                body = model.model_validate({**values, **(extra(cells) if extra else {})})
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(x) for x in err.get("loc", ())) or None
                summary.problems.append(_problem(line, loc, err.get("msg", "invalid")))
                continue
            except ValueError as exc:  # from `extra`: "param: message"
                param, _, message = str(exc).partition(": ")
                summary.problems.append(_problem(line, param, message))
                continue
            try:
                with session.begin_nested():
                    _row, created = write(session, body.model_dump())
            except DomainError as exc:
                summary.problems.append(_problem(line, exc.param, exc.message))
                continue
            if created:
                summary.created += 1
            else:
                summary.unchanged += 1
    return summary


def _report(summary: RowsSummary) -> None:
    echo_report(summary.lines(), summary.problems, limit=50)


def _fen(cells: dict[str, str]) -> dict[str, Any]:
    """unit_price is whole fen (as the API's): digits only, so "1e3" or "12.5" name the field."""
    text = cells.get("unit_price", "")
    if not text.isascii() or not text.isdigit():
        raise ValueError("unit_price: must be a whole number of fen, such as 1200")
    return {"unit_price": int(text)}


def _provider_exists(provider_id: str) -> None:
    from adapters.pull import check_provider
    from kernel.db import Database

    try:
        check_provider(Database(cli_settings().database_url), provider_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None


FILE = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.command("import-contracts")
@click.option("--provider", "provider_id", required=True)
@FILE
def import_contracts(provider_id: str, file: Path) -> None:
    """The provider's contracts from FILE (enterprise_uscc, contract_no, signed_on, valid_from,
    valid_until); unconfirmed until each enterprise confirms."""
    from api.schemas.risk import ContractIn
    from metering import contracts

    _provider_exists(provider_id)
    _report(import_rows(file, "contracts", ContractIn,
                        ("enterprise_uscc", "contract_no", "signed_on", "valid_from", "valid_until"),
                        lambda s, v: contracts.register_contract(s, provider_id, v)))


@click.command("import-prices")
@click.option("--provider", "provider_id", required=True)
@FILE
def import_prices(provider_id: str, file: Path) -> None:
    """The provider's list prices from FILE (resource, unit, unit_price in fen, effective_from)."""
    from api.schemas.risk import PriceIn
    from metering import contracts

    _provider_exists(provider_id)
    _report(import_rows(file, "prices", PriceIn, ("resource", "unit", "unit_price", "effective_from"),
                        lambda s, v: contracts.add_price(s, provider_id, v), extra=_fen))


@click.command("import-related-parties")
@FILE
def import_related_parties(file: Path) -> None:
    """Related-party links recorded by finance from FILE (provider_id, enterprise_uscc, relation)."""
    from api.schemas.risk import RelatedPartyIn
    from metering import contracts

    _report(import_rows(file, "related parties", RelatedPartyIn, ("provider_id", "enterprise_uscc", "relation"),
                        contracts.add_related_party))


COMMANDS = [import_contracts, import_prices, import_related_parties]
