"""Load a policy TOML file into a `billing.policy.Policy`, refusing anything doubtful.

A policy decides who gets paid how much, so the loader is strict: every key is required,
unknown keys are errors (a typo must not silently fall back to a default), money is an
integer of fen and the rate an exact string — a float anywhere is refused. Each error
names the TOML key (`caps.standard: must be a positive integer (fen)`).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, replace
from datetime import date, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import config
from billing.policy import (
    DEFAULT_PROGRAMME,
    RESOURCE_KINDS,
    ROUNDINGS,
    SETTLEMENT_MODES,
    STACKINGS,
    Policy,
    PolicyError,
)
from billing.risk import SIGNALS, RiskPolicy

__all__ = ["PolicyError", "Programmes", "default_policy_path", "load_policy", "load_programmes",
           "parse_policy"]

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_RATE = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+/[1-9][0-9]*)$")

# Policy field -> TOML key, so semantic errors raised by Policy name the key in the file.
_KEYS = {
    "cap_standard": "caps.standard",
    "cap_new_model_filing": "caps.new_model_filing",
    "tolerance": "reconciliation.tolerance",
    "close_after_days": "reconciliation.close_after_days",
    "hold_days": "redemption.hold_days",
    "budget_annual": "budget.annual",
    "quota_thresholds": "alerts.quota_thresholds",
    "budget_thresholds": "alerts.budget_thresholds",
}

_TOP = {
    "id",
    "title_zh",
    "title_en",
    "document_no",
    "currency",
    "timezone",
    "effective_from",
    "effective_until",
    "rate",
    "rounding",
    "stacking",
    "resource_kinds",
    "new_filing_years",
    "caps",
    "reconciliation",
    "settlement_modes",
    "redemption",
    "budget",
    "alerts",
    "eligible_resources",
    "require_contracts",
    "risk",
    "counties",
    "enterprises",
    "stack_limit",
}
_TABLES = {"caps": {"standard", "new_model_filing"}, "reconciliation": {"tolerance", "close_after_days"},
           "redemption": {"hold_days"}, "budget": {"annual"},
           "alerts": {"quota_thresholds", "budget_thresholds"}}
# Added in v2: files written before keep loading (close after 90 days; reimbursement only; no
# [budget]: unlimited; no [alerts] (or a key of it): the default thresholds, docs/POLICY.md#budget).
_OPTIONAL = {"reconciliation.close_after_days", "settlement_modes", "redemption", "budget", "alerts",
             "alerts.quota_thresholds", "alerts.budget_thresholds", "eligible_resources",
             "require_contracts", "risk", "counties", "enterprises", "stack_limit"}
_RISK = {"price_tolerance", "spike_factor", "spike_floor", "review_threshold", "weights"}
_RESOURCE = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9._*?:/-]{0,63}$")


def default_policy_path() -> Path:
    """The shipped Jiaxing policy, wherever the `config` package is installed."""
    return Path(config.__file__).parent / "policies" / "jiaxing-2025.toml"


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read and validate a policy file.

    `path` (the composition root passes `Settings.policy_path`, i.e. `VOUCHER_POLICY`), or
    `default_policy_path()` when it is None. The loader never reads the environment.
    Raises PolicyError.
    """
    if path is None:
        path = default_policy_path()
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise PolicyError(None, f"cannot read policy file: {exc.strerror or exc}", source) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(None, f"not valid TOML: {exc}", source) from exc
    return parse_policy(data, source)


