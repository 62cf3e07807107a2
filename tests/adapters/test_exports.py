"""CSV and JSONL provider exports → push-API records (adapters/exports.py)."""

from __future__ import annotations

import io
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from stdnum.cn import uscc as uscc_mod

from adapters.config import ConfigError, ProviderConfig, load_provider_config
from adapters.exports import ExportError, parse_csv, parse_jsonl
from metering.records import UsageRecordIn


def make_uscc(n: int) -> str:
    body = f"91330402MA{n:07d}"
    return body + uscc_mod.calc_check_digit(body)


ACME, BETA, DIRECT = make_uscc(11), make_uscc(12), make_uscc(13)
COLUMNS = {
    "record_id": "id",
    "tenant": "customer",
    "resource": "sku",
    "quantity": "qty",
    "unit": "unit",
    "started_at": "start",
    "ended_at": "end",
    "amount": "fee_fen",
}
PRICES = {"gpu": 800, "gpu.a100": 1200, "cpu": 5}
HEADER = "id,customer,sku,qty,unit,start,end,fee_fen"


def make_config(
    type_: str = "csv", timezone: str = "Asia/Shanghai", **settings: Any
) -> ProviderConfig:
    return ProviderConfig(
        provider_id="jx-cloud",
        type=type_,
        cluster="jx-cloud",
        settings={"columns": dict(COLUMNS), **settings},
        tenants={"acme": ACME, "beta": BETA},
        prices=dict(PRICES),
        timezone=timezone,
    )


def csv_text(*rows: str, header: str = HEADER) -> str:
    return "\r\n".join([header, *rows]) + "\r\n"


def test_columns_are_mapped_to_push_api_records():
    text = csv_text(
        "r-1,acme,gpu.a100,12.5,gpu_hour,2025-06-01T08:00:00+08:00,2025-06-01T20:30:00+08:00,15000",
        "r-2,beta,cpu,100,core_hour,2025-06-02 00:00:00,2025-06-02 10:00:00,500",
    )
    out = parse_csv(text, make_config())

    assert out.skipped == []
    assert out.records == [
        {
            "record_id": "r-1",
            "enterprise_uscc": ACME,
            "resource": "gpu.a100",
            "unit": "gpu_hour",
            "quantity": "12.5",
            "started_at": "2025-06-01T00:00:00+00:00",
            "ended_at": "2025-06-01T12:30:00+00:00",
            "amount": 15000,
            "currency": "CNY",
            "metadata": {"tenant": "acme"},
        },
        {
            "record_id": "r-2",
            "enterprise_uscc": BETA,
            "resource": "cpu",
            "unit": "core_hour",
            "quantity": "100",
            # no offset in the export: read in the provider's timezone (Asia/Shanghai)
            "started_at": "2025-06-01T16:00:00+00:00",
            "ended_at": "2025-06-02T02:00:00+00:00",
            "amount": 500,
            "currency": "CNY",
            "metadata": {"tenant": "beta"},
        },
    ]
    for record in out.records:  # the push API's own schema accepts every record as is
        UsageRecordIn.model_validate(record)


def test_record_ids_are_kept_as_given_without_cluster_prefix():
    out = parse_csv(
        csv_text("INV-2025-06/0001,acme,gpu,1,,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,"),
        make_config(),
    )
    assert [r["record_id"] for r in out.records] == ["INV-2025-06/0001"]


def test_excel_csv_with_bom_and_crlf_reads_the_first_header_column():
    text = csv_text("r-1,acme,gpu,2,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,1600")
    data = text.encode("utf-8-sig")
    assert data.startswith(b"\xef\xbb\xbf")

    from_bytes = parse_csv(data, make_config())
    from_binary_file = parse_csv(io.BytesIO(data), make_config())
    from_text_with_bom = parse_csv("\ufeff" + text, make_config())

    assert [r["record_id"] for r in from_bytes.records] == ["r-1"]
    assert from_bytes.records == from_binary_file.records == from_text_with_bom.records


