"""The monthly reconciliation report (docs/API.md#reports; clawbacks: docs/API.md#clawbacks).

One row per claim item, from one streamed query joining claim items, claims, enterprises
and providers; then one row per clawback adjustment of the period. The summary (totals,
counts by status, by county and provider, discrepancies, cap-reached enterprises) is
computed from the same rows as they stream past, so the figures of a file always add up
to its own summary — and to the API's reconciliation summary, which counts the same claims.

A claim's `payable` is split across its items in proportion to their base (largest
remainder, so the shares are whole fen and sum exactly to the claim's payable); that makes
the payable column add up and lets the report total it by provider.

CSV: integer fen, English header, UTF-8 with a byte-order mark (so Excel reads the Chinese).
XLSX: openpyxl in write-only (streaming) mode, so a month of 10,000 claims is written in
bounded memory (lxml, when installed, makes that streaming about twice as fast); amounts are
yuan as exact Decimals (`kernel.money.yuan_decimal`, never a float made from fen) in cells
formatted `#,##0.00`, written as decimal text that is exact up to 16 significant digits;
Chinese headers with English below, frozen, column widths set. Streaming has one visible
cost: sheets carry no `<dimension>`, so openpyxl's read-only mode must count rows itself.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import IO, Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.budget import figures
from billing.models import Claim, ClaimAdjustment, ClaimItem, Reconciliation
from billing.totals import TOTAL_KEYS, ClaimTotals, codes_of
from kernel.money import yuan_decimal
from kernel.periods import parse_period, period_year
from kernel.vocabulary import (
    CLAIM_STATUSES,
    AdjustmentKind,
    ClaimStatus,
    Discrepancy,
    RiskSignal,
    label,
)
from metering.models import Enterprise, Provider

Fen = int

FORMATS = {"csv": "text/csv",  # Flask adds "; charset=utf-8"
           "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
STATUSES = CLAIM_STATUSES
TOTAL_LABELS = {
    "amount_paid": ("实付金额", "Paid"),
    "invoiced": ("发票金额", "Invoiced"),
    "metered": ("计量金额", "Metered"),
    "base": ("补贴基数", "Base"),
    "computed": ("计算补贴", "Computed subsidy"),
    "payable": ("应付补贴", "Payable"),
    "reserved": ("已预留", "Reserved"),
    "granted": ("已拨付", "Granted"),
    "clawed_back": ("已追回", "Clawed back"),
}
NO_COUNTY = "（未填区县）"

CSV_HEADER = ("record_type", "period", "claim_id", "enterprise_uscc", "enterprise_name", "county",
              "provider_id", "invoice_no", "amount_paid", "invoice_amount", "metered", "base",
              "payable", "status", "discrepancy_codes", "adjustment", "note")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One claim item (`kind` "item") or one adjustment of a claim (`kind` "clawback").

    Item amounts are fen; `payable` is the item's share of its claim's payable. The claim's
    own figures are repeated on each of its rows (`claim_*`) for the summary.
    """

    kind: str
    period: str
    claim_id: int
    enterprise_uscc: str
    enterprise_name: str
    county: str | None
    status: str
    claim_codes: tuple[str, ...]
    claim_computed: Fen
    claim_payable: Fen
    claim_payable_before_cap: Fen
    claim_clawed_back: Fen
    cap_reached: bool
    provider_id: str | None = None
    provider_name: str | None = None
    invoice_no: str | None = None
    amount_paid: Fen | None = None
    invoice_amount: Fen | None = None
    metered: Fen | None = None
    base: Fen | None = None
    payable: Fen | None = None
    item_codes: tuple[str, ...] = ()
    adjustment: Fen | None = None
    note: str | None = None
    created_at: datetime | None = None

    @property
    def codes(self) -> list[str]:
        return sorted(set(self.item_codes) | set(self.claim_codes))

    @property
    def claim_ref(self) -> str:
        return f"clm_{self.claim_id}"


def allocate(total: Fen, weights: list[Fen]) -> list[Fen]:
    """Split `total` fen in proportion to `weights` (largest remainder; ties to the earlier).

    All-zero weights put everything on the first share. The shares always sum to `total`.
    """
    if not weights:
        return []
    whole = sum(weights)
    if whole <= 0:
        return [total] + [0] * (len(weights) - 1)
    shares = [total * w // whole for w in weights]
    rest = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:rest]:
        shares[i] += 1
    return shares


