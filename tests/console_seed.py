"""A reconciled month for the console tests, built through the domain services.

Period 2026-10 (inside the policy window, and closed). Four enterprises:
- A (南湖区, a model filing in 2026: cap ¥5,000,000): one clean invoice → verified,
  payable ¥1,234,567.89; usage from both providers over three months for the spend chart;
- B (秀洲区): a clean invoice and one whose metered usage differs → flagged, payable > 0;
- C (嘉善县): a large clean claim → verified, 95 % of the ¥2,000,000 cap reserved (near the cap);
- D (嘉善县): claims an invoice that does not exist → flagged, payable 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from billing.claims import submit_claim
from billing.invoices import submit_invoice
from billing.policy_file import load_policy
from billing.reconciliation import reconcile
from kernel.db import Database
from kernel.keys import issue_key
from metering.batches import record_batch
from metering.ingest import ingest_records
from metering.models import Enterprise, ModelFiling, Provider
from voucher.cli_demo import make_uscc

PERIOD = "2026-10"
YEAR = 2026
JX, WZ = "jx-zhisuan", "wz-chaosuan"


@dataclass
class Seeded:
    usccs: dict[str, str]
    keys: dict[str, str]
    claims: dict[str, str] = field(default_factory=dict)  # A, B, C, D -> clm_…


def _usage(session, provider: str, uscc: str, period: str, amount: int, n: int) -> None:
    year, month = map(int, period.split("-"))
    ended = datetime(year, month, 10, 4, tzinfo=UTC) + timedelta(minutes=n)
    result = ingest_records(session, provider, [{
        "record_id": f"{provider}-{uscc[-6:]}-{period}-{n}", "enterprise_uscc": uscc,
        "resource": "gpu.h800", "unit": "gpu_hour", "quantity": "10",
        "started_at": (ended - timedelta(hours=1)).isoformat(), "ended_at": ended.isoformat(),
        "amount": amount, "currency": "CNY"}])
    assert result.accepted == 1, result.results
    record_batch(session, provider, "api", result)


def _invoice(session, provider: str, no: str, uscc: str, amount: int) -> None:
    submit_invoice(session, provider, invoice_no=no, enterprise_uscc=uscc, period=PERIOD,
                   amount=amount, tax_amount=amount * 6 // 106, issued_on=date(2026, 10, 31))


def seed(db: Database, names: str = "zh") -> Seeded:
    """Register, meter, invoice, claim and reconcile PERIOD. `names="en"` uses ASCII names."""
    policy = load_policy(None)
    u = {k: make_uscc(500 + i) for i, k in enumerate("ABCD")}
    zh = names == "zh"
    ent_names = {"A": "嘉兴禾城智能科技有限公司" if zh else "Hecheng AI Ltd",
                 "B": "秀洲视觉算法有限公司" if zh else "Xiuzhou Vision Ltd",
                 "C": "嘉善大模型研究院" if zh else "Jiashan LLM Institute",
                 "D": "嘉善数据服务有限公司" if zh else "Jiashan Data Ltd"}
    counties = {"A": "南湖区", "B": "秀洲区", "C": "嘉善县", "D": "嘉善县"} if zh else \
        {"A": "Nanhu", "B": "Xiuzhou", "C": "Jiashan", "D": "Jiashan"}
    with db.session() as s, s.begin():
        s.add_all([
            Provider(id=JX, name="嘉兴智算中心" if zh else "Jiaxing AI Computing Centre",
                     kind="intelligent_computing", county=counties["A"], listed_from=date(2025, 5, 13)),
            Provider(id=WZ, name="乌镇超算中心" if zh else "Wuzhen Supercomputing Centre",
                     kind="supercomputing", county=counties["B"], listed_from=date(2025, 5, 13)),
        ])
        s.add_all([Enterprise(uscc=u[k], name=ent_names[k], county=counties[k], eligible=True)
                   for k in "ABCD"])
        s.flush()
        s.add(ModelFiling(enterprise_uscc=u["A"], filing_no="Zhejiang-JX-202604",
                          model_name="禾城大模型" if zh else "Hecheng LLM", obtained_on=date(2026, 4, 1)))
        keys = {"finance": issue_key(s, "finance", None)[1],
                "provider": issue_key(s, "provider", JX)[1],
                "enterprise": issue_key(s, "enterprise", u["A"])[1],
                "enterprise_b": issue_key(s, "enterprise", u["B"])[1]}
    seeded = Seeded(u, keys)

    with db.session() as s, s.begin():
        for n, (period, amount) in enumerate([("2026-08", 8_800_000), ("2026-09", 12_345_600)]):
            _usage(s, JX, u["A"], period, amount, n)
            _usage(s, WZ, u["A"], period, amount // 2, n)
        _usage(s, JX, u["A"], PERIOD, 246_913_578, 10)  # ¥2,469,135.78 → subsidy ¥1,234,567.89
        _usage(s, WZ, u["A"], PERIOD, 3_000_000, 11)
        _usage(s, JX, u["B"], PERIOD, 20_000_000, 12)
        _usage(s, WZ, u["B"], PERIOD, 10_000_000, 13)
        _usage(s, JX, u["C"], PERIOD, 380_000_000, 14)
        _invoice(s, JX, "JX-2026-10-A", u["A"], 246_913_578)
        _invoice(s, JX, "JX-2026-10-B", u["B"], 20_000_000)
        _invoice(s, WZ, "WZ-2026-10-B", u["B"], 10_500_000)  # metered ¥100,000.00, invoiced ¥105,000.00
        _invoice(s, JX, "JX-2026-10-C", u["C"], 380_000_000)
        _invoice(s, WZ, "WZ-2026-10-A", u["A"], 3_000_000)  # on file, left for the claim form

    with db.session() as s, s.begin():
        items = {
            "A": [(JX, "JX-2026-10-A", 246_913_578)],
            "B": [(JX, "JX-2026-10-B", 20_000_000), (WZ, "WZ-2026-10-B", 10_500_000)],
            "C": [(JX, "JX-2026-10-C", 380_000_000)],
            "D": [(JX, "JX-2026-10-NOPE", 5_000_000)],
        }
        for k, rows in items.items():
            claim = submit_claim(s, u[k], PERIOD, [
                {"provider_id": p, "invoice_no": no, "amount_paid": a} for p, no, a in rows], [])
            seeded.claims[k] = f"clm_{claim.id}"
    with db.session() as s, s.begin():
        reconcile(s, policy, PERIOD)
    return seeded


def provider_file(directory: Path, uscc: str) -> Path:
    """A CSV adapter file for JX mapping tenant `hecheng` to `uscc` (GPU-hours at ¥8)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{JX}.toml"
    path.write_text(f'''[adapter]
type = "csv"
columns = {{record_id = "id", tenant = "customer", resource = "sku", quantity = "qty", started_at = "start", ended_at = "end"}}
timezone = "Asia/Shanghai"

[tenants]
"hecheng" = "{uscc}"

[prices]
"gpu" = 800
''', encoding="utf-8")
    return path
