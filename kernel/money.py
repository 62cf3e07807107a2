"""Money formatting: fen are integers; yuan strings are made without floats."""

from __future__ import annotations

from decimal import Decimal

Fen = int


def yuan(fen: Fen, symbol: str = "") -> str:
    """12345678 -> '123,456.78' (with an optional '¥')."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{symbol}{whole:,}.{cents:02d}"


def yuan_decimal(fen: Fen) -> Decimal:
    """Exact yuan as a Decimal (for spreadsheets: formatted cells, never binary floats)."""
    return Decimal(int(fen)).scaleb(-2)