def iter_rows(session: Session, period: str, batch: int = 1000) -> Iterator[ReportRow]:
    """Every item row of `period` (one streamed query, claim by claim), then its clawbacks."""
    parse_period(period)
    stmt = (
        select(ClaimItem.claim_id, ClaimItem.provider_id, ClaimItem.invoice_no, ClaimItem.amount_paid,
               ClaimItem.invoice_amount, ClaimItem.metered, ClaimItem.base, ClaimItem.discrepancies,
               Claim.enterprise_uscc, Claim.status, Claim.computed, Claim.payable,
               Claim.payable_before_cap, Claim.clawed_back, Claim.cap_reached, Claim.discrepancies,
               Enterprise.name, Enterprise.county, Provider.name)
        .join(Claim, ClaimItem.claim_id == Claim.id)
        .join(Enterprise, Claim.enterprise_uscc == Enterprise.uscc)
        .outerjoin(Provider, ClaimItem.provider_id == Provider.id)
        .where(Claim.period == period)
        .order_by(Claim.enterprise_uscc, Claim.id, ClaimItem.position)
        .execution_options(yield_per=batch)
    )
    pending: list[tuple] = []
    for r in session.execute(stmt):
        if pending and pending[0][0] != r[0]:
            yield from _claim_rows(period, pending)
            pending = []
        pending.append(tuple(r))
    if pending:
        yield from _claim_rows(period, pending)

    adjustments = (
        select(ClaimAdjustment.claim_id, ClaimAdjustment.kind, ClaimAdjustment.amount,
               ClaimAdjustment.reason, ClaimAdjustment.created_at, Claim.enterprise_uscc, Claim.status,
               Claim.computed, Claim.payable, Claim.payable_before_cap, Claim.clawed_back,
               Claim.cap_reached, Claim.discrepancies, Enterprise.name, Enterprise.county)
        .join(Claim, ClaimAdjustment.claim_id == Claim.id)
        .join(Enterprise, Claim.enterprise_uscc == Enterprise.uscc)
        .where(ClaimAdjustment.period == period)
        .order_by(ClaimAdjustment.id)
        .execution_options(yield_per=batch)
    )
    for (claim_id, kind, amount, reason, created_at, uscc, status, computed, payable, before_cap,
         clawed_back, cap_reached, claim_disc, name, county) in session.execute(adjustments):
        yield ReportRow(kind=kind, period=period, claim_id=claim_id, enterprise_uscc=uscc,
                        enterprise_name=name, county=county, status=status,
                        claim_codes=codes_of(claim_disc), claim_computed=computed, claim_payable=payable,
                        claim_payable_before_cap=before_cap, claim_clawed_back=clawed_back,
                        cap_reached=bool(cap_reached), adjustment=int(amount), note=reason,
                        created_at=created_at)


def _claim_rows(period: str, items: list[tuple]) -> Iterator[ReportRow]:
    (claim_id, _, _, _, _, _, _, _, uscc, status, computed, payable, before_cap, clawed_back,
     cap_reached, claim_disc, name, county, _) = items[0]
    shares = allocate(int(payable), [int(it[6] or 0) for it in items])
    claim_codes = codes_of(claim_disc)
    for it, share in zip(items, shares, strict=True):
        yield ReportRow(kind="item", period=period, claim_id=claim_id, enterprise_uscc=uscc,
                        enterprise_name=name, county=county, status=status, claim_codes=claim_codes,
                        claim_computed=int(computed), claim_payable=int(payable),
                        claim_payable_before_cap=int(before_cap), claim_clawed_back=int(clawed_back),
                        cap_reached=bool(cap_reached), provider_id=it[1], provider_name=it[18],
                        invoice_no=it[2], amount_paid=int(it[3]), invoice_amount=it[4],
                        metered=it[5], base=int(it[6] or 0), payable=share,
                        item_codes=codes_of(it[7]))