def test_gbk_encoded_export_with_semicolons():
    header = "编号;客户;规格;用量;单位;开始;结束;费用"
    cols = {
        "record_id": "编号",
        "tenant": "客户",
        "resource": "规格",
        "quantity": "用量",
        "unit": "单位",
        "started_at": "开始",
        "ended_at": "结束",
        "amount": "费用",
    }
    text = "\n".join(
        [header, "r-9;acme;gpu;1;gpu_hour;2025-06-01 08:00:00;2025-06-01 09:00:00;800"]
    )
    config = make_config(columns=cols, delimiter=";", encoding="gbk")
    out = parse_csv(io.BytesIO(text.encode("gbk")), config)
    assert [(r["record_id"], r["started_at"]) for r in out.records] == [
        ("r-9", "2025-06-01T00:00:00+00:00")
    ]


def test_bad_rows_are_reported_with_line_and_column():
    text = csv_text(
        "ok-1,acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",  # line 2
        "bad-q,acme,gpu,lots,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",  # 3
        "bad-t,acme,gpu,1,gpu_hour,yesterday,2025-06-01T01:00:00Z,800",  # 4
        "bad-a,acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,8.5",  # 5
        "bad-u,acme,gpu,1,gpu_day,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",  # 6
        "bad-r,acme,gpu,1,gpu_hour,2025-06-01T02:00:00Z,2025-06-01T01:00:00Z,800",  # 7
        "short,acme,gpu,1",  # 8
        "",  # 9: blank, skipped silently
        ",acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",  # 10
        "neg,acme,gpu,-1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",  # 11
        "ok-2,acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",  # 12
    )
    out = parse_csv(text, make_config())

    assert [r["record_id"] for r in out.records] == ["ok-1", "ok-2"]
    bad = {s.line: s.detail for s in out.skipped if s.reason == "bad_row"}
    assert sorted(bad) == [3, 4, 5, 6, 7, 8, 10, 11]
    assert bad[3].startswith("column 'qty' (quantity)") and "'lots'" in bad[3]
    assert bad[4].startswith("column 'start' (started_at)") and "yesterday" in bad[4]
    assert bad[5].startswith("column 'fee_fen' (amount)") and "fen" in bad[5]
    assert bad[6].startswith("column 'unit' (unit)") and "gpu_day" in bad[6]
    assert bad[7].startswith("column 'end' (ended_at)") and "before" in bad[7]
    assert bad[8] == "4 fields, the header has 8"
    assert bad[10].startswith("column 'id' (record_id)")
    assert bad[11].startswith("column 'qty' (quantity)")


def test_quoted_multiline_field_counts_from_its_first_line():
    text = csv_text(
        '"r-1",acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800',  # 2
        '"multi\nline",acme,gpu,x,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800',  # 3-4
        "r-3,acme,gpu,y,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",  # 5
    )
    out = parse_csv(text, make_config())
    assert [s.line for s in out.skipped] == [3, 5]


def test_unmapped_tenants_are_skipped_and_named():
    text = csv_text(
        "r-1,acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",
        "r-2,stranger,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",
        "r-3,stranger,gpu,2,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,1600",
    )
    out = parse_csv(text, make_config())
    assert [r["record_id"] for r in out.records] == ["r-1"]
    assert out.skipped_by_reason() == {"unmapped_tenant": 2}
    assert out.unmapped_tenants() == {"stranger"}
    assert [s.line for s in out.skipped] == [3, 4]


def test_uscc_column_instead_of_tenant():
    cols = {k: v for k, v in COLUMNS.items() if k != "tenant"} | {"enterprise_uscc": "uscc"}
    header = "id,uscc,sku,qty,unit,start,end,fee_fen"
    text = csv_text(
        f"r-1,{DIRECT.lower()},gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",
        "r-2,91330402MA0000000X,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",
        header=header,
    )
    out = parse_csv(text, make_config(columns=cols))
    assert [(r["record_id"], r["enterprise_uscc"]) for r in out.records] == [("r-1", DIRECT)]
    assert "metadata" not in out.records[0]
    [bad] = out.skipped
    assert (bad.reason, bad.line) == ("bad_row", 3)
    assert bad.detail.startswith("column 'uscc' (enterprise_uscc)")