def parse_policy(data: dict[str, Any], source: str = "<policy>") -> Policy:
    """Validate a decoded TOML document and build the Policy. Raises PolicyError."""

    def fail(key: str, message: str) -> PolicyError:
        return PolicyError(key, message, source)

    _check_keys(data, source)

    def text(key: str) -> str:
        v = data[key]
        if not isinstance(v, str) or not v.strip():
            raise fail(key, "must be a non-empty string")
        return v

    def day(key: str) -> date:
        v = data[key]
        # datetime is a date subclass: a timestamp is not a calendar date.
        if not isinstance(v, date) or isinstance(v, datetime):
            raise fail(key, "must be a TOML local date such as 2025-05-13 (no quotes, no time)")
        return v

    def integer(table: dict[str, Any], key: str, name: str, minimum: int, what: str) -> int:
        v = table[key]
        if isinstance(v, float):
            raise fail(name, f"must be {what}, not a float")
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise fail(name, f"must be {what}")
        return v

    policy_id = text("id")
    if not _ID.fullmatch(policy_id):
        raise fail(
            "id",
            "must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        )
    if text("currency") != "CNY":
        raise fail("currency", 'only "CNY" is supported (money is kept in fen)')
    if text("timezone") != "Asia/Shanghai":
        # Billing periods are Shanghai months throughout the service (docs/API.md#conventions).
        raise fail("timezone", 'must be "Asia/Shanghai" (billing periods are Shanghai months)')

    raw_rate = data["rate"]
    if isinstance(raw_rate, float):
        raise fail("rate", 'must be an exact string such as "0.5" or "1/2", not a float')
    if not isinstance(raw_rate, str) or not _RATE.fullmatch(raw_rate):
        raise fail("rate", 'must be a string holding a decimal ("0.5") or a fraction ("1/2")')
    rate = Fraction(raw_rate)
    if not 0 < rate <= 1:
        raise fail("rate", f"must be > 0 and <= 1, got {raw_rate}")

    rounding = text("rounding")
    if rounding not in ROUNDINGS:
        raise fail("rounding", f"must be one of {sorted(ROUNDINGS)}, got {rounding!r}")
    stacking = text("stacking")
    if stacking not in STACKINGS:
        raise fail("stacking", f"must be one of {list(STACKINGS)}, got {stacking!r}")

    kinds = data["resource_kinds"]
    if not isinstance(kinds, list) or not kinds:
        raise fail("resource_kinds", f"must be a non-empty list of {list(RESOURCE_KINDS)}")
    for i, kind in enumerate(kinds):
        if kind not in RESOURCE_KINDS:
            raise fail(
                f"resource_kinds[{i}]", f"must be one of {list(RESOURCE_KINDS)}, got {kind!r}"
            )
    if len(set(kinds)) != len(kinds):
        raise fail("resource_kinds", "must not repeat a kind")

    caps, recon = data["caps"], data["reconciliation"]
    positive_fen, years = "a positive integer (fen)", "an integer >= 1 (years)"
    fields = {
        "id": policy_id,
        "title_zh": text("title_zh"),
        "title_en": text("title_en"),
        "document_no": text("document_no"),
        "effective_from": day("effective_from"),
        "effective_until": day("effective_until"),
        "timezone": data["timezone"],
        "rate": rate,
        "cap_standard": integer(caps, "standard", "caps.standard", 1, positive_fen),
        "cap_new_model_filing": integer(
            caps, "new_model_filing", "caps.new_model_filing", 1, positive_fen
        ),
        "new_filing_years": integer(data, "new_filing_years", "new_filing_years", 1, years),
        "stacking": stacking,
        "rounding": rounding,
        "tolerance": integer(
            recon, "tolerance", "reconciliation.tolerance", 0, "a non-negative integer (fen)"
        ),
        "currency": "CNY",
        "resource_kinds": tuple(kinds),
    }
    if "close_after_days" in recon:
        fields["close_after_days"] = integer(
            recon, "close_after_days", "reconciliation.close_after_days", 1, "an integer >= 1 (days)"
        )
    modes = data.get("settlement_modes", ["reimbursement"])
    if not isinstance(modes, list) or not modes:
        raise fail("settlement_modes", f"must be a non-empty list of {list(SETTLEMENT_MODES)}")
    for i, mode in enumerate(modes):
        if mode not in SETTLEMENT_MODES:
            raise fail(f"settlement_modes[{i}]", f"must be one of {list(SETTLEMENT_MODES)}, got {mode!r}")
    if len(set(modes)) != len(modes):
        raise fail("settlement_modes", "must not repeat a mode")
    fields["settlement_modes"] = tuple(modes)
    if "redemption" in data:
        fields["hold_days"] = integer(data["redemption"], "hold_days", "redemption.hold_days", 1,
                                      "an integer >= 1 (days)")
    elif "redemption" in modes:
        raise fail("redemption", "missing: settlement_modes enables redemption, so [redemption] "
                                 "hold_days must be set")
    if "budget" in data:
        fields["budget_annual"] = integer(data["budget"], "annual", "budget.annual", 1, positive_fen)
    for key in ("quota_thresholds", "budget_thresholds"):
        if key in data.get("alerts", {}):
            fields[key] = _percentages(data["alerts"][key], f"alerts.{key}", fail)
    fields.update(_risk_fields(data, fail))
    fields.update(_programme_fields(data, stacking, fail))
    try:
        return Policy(**fields)
    except PolicyError as exc:  # cross-field rules live in Policy; name the TOML key
        message = exc.message
        for field, key in _KEYS.items():
            message = message.replace(field, key)
        raise fail(_KEYS.get(exc.key or "", exc.key or ""), message) from exc


def _programme_fields(data: dict[str, Any], stacking: str, fail) -> dict[str, Any]:
    """`counties`, `enterprises` and `stack_limit` (docs/POLICY.md#programmes), each optional
    except `stack_limit`, which `stacking = "stack"` requires and no other rule accepts."""
    out: dict[str, Any] = {}
    for key in ("counties", "enterprises"):
        if key not in data:
            continue
        values = data[key]
        if not isinstance(values, list) or not values or any(
                not isinstance(v, str) or not v.strip() for v in values):
            raise fail(key, "must be a non-empty list of non-empty strings (absent: no restriction)")
        if len(set(values)) != len(values):
            raise fail(key, "must not repeat a value")
        out[key] = tuple(values)
    if "enterprises" in out:
        from kernel.uscc import (  # the one USCC form (docs/API.md#uscc)
            canonical_uscc,
            uscc_is_valid,
        )

        for i, v in enumerate(out["enterprises"]):
            if not uscc_is_valid(canonical_uscc(v)):
                raise fail(f"enterprises[{i}]", f"{v!r} is not a valid USCC (GB 32100-2015)")
        out["enterprises"] = tuple(canonical_uscc(v) for v in out["enterprises"])
    if stacking == "stack":
        if "stack_limit" not in data:
            raise fail("stack_limit", 'missing: stacking = "stack" needs the share of the spend all '
                                      'programmes together may pay, such as "0.7"')
        raw = data["stack_limit"]
        if not isinstance(raw, str) or not _RATE.fullmatch(raw):
            raise fail("stack_limit", 'must be an exact string such as "0.7" or "7/10", not a float')
        limit = Fraction(raw)
        if not 0 < limit <= 1:
            raise fail("stack_limit", f"must be > 0 and <= 1, got {raw}")
        out["stack_limit"] = limit
    elif "stack_limit" in data:
        raise fail("stack_limit", f'only with stacking = "stack" (this programme is {stacking!r})')
    return out


@dataclass(frozen=True)
class Programmes:
    """The programmes the service runs (docs/POLICY.md#programmes): the default one (the
    policy every single-programme path uses) and the others, in the order they are combined.
    The default one keeps its quota under DEFAULT_PROGRAMME, each other one under its id."""

    default: Policy
    others: tuple[Policy, ...] = ()

    def __post_init__(self) -> None:
        ids = [p.id for p in self.all]
        if len(set(ids)) != len(ids) or DEFAULT_PROGRAMME in ids[1:]:
            raise PolicyError("id", f"programme ids must differ, and {DEFAULT_PROGRAMME!r} is the default "
                                    f"programme's key: {ids}")
        object.__setattr__(self, "default", replace(self.default, programme=DEFAULT_PROGRAMME))
        object.__setattr__(self, "others", tuple(replace(p, programme=p.id) for p in self.others))

    @property
    def all(self) -> tuple[Policy, ...]:
        return (self.default, *self.others)

    def get(self, programme_id: str) -> Policy | None:
        return next((p for p in self.all if p.id == programme_id), None)


def load_programmes(policies_dir: str | os.PathLike[str] | None = None,
                    policy_path: str | os.PathLike[str] | None = None) -> Programmes:
    """The default programme (`policy_path`, i.e. `VOUCHER_POLICY`; the Jiaxing file when None)
    and every `*.toml` in `policies_dir` (`VOUCHER_POLICIES_DIR`; None: no other programme),
    in file-name order. A file there with the default programme's id is the default itself and
    must say the same; two other files with one id are refused. Raises PolicyError."""
    default = load_policy(policy_path)
    if policies_dir is None:
        return Programmes(default)
    folder = Path(policies_dir)
    if not folder.is_dir():
        raise PolicyError(None, "not a directory of policy files", str(folder))
    others: dict[str, Policy] = {}
    for path in sorted(folder.glob("*.toml")):
        policy = load_policy(path)
        if policy.id == default.id:
            if policy != default:
                raise PolicyError("id", f"{policy.id!r} is the default programme's id, with other values",
                                  str(path))
        elif policy.id in others:
            raise PolicyError("id", f"{policy.id!r} is already the id of another file", str(path))
        else:
            others[policy.id] = policy
    return Programmes(default, tuple(others.values()))


def _percentages(value: Any, key: str, fail) -> tuple[int, ...]:
    """A list of whole percentages, 1 to 100, strictly ascending (`[80, 100]`)."""
    if (not isinstance(value, list) or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 100 for v in value)):
        raise fail(key, "must be a non-empty list of whole percentages, 1 to 100, such as [80, 100]")
    if value != sorted(set(value)):
        raise fail(key, "must be in ascending order, without repeats")
    return tuple(value)