# --- summary ------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ReportSummary(ClaimTotals):
    """The run's summary figures (billing/totals.py, as the reconciliation adds them up) plus the
    report's breakdowns."""

    period: str
    items: int = 0
    by_county: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_provider: dict[str, dict[str, Any]] = field(default_factory=dict)
    cap_reached_enterprises: list[dict[str, Any]] = field(default_factory=list)
    adjustments: int = 0
    adjustments_total: Fen = 0

    def as_dict(self) -> dict[str, Any]:
        """Shaped like the API's reconciliation summary, plus the breakdowns."""
        s = self.summary()
        return {
            "period": self.period,
            "claims": s["claims"],
            "items": self.items,
            "by_status": dict(self.by_status),
            "discrepancies": s["discrepancies"],
            "cap_reached": s["cap_reached"],
            "totals": dict(self.totals),
            "currency": s["currency"],
            "by_county": {k: {n: (len(v) if isinstance(v, set) else v) for n, v in d.items()}
                          for k, d in self.by_county.items()},
            "by_provider": self.by_provider,
            "cap_reached_enterprises": self.cap_reached_enterprises,
            "adjustments": {"count": self.adjustments, "total": self.adjustments_total},
        }


_PROVIDER_SUMS = ("amount_paid", "invoiced", "metered", "base", "payable")


class SummaryBuilder:
    """Adds up report rows as they stream past; claim-level figures count once per claim."""

    def __init__(self, period: str) -> None:
        self.s = ReportSummary(period=period)
        self._last_claim: int | None = None

    def add(self, row: ReportRow) -> None:
        s = self.s
        if row.kind != "item":
            s.adjustments += 1
            s.adjustments_total += row.adjustment or 0
            return
        county = row.county or NO_COUNTY
        c = s.by_county.setdefault(county, {"claims": 0, "enterprises": set(), "base": 0, "payable": 0})
        if row.claim_id != self._last_claim:  # rows of a claim are consecutive
            self._last_claim = row.claim_id
            s.add_claim(row.status, row.claim_codes, row.claim_computed, row.claim_payable,
                        row.claim_clawed_back, row.cap_reached)
            c["claims"] += 1
            c["enterprises"].add(row.enterprise_uscc)
            if row.cap_reached:
                s.cap_reached_enterprises.append({
                    "enterprise_uscc": row.enterprise_uscc, "enterprise_name": row.enterprise_name,
                    "county": row.county, "claim_id": row.claim_ref,
                    "payable_before_cap": row.claim_payable_before_cap, "payable": row.claim_payable,
                    "cut": row.claim_payable_before_cap - row.claim_payable})
        s.items += 1
        s.add_item(row.item_codes, row.amount_paid, row.invoice_amount, row.metered, row.base)
        c["base"] += row.base or 0
        c["payable"] += row.payable or 0
        p = s.by_provider.setdefault(row.provider_id or "", {
            "name": row.provider_name, "items": 0, **dict.fromkeys(_PROVIDER_SUMS, 0)})
        p["items"] += 1
        for key, value in zip(_PROVIDER_SUMS, (row.amount_paid, row.invoice_amount, row.metered, row.base,
                                               row.payable), strict=True):
            p[key] += value or 0

    def result(self) -> ReportSummary:
        return self.s


def summarise_rows(period: str, rows: Iterable[ReportRow]) -> ReportSummary:
    b = SummaryBuilder(period)
    for row in rows:
        b.add(row)
    return b.result()


# --- CSV ----------------------------------------------------------------------------------