def test_amount_is_computed_from_prices_when_absent():
    cols = {k: v for k, v in COLUMNS.items() if k not in ("amount", "unit")}
    header = "id,customer,sku,qty,start,end"
    text = csv_text(
        "r-1,acme,GPU.A100,1.3333334,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z",
        "r-2,acme,gpu.h800,0.0000005,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z",
        "r-3,acme,cpu,99.9,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z",
        "r-4,acme,npu.910b,1,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z",
        header=header,
    )
    out = parse_csv(text, make_config(columns=cols))
    got = {
        r["record_id"]: (r["resource"], r["unit"], r["quantity"], r["amount"]) for r in out.records
    }
    assert got == {
        # quantity rounded half-up to 6 decimals first, then amount = round_half_up(q × price)
        "r-1": ("gpu.a100", "gpu_hour", "1.333333", 1600),  # 1.333333 × 1200 = 1599.9996
        "r-2": ("gpu.h800", "gpu_hour", "0.000001", 0),  # falls back to the "gpu" price
        "r-3": ("cpu", "core_hour", "99.9", 500),  # 499.5 → 500 (half-up)
    }
    [bad] = out.skipped  # no unit can be told for "npu"
    assert (bad.line, bad.reason) == (5, "bad_row") and "(unit)" in bad.detail


def test_empty_amount_cell_is_computed_and_missing_price_is_reported():
    config = replace(make_config(), prices={"cpu": 5})
    text = csv_text(
        "r-1,acme,cpu,10,,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,",
        "r-2,acme,gpu,1,,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,",
        "r-3,acme,gpu,1,,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,900",
    )
    out = parse_csv(text, config)
    assert [(r["record_id"], r["amount"]) for r in out.records] == [("r-1", 50), ("r-3", 900)]
    assert [(s.reason, s.line) for s in out.skipped] == [("no_price", 3)]


def test_time_format_and_amount_in_yuan_and_sku_mapping():
    text = csv_text("r-1,acme,A100-80G,2,,01/06/2025 08:00,01/06/2025 09:00,19.99")
    config = make_config(
        time_format="%d/%m/%Y %H:%M", amount_unit="yuan", resources={"A100-80G": "gpu.a100"}
    )
    [record] = parse_csv(text, config).records
    assert record["resource"] == "gpu.a100"
    assert record["started_at"] == "2025-06-01T00:00:00+00:00"
    assert record["amount"] == 1999
    bad = parse_csv(csv_text("r-1,acme,gpu,1,,01/06/2025 08:00,01/06/2025 09:00,0.005"), config)
    assert bad.skipped[0].detail.startswith("column 'fee_fen' (amount)")


def test_same_record_id_twice_is_a_duplicate_or_a_bad_row():
    row = "r-1,acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800"
    text = csv_text(row, row, row.replace(",800", ",801"))
    out = parse_csv(text, make_config())
    assert len(out.records) == 1
    assert [(s.reason, s.line) for s in out.skipped] == [("duplicate_row", 3), ("bad_row", 4)]
    assert "line 2" in out.skipped[1].detail


def test_header_missing_a_named_column_is_a_file_error():
    text = csv_text(
        "r-1,acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z", header="id,customer,sku,qty,unit,start"
    )
    with pytest.raises(ExportError, match="'end' \\(ended_at\\)"):
        parse_csv(text, make_config())


def test_no_column_map_means_push_api_field_names(tmp_path: Path):
    path = tmp_path / "jx-cloud.toml"
    path.write_text(f'[adapter]\ntype = "csv"\n[tenants]\nacme = "{ACME}"\n[prices]\ngpu = 800\n')
    config = load_provider_config(path)
    text = (
        "record_id,enterprise_uscc,resource,unit,quantity,started_at,ended_at,amount,currency\n"
        f"r-1,{DIRECT},gpu.h800,gpu_hour,3,2025-06-01T00:00:00+08:00,2025-06-01T03:00:00+08:00,2400,CNY\n"
    )
    [record] = parse_csv(text, config).records
    assert record["enterprise_uscc"] == DIRECT and record["quantity"] == "3"
    assert record["started_at"] == "2025-05-31T16:00:00+00:00"  # offset kept, emitted in UTC


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="columns.customer"):
        parse_csv("", make_config(columns={"customer": "x"}))
    with pytest.raises(ConfigError, match="delimiter"):
        parse_csv("", make_config(delimiter=";;"))
    with pytest.raises(ConfigError, match="encoding"):
        parse_csv("", make_config(encoding="no-such-codec"))


