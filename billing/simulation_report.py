"""The simulation workbook (docs/API.md#cli, `voucher simulate`; docs/POLICY.md#simulation).

Three sheets, written with the monthly report's helpers (billing/reports.py: text cells are
never formulas, amounts are exact yuan Decimals formatted `#,##0.00`, Chinese headers with
English below): 汇总 Summary (the two policies, totals, cap hits, the budget impact, a chart of
actual vs simulated per month), 企业 Enterprises (one row per enterprise, the largest change
first, with a chart when there are few enough enterprises to read one), 月份 Months.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO

from openpyxl import Workbook
from openpyxl.utils import get_column_letter

from billing.reports import BOLD, COUNT, SUBHEADER_FONT, TITLE_FONT, TOTAL_FILL, _bar_chart, _Sheet
from billing.simulation import Simulation

SHEETS = ("汇总 Summary", "企业 Enterprises", "月份 Months")
MONTHS_HEADER = 3  # the months sheet's English header row; January is the row below it
CHART_ENTERPRISES = 40  # beyond this a bar per enterprise is unreadable: the table says it

ENTERPRISE_COLUMNS = (  # (Chinese, English, width)
    ("统一社会信用代码", "USCC", 21), ("企业名称", "Enterprise", 30), ("区县", "County", 9),
    ("申领数", "Claims", 8), ("核销数", "Redemptions", 11),
    ("实际年度上限（元）", "Actual cap (CNY)", 17), ("模拟年度上限（元）", "Simulated cap (CNY)", 17),
    ("实际应付（元）", "Actual payable (CNY)", 17), ("模拟应付（元）", "Simulated payable (CNY)", 17),
    ("差额（元）", "Difference (CNY)", 16),
    ("实际封顶次数", "Actual cap hits", 12), ("模拟封顶次数", "Simulated cap hits", 12),
)


def write_xlsx(sim: Simulation, out: IO[bytes] | str, *, generated_at: datetime | None = None) -> None:
    """Write the workbook of `sim` to a binary file or a path."""
    generated_at = generated_at or datetime.now(UTC)
    wb = Workbook(write_only=True)
    summary = _Sheet(wb, SHEETS[0], (34, 20, 20, 20))
    enterprises = _Sheet(wb, SHEETS[1], (c[2] for c in ENTERPRISE_COLUMNS))
    months = _Sheet(wb, SHEETS[2], (12, 20, 20, 20))
    _write_months(months, sim)
    _write_summary(summary, sim, generated_at, months)
    _write_enterprises(enterprises, sim)
    wb.save(out)


def _write_summary(sh: _Sheet, sim: Simulation, generated_at: datetime, months: _Sheet) -> None:
    """The figures side by side, the budget impact, and the months' chart (its data: `months`)."""
    sh.append([sh.cell(f"算力券政策模拟 Policy simulation {sim.year}", font=TITLE_FONT)])
    sh.append([sh.cell(f"generated {generated_at:%Y-%m-%d %H:%M} UTC · read-only replay of the year's claims "
                       f"and redemptions (docs/POLICY.md#simulation)", font=SUBHEADER_FONT)])
    sh.append([])
    sh.header(("项目", "实际", "模拟", "差额"), ("Item", "Actual", "Simulated", "Difference"))
    sh.append(("政策 Policy", sim.actual_policy.id, sim.policy.id, None))
    sh.append(("补贴比例 Rate", str(sim.actual_policy.rate), str(sim.policy.rate), None))
    sh.append(("标准年度上限（元） Standard cap (CNY)", sh.money(sim.actual_policy.cap_standard),
               sh.money(sim.policy.cap_standard), None))
    sh.append(("备案年度上限（元） Cap with a new filing (CNY)", sh.money(sim.actual_policy.cap_new_model_filing),
               sh.money(sim.policy.cap_new_model_filing), None))
    sh.append([sh.cell("应付合计（元） Payable total (CNY)", font=BOLD, fill=TOTAL_FILL),
               sh.money(sim.actual, font=BOLD, fill=TOTAL_FILL), sh.money(sim.simulated, font=BOLD, fill=TOTAL_FILL),
               sh.money(sim.difference, font=BOLD, fill=TOTAL_FILL)])
    sh.append(("封顶次数 Cap hits", sh.cell(sim.actual_cap_hits, fmt=COUNT),
               sh.cell(sim.simulated_cap_hits, fmt=COUNT),
               sh.cell(sim.simulated_cap_hits - sim.actual_cap_hits, fmt=COUNT)))
    sh.append(("企业数 Enterprises", sh.cell(len(sim.enterprises), fmt=COUNT), None, None))
    sh.append(("申领数 / 核销数 Claims / redemptions", f"{sim.claims} / {sim.redemptions}", None, None))
    sh.append([])
    sh.append([sh.cell("预算影响 Budget impact", font=BOLD)])
    unlimited = "不限 unlimited"
    sh.append(("模拟政策年度预算（元） Simulated policy's annual budget (CNY)",
               unlimited if sim.budget_annual is None else sh.money(sim.budget_annual)))
    sh.append(("模拟应付合计（元） Simulated total (CNY)", sh.money(sim.simulated)))
    sh.append(("预算余额（元，负数为超出） Budget left (CNY, negative: over)",
               unlimited if sim.budget_left is None else sh.money(sim.budget_left)))
    sh.append(("预算未能资助（元） Not funded by the budget (CNY)", sh.money(sim.unfunded)))
    chart = _bar_chart(months, "col", "每月实际与模拟应付 Actual vs simulated payable by month (CNY)",
                       ((2, 3),), MONTHS_HEADER, MONTHS_HEADER + 12)
    chart.y_axis.title = "元 CNY"
    sh.ws.add_chart(chart, "F3")