# A text cell starting with one of these is a formula to Excel, LibreOffice and Sheets
# (OWASP "CSV injection"): names and invoice numbers are typed by enterprises and providers.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(value: Any) -> Any:
    """A text cell as data, never a formula: a quote before a formula's first character.
    Numbers (fen, counts) are not text and stay numbers, negative ones included."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(period: str, rows: Iterable[ReportRow], out: IO[bytes]) -> ReportSummary:
    """Integer fen, English header, UTF-8 with BOM. Returns the summary of what was written."""
    text = io.TextIOWrapper(out, encoding="utf-8-sig", newline="")
    w = csv.writer(text)
    w.writerow(CSV_HEADER)
    b = SummaryBuilder(period)
    for r in rows:
        b.add(r)
        if r.kind == "item":
            w.writerow(_csv_text(v) for v in ("item", r.period, r.claim_ref, r.enterprise_uscc, r.enterprise_name,
                        r.county or "", r.provider_id, r.invoice_no, r.amount_paid,
                        "" if r.invoice_amount is None else r.invoice_amount,
                        "" if r.metered is None else r.metered, r.base, r.payable, r.status,
                        " ".join(r.codes), "", ""))
        else:
            w.writerow(_csv_text(v) for v in (r.kind, r.period, r.claim_ref, r.enterprise_uscc, r.enterprise_name,
                        r.county or "", "", "", "", "", "", "", "", r.status, "", r.adjustment,
                        r.note or ""))
    text.flush()
    text.detach()  # leave `out` open for the caller
    return b.result()


# --- XLSX ---------------------------------------------------------------------------------

MONEY = "#,##0.00"
COUNT = "#,##0"
TITLE_FONT = Font(bold=True, size=14)
BOLD = Font(bold=True)
HEADER_FONT = Font(bold=True)
SUBHEADER_FONT = Font(italic=True, color="555555", size=9)
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
TOTAL_FILL = PatternFill("solid", fgColor="F2F2F2")
THIN = Side(style="thin", color="999999")
HEADER_BORDER = Border(bottom=THIN)


def _money_column(zh: str, en: str, width: int = 15) -> tuple[str, str, int, str]:
    """A column of yuan amounts: its headers say so in both languages."""
    return f"{zh}（元）", f"{en} (CNY)", width, "money"


# (Chinese header, English header, width, kind)
CLAIM_COLUMNS = (  # the first columns of both sheets: which claim a row belongs to
    ("所属期", "Period", 9, "text"),
    ("申领编号", "Claim", 11, "text"),
    ("统一社会信用代码", "USCC", 21, "text"),
    ("企业名称", "Enterprise", 30, "text"),
    ("区县", "County", 9, "text"),
)
ITEM_COLUMNS = CLAIM_COLUMNS + (
    ("服务商", "Provider", 14, "text"),
    ("发票号码", "Invoice no.", 23, "text"),
    _money_column("实付金额", "Paid"),
    _money_column("发票金额", "Invoiced"),
    _money_column("计量金额", "Metered"),
    _money_column("补贴基数", "Base"),
    ("应付补贴（元）", "Payable (CNY, claim's split by base)", 17, "money"),
    ("状态", "Status", 15, "text"),
    ("差异代码", "Discrepancy codes", 40, "text"),
)
ADJUSTMENT_COLUMNS = CLAIM_COLUMNS + (
    ("类型", "Kind", 14, "text"),
    _money_column("金额", "Amount"),
    ("原因", "Reason", 70, "text"),
    ("时间（UTC）", "Created at (UTC)", 20, "text"),
)


class _Sheet:
    """A write-only worksheet with the helpers the report needs; counts its rows."""

    def __init__(self, wb: Workbook, title: str, widths: Iterable[float]) -> None:
        self.ws = wb.create_sheet(title)
        self.row = 0
        for i, width in enumerate(widths, 1):  # before the first row: written with the header
            self.ws.column_dimensions[get_column_letter(i)].width = width
        # Printed (or exported to PDF) one page wide, landscape: no columns cut off.
        self.ws.page_setup.orientation = "landscape"
        self.ws.page_setup.paperSize = "9"  # A4
        self.ws.page_setup.fitToWidth = 1
        self.ws.page_setup.fitToHeight = 0
        self.ws.sheet_properties.pageSetUpPr.fitToPage = True

    def cell(self, value: Any, *, font: Font | None = None, fmt: str | None = None,
             fill: PatternFill | None = None, border: Border | None = None,
             align: Alignment | None = None) -> WriteOnlyCell:
        c = WriteOnlyCell(self.ws, value=value)
        if isinstance(value, str):
            # openpyxl stores a string starting with "=" as a formula: every text cell is a
            # string, and one that looks like a formula also carries Excel's quote prefix so
            # that editing the cell keeps it text.
            c.data_type = "s"
            if value.startswith(FORMULA_STARTS):
                c.quotePrefix = True
        if font is not None:
            c.font = font
        if fmt is not None:
            c.number_format = fmt
        if fill is not None:
            c.fill = fill
        if border is not None:
            c.border = border
        if align is not None:
            c.alignment = align
        return c

    def money(self, fen: Fen | None, **style: Any) -> WriteOnlyCell | None:
        if fen is None:
            return None
        return self.cell(yuan_decimal(fen), fmt=MONEY, **style)

    def append(self, values: Iterable[Any]) -> int:
        # Plain strings go through cell() too: openpyxl's append would make "=…" a formula.
        self.ws.append([self.cell(v) if isinstance(v, str) else v for v in values])
        self.row += 1
        return self.row

    def header(self, zh: Iterable[str], en: Iterable[str]) -> int:
        """Chinese header with the English one below it; returns the English row's number."""
        self.append(self.cell(t, font=HEADER_FONT, fill=HEADER_FILL) for t in zh)
        return self.append(self.cell(t, font=SUBHEADER_FONT, fill=HEADER_FILL, border=HEADER_BORDER)
                           for t in en)


