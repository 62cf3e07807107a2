"""Server-side SVG charts: pure functions of integers of fen and already-translated labels.

No script and no external request: each chart is an inline <svg role="img"> with a <title>
and <desc> (read by screen readers) and a <title> per bar as a tooltip. Colours are the
Okabe–Ito palette, distinguishable with the common colour-vision deficiencies, and every
chart on a page is also given as a table beside it. Only presentation attributes are used
(no style attributes), so the pages' Content-Security-Policy needs no 'unsafe-inline'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape

Fen = int
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
GRANTED, RESERVED, REMAINING = "#0072B2", "#E69F00", "#E4E7EB"
TEXT, GRID, AXIS = "#1F2933", "#D9DEE3", "#52606D"
FONT = "system-ui, -apple-system, 'Noto Sans CJK SC', 'Microsoft YaHei', sans-serif"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _open(width: int, height: int, chart_id: str, title: str, desc: str, kind: str) -> list[str]:
    return [
        f'<svg class="chart {kind}" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'font-family="{_e(FONT)}" font-size="13" fill="{TEXT}">',
        f'<title id="{chart_id}-t">{_e(title)}</title>',
        f'<desc id="{chart_id}-d">{_e(desc)}</desc>',
    ]


def quota_bar(*, cap: Fen, granted: Fen, reserved: Fen, chart_id: str, title: str, desc: str,
              labels: Mapping[str, str], money: Callable[[Fen], str], width: int = 640) -> str:
    """One horizontal bar: granted, reserved and remaining parts of the cap.

    The legend is left to the page (HTML wraps and scales on a phone; SVG text would shrink);
    each part carries its own <title> with its label and amount.
    """
    remaining = max(cap - granted - reserved, 0)
    bar_h = 36
    out = _open(width, bar_h, chart_id, title, desc, "bar")
    parts = [("granted", granted, GRANTED), ("reserved", reserved, RESERVED),
             ("remaining", remaining, REMAINING)]
    total = max(cap, granted + reserved, 1)
    x = 0.0
    for key, value, colour in parts:
        w = width * value / total
        if w <= 0:
            continue
        out.append(f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="{bar_h}" fill="{colour}">'
                   f'<title>{_e(labels[key])}: {_e(money(value))}</title></rect>')
        x += w
    out.append(f'<rect x="0.5" y="0.5" width="{width - 1}" height="{bar_h - 1}" fill="none" '
               f'stroke="{AXIS}" stroke-width="1"/>')
    out.append("</svg>")
    return "".join(out)


def nice_step(maximum: int, ticks: int = 5) -> int:
    """A 1-2-5 step (in whole yuan) that covers `maximum` yuan in at most `ticks` steps."""
    if maximum <= 0:
        return 1
    magnitude = 1
    while True:
        for m in (1, 2, 5):
            step = m * magnitude
            if step * ticks >= maximum:
                return step
        magnitude *= 10


def _axis_label(yuan: int) -> str:
    return f"¥{yuan:,}"


def _value_axis(out: list[str], peak: Fen, top: int, left: int, x_end: int, plot_h: int) -> Fen:
    """Grid lines and yuan labels up to a round step above `peak` fen; returns the axis top in fen."""
    peak_yuan = -(-peak // 100)
    step = nice_step(peak_yuan)
    n_ticks = max(1, -(-peak_yuan // step))
    for i in range(n_ticks + 1):
        y = top + plot_h - plot_h * i / n_ticks
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{x_end}" y2="{y:.1f}" '
                   f'stroke="{GRID}" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                   f'fill="{AXIS}">{_e(_axis_label(step * i))}</text>')
    return step * n_ticks * 100


def paired_bars(*, categories: Sequence[str], series: Sequence[tuple[str, Sequence[Fen]]],
                chart_id: str, title: str, desc: str, money: Callable[[Fen], str],
                width: int = 720, height: int = 300) -> str:
    """Grouped columns: per category one bar per series (`(label, values in fen)`), side by side,
    e.g. actual and simulated payable per month. The legend is the page's (HTML), as for
    quota_bar; each bar's <title> names its series and amount. Negative values count as 0."""
    top, left, right, bottom = 12, 86, 8, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    out = _open(width, height, chart_id, title, desc, "columns")
    peak = max((max(v, default=0) for _, v in series), default=0)
    axis_max = _value_axis(out, max(peak, 0), top, left, width - right, plot_h)
    slot = plot_w / max(len(categories), 1)
    bar_w = slot * 0.8 / max(len(series), 1)
    for idx, label in enumerate(categories):
        x = left + slot * idx + slot * 0.1
        for k, (name, values) in enumerate(series):
            value = max(values[idx], 0)
            h = plot_h * value / axis_max
            out.append(f'<rect x="{x + bar_w * k:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                       f'height="{h:.1f}" fill="{PALETTE[k % len(PALETTE)]}"><title>{_e(label)} · '
                       f'{_e(name)}: {_e(money(values[idx]))}</title></rect>')
        out.append(f'<text x="{left + slot * idx + slot / 2:.1f}" y="{top + plot_h + 16}" '
                   f'text-anchor="middle" font-size="11" fill="{AXIS}">{_e(label)}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
               f'stroke="{AXIS}" stroke-width="1"/>')
    out.append("</svg>")
    return "".join(out)