def _write_months(sh: _Sheet, sim: Simulation) -> None:
    sh.append([sh.cell(f"按月 By month {sim.year}", font=TITLE_FONT)])
    sh.header(("所属期", "实际应付（元）", "模拟应付（元）", "差额（元）"),
              ("Period", "Actual (CNY)", "Simulated (CNY)", "Difference (CNY)"))
    for period, (actual, simulated) in sorted(sim.months.items()):
        sh.append((period, sh.money(actual), sh.money(simulated), sh.money(simulated - actual)))
    sh.append([sh.cell("合计 Total", font=BOLD, fill=TOTAL_FILL), sh.money(sim.actual, font=BOLD, fill=TOTAL_FILL),
               sh.money(sim.simulated, font=BOLD, fill=TOTAL_FILL),
               sh.money(sim.difference, font=BOLD, fill=TOTAL_FILL)])


def _write_enterprises(sh: _Sheet, sim: Simulation) -> None:
    sh.ws.freeze_panes = "A3"
    sh.ws.print_title_rows = "1:2"
    en_row = sh.header((c[0] for c in ENTERPRISE_COLUMNS), (c[1] for c in ENTERPRISE_COLUMNS))
    rows = sim.rows()
    for e in rows:
        sh.append((e.uscc, e.name, e.county, sh.cell(e.claims, fmt=COUNT), sh.cell(e.redemptions, fmt=COUNT),
                   sh.money(e.actual_cap), sh.money(e.simulated_cap), sh.money(e.actual), sh.money(e.simulated),
                   sh.money(e.difference), sh.cell(e.actual_cap_hits, fmt=COUNT),
                   sh.cell(e.simulated_cap_hits, fmt=COUNT)))
    last = sh.row
    sh.append([sh.cell("合计 Total", font=BOLD, fill=TOTAL_FILL)] + [None] * 6 + [sh.money(sim.actual, font=BOLD, fill=TOTAL_FILL),
                              sh.money(sim.simulated, font=BOLD, fill=TOTAL_FILL),
                              sh.money(sim.difference, font=BOLD, fill=TOTAL_FILL),
                              sh.cell(sim.actual_cap_hits, fmt=COUNT), sh.cell(sim.simulated_cap_hits, fmt=COUNT)])
    if last > en_row:
        sh.ws.auto_filter.ref = f"A2:{get_column_letter(len(ENTERPRISE_COLUMNS))}{last}"
    if en_row < last <= en_row + CHART_ENTERPRISES:
        chart = _bar_chart(sh, "bar", "各企业实际与模拟应付 Actual vs simulated payable by enterprise (CNY)",
                           ((8, 9),), en_row, last)
        chart.height = max(9, (last - en_row) * 0.6)
        sh.ws.add_chart(chart, "N3")