def _status_text(status: str) -> str:
    return f"{label(ClaimStatus, status)} {status}"


def write_xlsx(period: str, rows: Iterable[ReportRow], out: IO[bytes] | str, *,
               run: Reconciliation | None = None, generated_at: datetime | None = None,
               budget: Any = None,
               risks: Iterable[tuple[str, str, str, dict[str, Any]]] | None = None,
               programmes: list[tuple[str, str, str, str, dict[str, Any]]] | None = None) -> ReportSummary:
    """The report workbook: 汇总 Summary (with charts), 明细 Claim items, 调整 Adjustments,
    预算 Budget when `budget` (billing/budget.py Figures of the period's year) is given,
    风险 Risk when `risks` — (claim ref, USCC, status, risk) by score, highest first — is given, and
    政策 Programmes when several programmes ran (`programme_rows`, docs/POLICY.md#programmes)."""
    generated_at = generated_at or datetime.now(UTC)
    wb = Workbook(write_only=True)
    summary_sheet = _Sheet(wb, "汇总 Summary", (30, 24, 14, 18, 18, 18, 18, 18))
    items = _Sheet(wb, "明细 Claim items", (c[2] for c in ITEM_COLUMNS))
    adjustments = _Sheet(wb, "调整 Adjustments", (c[2] for c in ADJUSTMENT_COLUMNS))
    for sheet in (items, adjustments):
        sheet.ws.freeze_panes = "A3"  # both header rows stay in view
        sheet.ws.print_title_rows = "1:2"
    items.header((c[0] for c in ITEM_COLUMNS), (c[1] for c in ITEM_COLUMNS))
    adjustments.header((c[0] for c in ADJUSTMENT_COLUMNS), (c[1] for c in ADJUSTMENT_COLUMNS))

    b = SummaryBuilder(period)
    for r in rows:
        b.add(r)
        if r.kind == "item":
            items.append((r.period, r.claim_ref, r.enterprise_uscc, r.enterprise_name, r.county,
                          r.provider_id, r.invoice_no, items.money(r.amount_paid),
                          items.money(r.invoice_amount), items.money(r.metered), items.money(r.base),
                          items.money(r.payable), _status_text(r.status), " ".join(r.codes)))
        else:
            adjustments.append((r.period, r.claim_ref, r.enterprise_uscc, r.enterprise_name, r.county,
                                f"{label(AdjustmentKind, r.kind)} {r.kind}", adjustments.money(r.adjustment),
                                r.note, r.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
                                if r.created_at else None))
    s = b.result()

    last = items.row
    t = s.totals
    items.append([items.cell("合计 Total", font=BOLD, fill=TOTAL_FILL)]
                 + [items.cell(None, fill=TOTAL_FILL) for _ in range(6)]
                 + [items.money(t[k], font=BOLD, fill=TOTAL_FILL)
                    for k in ("amount_paid", "invoiced", "metered", "base", "payable")]
                 + [items.cell(f"{s.claims} claims / {s.items} items", fill=TOTAL_FILL)])
    if last > 2:
        items.ws.auto_filter.ref = f"A2:{get_column_letter(len(ITEM_COLUMNS))}{last}"
    adjustments.append([adjustments.cell("合计 Total", font=BOLD, fill=TOTAL_FILL)]
                       + [adjustments.cell(None, fill=TOTAL_FILL) for _ in range(5)]
                       + [adjustments.money(s.adjustments_total, font=BOLD, fill=TOTAL_FILL)])

    _write_summary(summary_sheet, s, run, generated_at)
    if budget is not None:
        _write_budget(_Sheet(wb, "预算 Budget", (34, 20)), budget)
    if risks is not None:
        _write_risk(_Sheet(wb, "风险 Risk", (12, 22, 8, 14, 24, 8, 60, 60)), risks)
    if programmes:
        _write_programmes(_Sheet(wb, "政策 Programmes", (12, 22, 30, 14, 26, 16, 16, 16, 24)), programmes)
    wb.save(out)
    return s