def test_jsonl_rows_with_line_numbers_and_exact_numbers():
    lines = [
        '{"id": "j-1", "customer": "acme", "sku": "gpu.a100", "qty": 0.1, "start": "2025-06-01T00:00:00Z",'
        ' "end": "2025-06-01T00:06:00Z"}',
        "",
        "not json",
        '["an", "array"]',
        '{"id": 7, "customer": "beta", "sku": "cpu", "qty": 64, "start": 1748736000, "end": 1748739600,'
        ' "fee_fen": 320}',
        '{"id": "j-3", "customer": "ghost", "sku": "gpu", "qty": "1", "start": "2025-06-01T00:00:00Z",'
        ' "end": "2025-06-01T01:00:00Z"}',
        '{"id": "j-4", "customer": "acme", "sku": "gpu", "start": "2025-06-01T00:00:00Z",'
        ' "end": "2025-06-01T01:00:00Z"}',
    ]
    out = parse_jsonl("\n".join(lines) + "\n", make_config("jsonl"))
    assert [(r["record_id"], r["quantity"], r["amount"]) for r in out.records] == [
        ("j-1", "0.1", 120),  # 0.1 read as Decimal, not 0.1000000000000000055…
        ("7", "64", 320),
    ]
    assert out.records[1]["started_at"] == "2025-06-01T00:00:00+00:00"  # epoch seconds
    assert [(s.reason, s.line) for s in out.skipped] == [
        ("bad_row", 3),
        ("bad_row", 4),
        ("unmapped_tenant", 6),
        ("bad_row", 7),
    ]
    assert out.skipped[-1].detail == "column 'qty' (quantity): is missing"
    for record in out.records:
        UsageRecordIn.model_validate(record)
        assert Decimal(record["quantity"]) == Decimal(record["quantity"]).quantize(
            Decimal("0.000001")
        )


def test_provider_file_with_inline_column_table(tmp_path: Path):
    path = tmp_path / "jx-cloud.toml"
    path.write_text(
        "[adapter]\n"
        'type = "csv"\n'
        'timezone = "Asia/Shanghai"\n'
        'columns = {record_id="id", tenant="customer", resource="sku", quantity="qty", unit="unit",'
        ' started_at="start", ended_at="end", amount="fee_fen"}\n'
        "[tenants]\n"
        f'"acme" = "{ACME}"\n'
        "[prices]\n"
        '"gpu" = 800\n'
    )
    text = csv_text("r-1,acme,gpu,2,,2025-06-01 08:00:00,2025-06-01 09:00:00,")
    [record] = parse_csv(text, load_provider_config(path)).records
    assert (record["started_at"], record["unit"], record["amount"]) == (
        "2025-06-01T00:00:00+00:00",
        "gpu_hour",
        1600,
    )


def test_zero_quantity_rows_are_skipped_and_counted_never_pushed():
    text = csv_text(
        "r-1,acme,gpu,0,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",
        "r-2,acme,gpu,0.0000004,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,",
        "r-3,acme,gpu,1,gpu_hour,2025-06-01T00:00:00Z,2025-06-01T01:00:00Z,800",
    )
    out = parse_csv(text, make_config())
    assert [r["record_id"] for r in out.records] == ["r-3"]
    assert out.skipped_by_reason() == {"zero_quantity": 2}
    assert [s.line for s in out.skipped] == [2, 3]


def test_a_tenant_map_with_separators_yields_the_canonical_uscc(tmp_path: Path):
    spaced = f"{ACME[:8]}-{ACME[8:]}".lower()
    path = tmp_path / "jx-cloud.toml"
    path.write_text(f'[adapter]\ntype = "csv"\n[tenants]\nacme = "{spaced}"\n[prices]\ngpu = 800\n')
    config = load_provider_config(path)
    assert config.tenants == {"acme": ACME}
    cols = {k: v for k, v in COLUMNS.items() if k != "tenant"} | {"enterprise_uscc": "uscc"}
    text = csv_text(f"r-1,{ACME[:8]} {ACME[8:]},gpu,1,gpu_hour,2025-06-01T00:00:00Z,"
                    "2025-06-01T01:00:00Z,800", header="id,uscc,sku,qty,unit,start,end,fee_fen")
    [rec] = parse_csv(text, make_config(columns=cols)).records
    assert rec["enterprise_uscc"] == ACME