def _risk_fields(data: dict[str, Any], fail) -> dict[str, Any]:
    """`eligible_resources`, `require_contracts` and `[risk]` (docs/POLICY.md#risk), each optional."""
    out: dict[str, Any] = {}
    if "eligible_resources" in data:
        patterns = data["eligible_resources"]
        if not isinstance(patterns, list) or not patterns:
            raise fail("eligible_resources", 'must be a non-empty list of patterns such as "gpu.*"')
        for i, p in enumerate(patterns):
            if not isinstance(p, str) or not _RESOURCE.fullmatch(p) or "[" in p:
                raise fail(f"eligible_resources[{i}]", "must be a resource name or a pattern with * and ?")
        out["eligible_resources"] = tuple(patterns)
    if "require_contracts" in data:
        if not isinstance(data["require_contracts"], bool):
            raise fail("require_contracts", "must be true or false")
        out["require_contracts"] = data["require_contracts"]
    if "risk" not in data:
        return out
    risk = data["risk"]
    if not isinstance(risk, dict):
        raise fail("risk", "must be a table [risk]")
    unknown = sorted(set(risk) - _RISK)
    if unknown:
        raise fail(f"risk.{unknown[0]}", "unknown key")
    missing = sorted(_RISK - set(risk))
    if missing:
        raise fail(f"risk.{missing[0]}", "missing")

    def fraction(key: str, minimum: int) -> Fraction:
        v = risk[key]
        if not isinstance(v, str) or not _RATE.fullmatch(v):
            raise fail(f"risk.{key}", 'must be an exact string such as "0.2" or "3", not a float')
        f = Fraction(v)
        if f < minimum:
            raise fail(f"risk.{key}", f"must be >= {minimum}")
        return f

    def whole(table: dict[str, Any], key: str, name: str, top: int | None) -> int:
        v = table[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (top is not None and v > top):
            raise fail(name, "must be an integer" + (f" 0–{top}" if top is not None else " >= 0 (fen)"))
        return v

    weights = risk["weights"]
    if not isinstance(weights, dict):
        raise fail("risk.weights", "must be a table [risk.weights]")
    for key in sorted(set(weights) ^ set(SIGNALS)):
        raise fail(f"risk.weights.{key}", "unknown signal" if key in weights else "missing")
    out["risk"] = RiskPolicy(
        price_tolerance=fraction("price_tolerance", 0),
        spike_factor=fraction("spike_factor", 1),
        spike_floor=whole(risk, "spike_floor", "risk.spike_floor", None),
        review_threshold=whole(risk, "review_threshold", "risk.review_threshold", 100),
        weights={k: whole(weights, k, f"risk.weights.{k}", 100) for k in SIGNALS},
    )
    return out


def _check_keys(data: dict[str, Any], source: str) -> None:
    """Every key present, none unknown, tables are tables."""
    _check_names(data, _TOP, "", source)
    for table, keys in _TABLES.items():
        if table not in data:
            continue  # a missing required table is reported by _check_names above
        if not isinstance(data[table], dict):
            raise PolicyError(table, f"must be a table [{table}]", source)
        _check_names(data[table], keys, f"{table}.", source)


def _check_names(found: dict[str, Any], wanted: set[str], prefix: str, source: str) -> None:
    unknown = sorted(set(found) - wanted)
    missing = sorted(k for k in wanted - set(found) if prefix + k not in _OPTIONAL)
    if unknown:
        raise PolicyError(prefix + unknown[0], "unknown key", source)
    if missing:
        raise PolicyError(prefix + missing[0], "missing", source)