def _write_budget(sh: _Sheet, f: Any) -> None:
    """The programme's budget of the period's year (docs/API.md#budget): label, figure."""
    sh.append([sh.cell(f"年度预算 Programme budget {f.year}", font=TITLE_FONT)])
    sh.header(("项目", "金额（元）"), ("Figure", "CNY"))
    unlimited = "不限 unlimited"
    for zh_en, value in (("年度预算 Annual", f.annual), ("已预留 Reserved", f.reserved),
                         ("已批准 Granted", f.granted), ("剩余 Remaining", f.remaining),
                         ("候补金额 Waitlisted", f.waitlisted)):
        sh.append((zh_en, unlimited if value is None else sh.money(value)))
    sh.append(("候补申领数 Waitlisted claims", f.waitlisted_claims))
    forecast = f.forecast_exhausted_on.isoformat() if f.forecast_exhausted_on else "—"
    sh.append(("预计用尽日期 Forecast exhausted on (last 90 days)", forecast))


def _write_summary(sh: _Sheet, s: ReportSummary, run: Reconciliation | None, generated_at: datetime) -> None:
    sh.append([sh.cell(f"嘉兴市“人工智能+”算力券 月度对账报表 {s.period}", font=TITLE_FONT)])
    about = f"Monthly reconciliation report {s.period} · generated {generated_at:%Y-%m-%d %H:%M} UTC"
    if run is not None:
        about += (f" · reconciliation run {run.runs}, last at {run.last_run_at:%Y-%m-%d %H:%M} UTC"
                  f" · policy {run.policy_id}")
    sh.append([sh.cell(about, font=SUBHEADER_FONT)])
    sh.append([])

    sh.append([sh.cell("合计 Totals", font=BOLD)])
    sh.header(("项目", "", "金额（元）"), ("Item", "", "Amount (CNY)"))
    for key in TOTAL_KEYS:
        zh, en = TOTAL_LABELS[key]
        sh.append((zh, en, sh.money(s.totals[key])))
    sh.append([])

    sh.append([sh.cell("申领状态 Claims by status", font=BOLD)])
    sh.header(("状态", "", "申领数"), ("Status", "", "Claims"))
    for status in STATUSES:
        sh.append((label(ClaimStatus, status), status.value, sh.cell(s.by_status.get(status, 0), fmt=COUNT)))
    sh.append(("合计", "Total", sh.cell(s.claims, fmt=COUNT, font=BOLD)))
    sh.append(("达到年度上限", "Cap reached", sh.cell(s.cap_reached, fmt=COUNT)))
    sh.append(("申领明细", "Claim items", sh.cell(s.items, fmt=COUNT)))
    sh.append(("追回调整", "Clawback adjustments", sh.cell(s.adjustments, fmt=COUNT)))
    sh.append([])

    sh.append([sh.cell("按区县 By county", font=BOLD)])
    county_en = sh.header(("区县", "企业数", "申领数", "补贴基数（元）", "应付补贴（元）"),
                          ("County", "Enterprises", "Claims", "Base (CNY)", "Payable (CNY)"))
    for county, c in sorted(s.by_county.items(), key=lambda kv: (-kv[1]["payable"], kv[0])):
        sh.append((county, sh.cell(len(c["enterprises"]), fmt=COUNT), sh.cell(c["claims"], fmt=COUNT),
                   sh.money(c["base"]), sh.money(c["payable"])))
    county_last = sh.row
    sh.append([])

    sh.append([sh.cell("按服务商 By provider", font=BOLD)])
    provider_en = sh.header(("服务商", "名称", "明细数", "实付金额（元）", "发票金额（元）", "计量金额（元）",
                             "补贴基数（元）", "应付补贴（元）"),
                            ("Provider", "Name", "Items", "Paid (CNY)", "Invoiced (CNY)", "Metered (CNY)",
                             "Base (CNY)", "Payable (CNY)"))
    for pid in sorted(s.by_provider):
        p = s.by_provider[pid]
        sh.append((pid, p["name"], sh.cell(p["items"], fmt=COUNT), sh.money(p["amount_paid"]),
                   sh.money(p["invoiced"]), sh.money(p["metered"]), sh.money(p["base"]),
                   sh.money(p["payable"])))
    provider_last = sh.row
    sh.append([])

    sh.append([sh.cell("差异 Discrepancies", font=BOLD)])
    sh.header(("差异代码", "说明", "次数"), ("Code", "Meaning", "Count"))
    for code, n in sorted(s.discrepancies.items()):
        sh.append((code, label(Discrepancy, code, ""), sh.cell(n, fmt=COUNT)))
    if not s.discrepancies:
        sh.append(("—", "无 none", 0))
    sh.append([])

    sh.append([sh.cell("达到年度上限的企业 Enterprises at the annual cap", font=BOLD)])
    sh.header(("统一社会信用代码", "企业名称", "区县", "申领编号", "封顶前应付（元）", "应付补贴（元）", "削减（元）"),
              ("USCC", "Enterprise", "County", "Claim", "Before cap (CNY)", "Payable (CNY)", "Cut (CNY)"))
    for e in s.cap_reached_enterprises:
        sh.append((e["enterprise_uscc"], e["enterprise_name"], e["county"], e["claim_id"],
                   sh.money(e["payable_before_cap"]), sh.money(e["payable"]), sh.money(e["cut"])))
    if not s.cap_reached_enterprises:
        sh.append(("—", "无 none"))

    # Charts: where a reader would rather look than read. Series names come from the
    # English header row; categories are the first column of each block.
    if county_last > county_en:
        chart = _bar_chart(sh, "col", "各区县补贴基数与应付补贴 Base and payable by county (CNY)",
                           ((4, 5),), county_en, county_last)
        chart.y_axis.title = "元 CNY"
        sh.ws.add_chart(chart, "J3")
    if provider_last > provider_en:
        chart = _bar_chart(sh, "bar", "各服务商计量与应付补贴 Metered vs payable by provider (CNY)",
                           ((6, 6), (8, 8)), provider_en, provider_last)
        chart.x_axis.title = None
        sh.ws.add_chart(chart, "J23")


