"""Loading policy TOML files: the shipped one loads, every bad key is named."""

from __future__ import annotations

import re
import tomllib
from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest

import config
from billing.policy import Policy, PolicyError
from billing.policy_file import default_policy_path, load_policy
from config.settings import Settings

SHIPPED = default_policy_path().read_text(encoding="utf-8")


def rewrite(key: str, value: str | None) -> str:
    """The shipped file with `key = …` set to a raw TOML value (None deletes the line)."""
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
    assert len(pattern.findall(SHIPPED)) == 1, key
    return pattern.sub("" if value is None else f"{key} = {value}", SHIPPED)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_policy_loads_with_exact_values():
    policy = load_policy(default_policy_path())
    raw = tomllib.loads(SHIPPED)
    assert isinstance(policy, Policy)
    assert policy.id == raw["id"]
    assert isinstance(policy.rate, Fraction) and policy.rate == Fraction(raw["rate"])
    assert policy.cap_standard == raw["caps"]["standard"]
    assert policy.cap_new_model_filing == raw["caps"]["new_model_filing"]
    assert policy.tolerance == raw["reconciliation"]["tolerance"]
    assert type(policy.effective_from) is date and policy.effective_from == raw["effective_from"]
    assert policy.effective_until == raw["effective_until"]


def test_shipped_policy_matches_the_jiaxing_plan():
    """The numbers of 嘉政办发〔2025〕18号 §四(一), checked once against the text."""
    policy = load_policy()
    assert policy.document_no == "嘉政办发〔2025〕18号"
    assert policy.rate == Fraction(1, 2)  # 实际使用金额的50%
    assert policy.cap_standard == 2_000_000 * 100  # 200万元
    assert policy.cap_new_model_filing == 5_000_000 * 100  # 500万元
    assert (policy.effective_from, policy.effective_until) == (
        date(2025, 5, 13),
        date(2027, 12, 31),
    )
    assert policy.stacking == "highest_not_both"


def test_default_path_lives_in_the_config_package():
    assert default_policy_path() == Path(config.__file__).parent / "policies" / "jiaxing-2025.toml"
    assert default_policy_path().is_file()


def test_voucher_policy_env_overrides_the_default(tmp_path, monkeypatch):
    # The environment is read by Settings (the composition root); the loader takes the path.
    path = write(tmp_path, rewrite("id", '"test-policy"'))
    monkeypatch.setenv("VOUCHER_POLICY", str(path))
    assert load_policy(Settings.from_env().policy_path).id == "test-policy"


def test_explicit_path_beats_the_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VOUCHER_POLICY", str(tmp_path / "nowhere.toml"))
    assert load_policy(default_policy_path()).id == tomllib.loads(SHIPPED)["id"]


def test_without_env_the_default_is_loaded(monkeypatch):
    monkeypatch.delenv("VOUCHER_POLICY", raising=False)
    assert load_policy() == load_policy(default_policy_path())


def test_rate_may_be_written_as_a_fraction(tmp_path):
    assert load_policy(write(tmp_path, rewrite("rate", '"1/3"'))).rate == Fraction(1, 3)


def test_missing_file_is_a_policy_error_naming_the_path(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in str(err.value)


def test_invalid_toml_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(write(tmp_path, SHIPPED + "\nrate = = 1\n"))


BAD = [
    # (key to rewrite, raw TOML value or None to delete, key named in the error)
    ("standard", "2000000.0", "caps.standard"),
    ("standard", "0", "caps.standard"),
    ("standard", '"200000000"', "caps.standard"),
    ("standard", "true", "caps.standard"),
    ("new_model_filing", "-5", "caps.new_model_filing"),
    ("new_model_filing", "100", "caps.new_model_filing"),  # below the standard cap
    ("new_model_filing", None, "caps.new_model_filing"),
    ("rate", "0.5", "rate"),
    ("rate", '"1.5"', "rate"),
    ("rate", '"0"', "rate"),
    ("rate", '"50%"', "rate"),
    ("rate", '"1/0"', "rate"),
    ("stacking", '"stack_both"', "stacking"),
    ("rounding", '"half_even"', "rounding"),
    ("effective_until", "2025-01-01", "effective_until"),
    ("effective_from", '"2025-05-13"', "effective_from"),
    ("effective_from", "2025-05-13T00:00:00", "effective_from"),
    ("effective_from", None, "effective_from"),
    ("tolerance", "-1", "reconciliation.tolerance"),
    ("tolerance", "100.0", "reconciliation.tolerance"),
    ("tolerance", None, "reconciliation.tolerance"),
    ("new_filing_years", "0", "new_filing_years"),
    ("new_filing_years", "1.5", "new_filing_years"),
    ("currency", '"USD"', "currency"),
    ("timezone", '"UTC"', "timezone"),
    ("id", '""', "id"),
    ("id", '"Jiaxing Policy"', "id"),
    ("id", None, "id"),
    ("title_zh", "1", "title_zh"),
    ("document_no", '""', "document_no"),
    ("resource_kinds", "[]", "resource_kinds"),
    ("resource_kinds", '["gpu"]', "resource_kinds[0]"),
    ("resource_kinds", '["supercomputing", "supercomputing"]', "resource_kinds"),
]


@pytest.mark.parametrize("key, value, named", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_value_is_refused_naming_its_key(tmp_path, key, value, named):
    path = write(tmp_path, rewrite(key, value))
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert err.value.key == named
    assert str(err.value).startswith(f"{path}: {named}: ")


@pytest.mark.parametrize(
    "text, named",
    [
        ("extra = 1\n" + SHIPPED, "extra"),
        (SHIPPED.replace("[caps]", "[caps]\nstandrd = 1"), "caps.standrd"),
        (
            SHIPPED.replace("[reconciliation]", "[reconciliation]\ntolerence = 1"),
            "reconciliation.tolerence",
        ),
    ],
)
def test_unknown_key_is_refused_rather_than_ignored(tmp_path, text, named):
    with pytest.raises(PolicyError) as err:
        load_policy(write(tmp_path, text))
    assert err.value.key == named


def test_float_money_error_says_why(tmp_path):
    with pytest.raises(
        PolicyError,
        match=r"caps\.standard: must be a positive integer \(fen\), "
        r"not a float",
    ):
        load_policy(write(tmp_path, rewrite("standard", "2000000.0")))


def test_cap_order_error_names_the_file_keys(tmp_path):
    with pytest.raises(PolicyError, match=r"caps\.new_model_filing: must be >= caps\.standard"):
        load_policy(write(tmp_path, rewrite("new_model_filing", "100")))