def spend_bars(*, periods: Sequence[str], period_labels: Sequence[str],
               series: Mapping[str, Mapping[str, Fen]], names: Mapping[str, str],
               chart_id: str, title: str, desc: str, empty: str,
               money: Callable[[Fen], str], width: int = 720, height: int = 300) -> str:
    """Stacked monthly bars, one colour per provider. `series[provider][period]` is in fen."""
    providers = sorted(series, key=lambda p: (-sum(series[p].values()), p))
    colours = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(providers)}
    legend_rows = (len(providers) + 2) // 3
    top, left, right = 12, 86, 8
    bottom = 28 + 22 * max(legend_rows, 1)
    total_h = height + 22 * max(legend_rows - 1, 0)
    plot_w, plot_h = width - left - right, total_h - top - bottom
    out = _open(width, total_h, chart_id, title, desc, "columns")
    totals = [sum(series[p].get(per, 0) for p in providers) for per in periods]
    axis_max = _value_axis(out, max(totals, default=0), top, left, width - right, plot_h)
    slot = plot_w / max(len(periods), 1)
    bar_w = slot * 0.62
    for idx, (per, label) in enumerate(zip(periods, period_labels, strict=True)):
        x = left + slot * idx + (slot - bar_w) / 2
        y = float(top + plot_h)
        for p in providers:
            value = series[p].get(per, 0)
            if value <= 0:
                continue
            h = plot_h * value / axis_max
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                       f'fill="{colours[p]}"><title>{_e(label)} · {_e(names.get(p, p))}: '
                       f'{_e(money(value))}</title></rect>')
        out.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                   f'font-size="11" fill="{AXIS}">{_e(label)}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
               f'stroke="{AXIS}" stroke-width="1"/>')
    if not providers:
        out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
                   f'text-anchor="middle" fill="{AXIS}">{_e(empty)}</text>')
    for i, p in enumerate(providers):
        lx = left + (i % 3) * (plot_w / 3)
        ly = top + plot_h + 30 + 22 * (i // 3)
        out.append(f'<rect x="{lx:.1f}" y="{ly}" width="14" height="14" fill="{colours[p]}"/>')
        out.append(f'<text x="{lx + 20:.1f}" y="{ly + 12}">{_e(names.get(p, p))}</text>')
    out.append("</svg>")
    return "".join(out)


def meter(*, used: Fen, cap: Fen, label: str, width: int = 160, warn_at: float = 0.9) -> str:
    """A small bar of how much of a cap is used (reserved + granted), for table rows."""
    share = min(used / cap, 1.0) if cap > 0 else 0.0
    colour = "#D55E00" if share >= warn_at else GRANTED
    return (f'<svg class="meter" viewBox="0 0 {width} 12" '
            f'width="{width}" height="12" role="img" aria-label="{_e(label)}">'
            f'<rect x="0" y="0" width="{width}" height="12" fill="{REMAINING}"/>'
            f'<rect x="0" y="0" width="{width * share:.1f}" height="12" fill="{colour}"/></svg>')


def burn_down(*, days: int, used: Sequence[Fen], annual: Fen | None, forecast_day: int | None,
              ticks: Sequence[tuple[int, str]], chart_id: str, title: str, desc: str,
              labels: Mapping[str, str], money: Callable[[Fen], str], width: int = 720,
              height: int = 300) -> str:
    """The budget's burn-down: cumulative use by day (`used[i]`, fen, day 0 = 1 January, up to
    today) against the annual line, and the forecast from today's point to the annual line on
    `forecast_day` (drawn to the year's end if that day falls later). `ticks` are (day, label)
    pairs for the x axis. `labels` names "used", "annual" and "forecast" for the legend, which
    lists only the lines drawn."""
    top, left, right, bottom = 12, 96, 12, 52
    plot_w, plot_h = width - left - right, height - top - bottom
    today = len(used) - 1
    last = used[-1] if used else 0
    peak_yuan = -(-max(annual or 0, max(used, default=0)) // 100)
    step = nice_step(peak_yuan)
    n_ticks = max(1, -(-peak_yuan // step))
    axis_max = step * n_ticks * 100  # fen

    def x(day: float) -> float:
        return left + plot_w * day / max(days - 1, 1)

    def y(fen: float) -> float:
        return top + plot_h - plot_h * fen / axis_max

    out = _open(width, height, chart_id, title, desc, "burn-down")
    for i in range(n_ticks + 1):
        gy = y(step * i * 100)
        out.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{width - right}" y2="{gy:.1f}" '
                   f'stroke="{GRID}" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end" font-size="11" '
                   f'fill="{AXIS}">{_e(_axis_label(step * i))}</text>')
    for day, label in ticks:
        out.append(f'<text x="{x(day):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                   f'font-size="11" fill="{AXIS}">{_e(label)}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
               f'stroke="{AXIS}" stroke-width="1"/>')
    if annual is not None:
        out.append(f'<line class="annual" x1="{left}" y1="{y(annual):.1f}" x2="{width - right}" '
                   f'y2="{y(annual):.1f}" stroke="{PALETTE[5]}" stroke-width="2">'
                   f'<title>{_e(labels["annual"])}: {_e(money(annual))}</title></line>')
    if used:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(used))
        out.append(f'<polyline class="used" points="{points}" fill="none" stroke="{GRANTED}" '
                   f'stroke-width="2"><title>{_e(labels["used"])}: {_e(money(last))}</title></polyline>')
    legend = [("used", GRANTED, None)] + ([("annual", PALETTE[5], None)] if annual is not None else [])
    if annual is not None and forecast_day is not None and forecast_day > today and last < annual:
        legend.append(("forecast", GRANTED, "6 4"))
        end_day = min(forecast_day, days - 1)
        end_fen = last + (annual - last) * (end_day - today) / (forecast_day - today)
        out.append(f'<line class="forecast" x1="{x(today):.1f}" y1="{y(last):.1f}" x2="{x(end_day):.1f}" '
                   f'y2="{y(end_fen):.1f}" stroke="{GRANTED}" stroke-width="2" stroke-dasharray="6 4">'
                   f'<title>{_e(labels["forecast"])}</title></line>')
    for i, (key, colour, dash) in enumerate(legend):
        lx, ly = left + i * (plot_w / 3), top + plot_h + 38
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 22:.1f}" y2="{ly - 4}" stroke="{colour}" '
                   f'stroke-width="2"{dashed}/>')
        out.append(f'<text x="{lx + 28:.1f}" y="{ly}">{_e(labels[key])}</text>')
    out.append("</svg>")
    return "".join(out)