def _bar_chart(sh: _Sheet, kind: str, title: str, series: Iterable[tuple[int, int]],
               header_row: int, last_row: int) -> BarChart:
    """A bar chart of a block: each (first, last) column range adds series named by the block's
    header row (`header_row`, the English one); categories are the block's first column."""
    chart = BarChart()
    chart.type = kind
    chart.title = title
    chart.y_axis.numFmt = "#,##0"
    for first, last in series:
        chart.add_data(Reference(sh.ws, min_col=first, max_col=last, min_row=header_row, max_row=last_row),
                       titles_from_data=True)
    chart.set_categories(Reference(sh.ws, min_col=1, min_row=header_row + 1, max_row=last_row))
    # openpyxl ≥ 3.1 writes <c:delete val="1"/> unless told otherwise: Excel then hides the axes.
    chart.x_axis.delete = False
    chart.y_axis.delete = False
    chart.width, chart.height = 20, 9
    return chart


# --- one call for the API and the CLI -------------------------------------------------------

RISK_COLUMNS = (("申领", "Claim"), ("统一社会信用代码", "USCC"), ("风险分", "Score"), ("状态", "Status"),
                ("信号", "Signal"), ("权重", "Weight"), ("说明", "Explanation (zh)"), ("Explanation", "Explanation (en)"))


def _write_risk(sh: _Sheet, risks: Iterable[tuple[str, str, str, dict[str, Any]]]) -> None:
    """One row per signal of each claim (docs/API.md#risk); text cells only, never formulas."""
    sh.header((c[0] for c in RISK_COLUMNS), (c[1] for c in RISK_COLUMNS))
    for ref, uscc, status, risk in risks:
        for sig in risk.get("signals") or [{}]:
            code = sig.get("code")
            sh.append((ref, uscc, risk.get("score", 0), _status_text(status),
                       f"{label(RiskSignal, code)} {code}" if code else "—", sig.get("weight"),
                       sig.get("message_zh", ""), sig.get("message", "")))


def risk_rows(session: Session, period: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """The period's reconciled claims with their risk, highest score first (one query)."""
    rows = session.execute(select(Claim.id, Claim.enterprise_uscc, Claim.status, Claim.risk)
                           .where(Claim.period == period).order_by(Claim.id))
    out = [(f"clm_{i}", u, st, r) for i, u, st, r in rows if r]
    out.sort(key=lambda x: -int(x[3].get("score", 0)))
    return out


PROGRAMME_COLUMNS = (("申领", "Claim"), ("统一社会信用代码", "USCC"), ("企业", "Enterprise"), ("状态", "Status"),
                     ("政策", "Programme"),
                     ("补贴基数（元）", "Base (CNY)"), ("单独应补（元）", "Alone (CNY)"),
                     ("叠加后应补（元）", "Payable after stacking (CNY)"), ("差异代码", "Codes"))


def _write_programmes(sh: _Sheet, rows: list[tuple[str, str, str, str, dict[str, Any]]]) -> None:
    """One row per claim and programme (docs/POLICY.md#programmes): the default programme's
    figures (the claim's own) and each other programme's, then a total per programme."""
    sh.header((c[0] for c in PROGRAMME_COLUMNS), (c[1] for c in PROGRAMME_COLUMNS))
    totals: dict[str, Fen] = {}
    for ref, uscc, name, status, f in rows:
        sh.append((ref, uscc, name, _status_text(status), f["programme_id"], sh.money(f["base"]), sh.money(f["alone"]),
                   sh.money(f["payable"]), " ".join(f.get("discrepancies") or [])))
        totals[f["programme_id"]] = totals.get(f["programme_id"], 0) + f["payable"]
    for programme, total in totals.items():
        sh.append([sh.cell("合计 Total", font=BOLD, fill=TOTAL_FILL), sh.cell(None, fill=TOTAL_FILL),
                   sh.cell(None, fill=TOTAL_FILL), sh.cell(None, fill=TOTAL_FILL),
                   sh.cell(programme, font=BOLD, fill=TOTAL_FILL),
                   sh.cell(None, fill=TOTAL_FILL), sh.cell(None, fill=TOTAL_FILL),
                   sh.money(total, font=BOLD, fill=TOTAL_FILL)])


def programme_rows(session: Session, period: str, default_id: str) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """The period's claims evaluated under several programmes (those with `programmes`), one row
    per claim and programme: the default programme (`default_id`, the claim's own figures) first,
    then the others'. Empty when one programme ran. One query."""
    out = []
    for cid, uscc, name, status, base, computed, payable, cap_reached, codes, others in session.execute(
            select(Claim.id, Claim.enterprise_uscc, Enterprise.name, Claim.status, Claim.base, Claim.computed,
                   Claim.payable, Claim.cap_reached, Claim.discrepancies, Claim.programmes)
            .join(Enterprise, Enterprise.uscc == Claim.enterprise_uscc)
            .where(Claim.period == period, Claim.programmes.is_not(None)).order_by(Claim.id)):
        if others is None:  # JSON null
            continue
        own = {"programme_id": default_id, "base": base, "computed": computed, "alone": None,
               "payable": payable, "cap_reached": cap_reached, "discrepancies": codes_of(codes)}
        out += [(f"clm_{cid}", uscc, name, status, f) for f in (own, *others)]
    return out


def filename(period: str, fmt: str) -> str:
    return f"voucher-report-{period}.{fmt}"


def write_report(session: Session, period: str, fmt: str, out: IO[bytes] | str, *,
                 policy: Any = None, today: date | None = None) -> ReportSummary:
    """Write the report of `period` as `fmt` ("csv" or "xlsx") to a binary file or path; with
    `policy`, the XLSX has the 预算 Budget sheet of the period's year (as of `today`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    rows = iter_rows(session, period)
    if fmt == "xlsx":
        budget = None
        if policy is not None:
            budget = figures(session, policy, period_year(period), today or datetime.now(UTC).date())
        return write_xlsx(period, rows, out, run=session.get(Reconciliation, period), budget=budget,
                          risks=risk_rows(session, period),
                          programmes=programme_rows(session, period, policy.id) if policy is not None else None)
    if isinstance(out, str):
        with open(out, "wb") as fh:
            return write_csv(period, rows, fh)
    return write_csv(period, rows, out)
