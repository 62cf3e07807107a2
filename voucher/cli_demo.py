"""`voucher demo`: a realistic programme on the configured database, for `make run`.

Three providers (two 智算 centres and a 超算 centre) and a fourth settling by redemption at the
provider (voucher/cli_demo_redemption.py), thirty enterprises across Jiaxing's
counties (valid USCCs, four model filings, one ineligible), three months of usage (tens of
thousands of GPU and CPU jobs with real-looking models and prices), the providers'
invoices, the enterprises' claims — with a few of every discrepancy code (docs/API.md#discrepancy-codes) planted — then the
reconciliations, approvals, a rejected resubmission, a record voided after approval (so a
clawback) and the monthly XLSX reports. Everything goes through the service layer
(`ingest_records`, `submit_invoice`, `submit_claim`, `reconcile`, `approve`), never raw SQL.

The data is generated from a fixed seed, and every step is idempotent, so an interrupted
run can simply be run again. A database already seeded is left alone: the command then
prints what is there, with fresh keys and the curl.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select
from stdnum.cn import uscc as uscc_mod

from config.settings import REPO_ROOT
from kernel.periods import (
    date_of_month,
    day_of,
    local_bounds,
    parse_day,
    period_start_date,
    period_year,
    previous_period,
    shift_period,
)
from kernel.vocabulary import ClaimStatus, Discrepancy, label
from voucher import cli_demo_redemption, cli_demo_risk
from voucher.cli_settings import settings as cli_settings

Fen = int

COUNTIES = ["南湖区", "秀洲区", "嘉善县", "平湖市", "海盐县", "海宁市", "桐乡市"]
# GB/T 2260 codes of Jiaxing's districts, counties and county-level cities: USCC digits 3–8.
COUNTY_CODES = {"南湖区": "330402", "秀洲区": "330411", "嘉善县": "330421", "海盐县": "330424",
                "海宁市": "330481", "平湖市": "330482", "桐乡市": "330483"}
SEED = 20250513
BATCH = 1000  # records per ingest transaction
GPU_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CORE_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
OUTSIDE_WINDOW_PERIOD = "2025-04"  # before the plan was issued: the outside_policy_window claim
CODES = (Discrepancy.INVOICE_NOT_FOUND, Discrepancy.INVOICE_AMOUNT_MISMATCH, Discrepancy.INVOICE_CLAIMED_TWICE,
         Discrepancy.USAGE_INVOICE_MISMATCH, Discrepancy.ENTERPRISE_NOT_ELIGIBLE, Discrepancy.PROVIDER_NOT_LISTED,
         Discrepancy.OUTSIDE_POLICY_WINDOW, Discrepancy.CAP_REACHED)


def make_uscc(seq: int, region: str = "330402") -> str:
    """A valid USCC (GB 32100-2015) for demo enterprises: 91 + region + org code + check."""
    body = f"91{region}MA{seq:07d}"[:17]
    body = body[:-1] + "0123456789ABCDEFGHJKLMNPQRTUWXY"[seq % 31]
    return body + uscc_mod.calc_check_digit(body)


# --- the programme ------------------------------------------------------------------------

@dataclass(frozen=True)
class Resource:
    resource: str  # usage-record resource (docs/API.md#usage-endpoints): gpu.<model> or cpu
    unit: str
    model: str  # what the provider's scheduler calls the hardware
    price: Fen  # per unit (GPU-hour or core-hour)


@dataclass(frozen=True)
class DemoProvider:
    id: str
    name: str
    kind: str
    county: str
    cluster: str  # record ids are <cluster>-<job id>, unique per provider
    resources: tuple[Resource, ...]


PROVIDERS = (
    DemoProvider("jx-aicc", "嘉兴人工智能计算中心", "intelligent_computing", "南湖区", "jxai", (
        Resource("gpu.h800", "gpu_hour", "NVIDIA H800 SXM5 80GB", 1480),
        Resource("gpu.a800", "gpu_hour", "NVIDIA A800 SXM4 80GB", 920),
        Resource("gpu.910b", "gpu_hour", "Huawei Ascend 910B 64GB", 640),
    )),
    DemoProvider("wz-aicc", "乌镇智算中心", "intelligent_computing", "桐乡市", "wzic", (
        Resource("gpu.910b", "gpu_hour", "Huawei Ascend 910B 64GB", 600),
        Resource("gpu.l40s", "gpu_hour", "NVIDIA L40S 48GB", 390),
        Resource("gpu.4090", "gpu_hour", "NVIDIA GeForce RTX 4090 24GB", 190),
    )),
    DemoProvider("jx-hpc", "嘉兴超级计算中心", "supercomputing", "秀洲区", "jxhpc", (
        Resource("cpu", "core_hour", "Hygon C86 7285 32C", 6),
        Resource("gpu.a100", "gpu_hour", "NVIDIA A100 PCIe 40GB", 880),
    )),
)
PROVIDER = {p.id: p for p in PROVIDERS}


@dataclass(frozen=True)
class DemoEnterprise:
    name: str
    county: str
    monthly: int  # yuan of compute a month, roughly
    uses: tuple[tuple[str, str], ...]  # (provider id, resource)


def _enterprises(rows: tuple[tuple[str, str, int, str], ...]) -> tuple[DemoEnterprise, ...]:
    """The demo's enterprises from (name, county, monthly, uses) rows; `uses` names what the
    enterprise buys as provider/resource pairs, space-separated."""
    def pair(use: str) -> tuple[str, str]:
        provider_id, resource = use.split("/")
        return provider_id, resource

    return tuple(DemoEnterprise(name, county, monthly, tuple(pair(u) for u in uses.split()))
                 for name, county, monthly, uses in rows)


ENTERPRISES = _enterprises((
    # (name, county, yuan of compute a month roughly, what it buys: provider/resource pairs)
    ("嘉兴禾城大模型科技有限公司",     "南湖区", 2_600_000, "jx-aicc/gpu.h800"),
    ("浙江南湖智谱数据技术有限公司",   "南湖区", 2_200_000, "jx-aicc/gpu.h800 jx-aicc/gpu.a800"),
    ("嘉兴秀水视觉智能有限公司",       "秀洲区",   380_000, "jx-aicc/gpu.910b wz-aicc/gpu.l40s"),
    ("嘉善祥符机器人有限公司",         "嘉善县",   150_000, "wz-aicc/gpu.4090 jx-hpc/cpu"),
    ("海宁潮城医疗影像科技有限公司",   "海宁市",   260_000, "jx-aicc/gpu.a800"),
    ("平湖九龙山智能装备有限公司",     "平湖市",   240_000, "jx-aicc/gpu.910b"),
    ("嘉兴南湖语言智能有限公司",       "南湖区",   310_000, "wz-aicc/gpu.910b"),
    ("桐乡乌镇互联网络科技有限公司",   "桐乡市",   420_000, "wz-aicc/gpu.910b jx-aicc/gpu.a800"),
    ("海盐秦山核能仿真软件有限公司",   "海盐县",   120_000, "jx-hpc/cpu wz-aicc/gpu.l40s"),
    ("嘉兴智能网联汽车研究院有限公司", "秀洲区",   520_000, "jx-aicc/gpu.h800"),
    ("平湖独山港智慧物流有限公司",     "平湖市",    95_000, "wz-aicc/gpu.l40s"),
    ("嘉善县域数字农业科技有限公司",   "嘉善县",    60_000, "wz-aicc/gpu.4090"),
    ("嘉兴长三角材料计算有限公司",     "秀洲区",   180_000, "jx-hpc/cpu jx-hpc/gpu.a100"),
    ("海宁皮革时尚设计智能有限公司",   "海宁市",    45_000, "wz-aicc/gpu.4090"),
    ("桐乡濮院针织智造科技有限公司",   "桐乡市",    70_000, "wz-aicc/gpu.l40s"),
    ("嘉兴光伏组件缺陷检测有限公司",   "秀洲区",   130_000, "jx-aicc/gpu.910b"),
    ("海盐澉浦智能制造有限公司",       "海盐县",    55_000, "jx-hpc/cpu"),
    ("平湖新埭生物医药计算有限公司",   "平湖市",   210_000, "jx-hpc/gpu.a100 jx-aicc/gpu.a800"),
    ("嘉兴子城文旅数字人有限公司",     "南湖区",    85_000, "wz-aicc/gpu.4090"),
    ("嘉善西塘语音交互科技有限公司",   "嘉善县",   150_000, "wz-aicc/gpu.910b"),
    ("浙江禾城多模态智能有限公司",     "南湖区",   460_000, "jx-aicc/gpu.h800 wz-aicc/gpu.910b"),
    ("海宁尖山气象大数据有限公司",     "海宁市",   140_000, "jx-hpc/cpu"),
    ("桐乡石门工业视觉有限公司",       "桐乡市",    65_000, "wz-aicc/gpu.l40s"),
    ("嘉兴湘家荡智慧水务有限公司",     "南湖区",    40_000, "wz-aicc/gpu.4090"),
    ("平湖乍浦港航智能调度有限公司",   "平湖市",    90_000, "jx-aicc/gpu.910b"),
    ("海盐通元电力巡检科技有限公司",   "海盐县",    75_000, "wz-aicc/gpu.l40s"),
    ("嘉兴秀洲高新芯片设计有限公司",   "秀洲区",   330_000, "jx-hpc/cpu jx-aicc/gpu.a800"),
    ("嘉善姚庄精密制造智能有限公司",   "嘉善县",    50_000, "jx-aicc/gpu.910b"),
    ("海宁盐官潮汐能源算法有限公司",   "海宁市",   110_000, "jx-hpc/gpu.a100"),
    ("桐乡崇福皮草电商智能有限公司",   "桐乡市",    80_000, "wz-aicc/gpu.4090"),
))

# Roles in the story (indexes into ENTERPRISES).
HEAVY_NO_FILING = 0  # 50 % of its spend passes the 200万 cap in the second month: cap_reached
FILINGS = {  # index -> (filing no., model, obtained in the demo year?)
    1: ("Zhejiang-NanHuZhiPu-{y}0318", "南湖智谱行业大模型", True),
    7: ("Zhejiang-WuZhenHuLian-{y}0612", "乌镇互联对话模型", True),
    15: ("Zhejiang-GuangFuJianCe-{py}1108", "光伏缺陷检测视觉模型", False),  # last year's: no raise
    20: ("Zhejiang-HeChengDuoMoTai-{y}0226", "禾城多模态大模型", True),
}
OUTSIDE_WINDOW = 2  # also claims April 2025, before the plan took effect
AMOUNT_MISMATCH = 4  # month 1: paid includes a bank fee the invoice does not
CLAWBACK = 5  # month 1: a duplicated job record, voided after approval
NOT_FOUND = 6  # month 2: a typo in the invoice number
CLAIMED_TWICE = 8  # month 2: the claim is submitted again
USAGE_MISMATCH = 10  # month 3: the invoice bills storage that was never metered
NOT_LISTED = 12  # month 1: claims 超算 usage from before jx-hpc joined the catalogue
INELIGIBLE = 29  # registered, but not eligible (e.g. its tax registration is outside Jiaxing)
OTHER_SUBSIDIES = {3: ("省级算力券", 2_000_000), 9: ("市级首台套补助（算力部分）", 5_000_000)}  # fen
# Enterprises with a part in the story always claim; the others now and then skip a month.
STORY = {HEAVY_NO_FILING, OUTSIDE_WINDOW, AMOUNT_MISMATCH, CLAWBACK, NOT_FOUND, CLAIMED_TWICE,
         USAGE_MISMATCH, NOT_LISTED, INELIGIBLE, *FILINGS, *OTHER_SUBSIDIES, *cli_demo_risk.PLANTED}


def demo_periods(policy, now: datetime) -> list[str]:
    """The last three complete months (clamped to the policy window's end)."""
    last = min(previous_period(now, policy.timezone), date_of_month(policy.effective_until))
    return [shift_period(last, -2), shift_period(last, -1), last]


def half_up(x: Decimal) -> int:
    return int(x.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def job_records(rng: random.Random, p: DemoProvider, res: Resource, uscc: str, period: str,
                target: Fen, seq: Counter) -> list[dict[str, Any]]:
    """Finished jobs of one enterprise on one resource in `period`, about `target` fen in all."""
    start, end = local_bounds(period)
    span = int((end - start).total_seconds()) - 3600
    # Job sizes a team of this budget would run: about 150-350 jobs a month of ~5.5 h on
    # average (log-normal), on a realistic number of GPUs (or cores) per job.
    ladder = CORE_SIZES if res.unit == "core_hour" else GPU_SIZES
    ideal = target / (rng.randint(150, 350) * 5.5 * res.price)
    k = min(range(len(ladder)), key=lambda j: abs(math.log(ladder[j] / max(ideal, 0.01))))
    sizes = ladder[max(k - 1, 0):k + 2]
    out, total = [], 0
    while total < target and len(out) < 2000:
        units = rng.choice(sizes)
        minutes = max(5, min(72 * 60, int(rng.lognormvariate(5.4, 0.9))))  # median ≈ 3.7 h
        quantity = (Decimal(units * minutes) / 60).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
        amount = half_up(quantity * res.price)  # from the rounded quantity (docs/API.md#adapters)
        ended = start + timedelta(seconds=3600 + rng.randrange(span))
        seq[p.id] += 1
        job_id = 4_100_000 + seq[p.id]
        out.append({
            "record_id": f"{p.cluster}-{job_id}",
            "enterprise_uscc": uscc,
            "resource": res.resource,
            "unit": res.unit,
            "quantity": str(quantity),
            "started_at": (ended - timedelta(minutes=minutes)).isoformat(timespec="seconds"),
            "ended_at": ended.isoformat(timespec="seconds"),
            "amount": amount,
            "currency": "CNY",
            "metadata": {"job_id": str(job_id), "cluster": p.cluster, "hardware": res.model,
                         ("gpus" if res.unit == "gpu_hour" else "cores"): units},
        })
        total += amount
    return out


@dataclass
class Plan:
    """Everything the demo will write, generated up front from the seed."""

    periods: list[str]
    usccs: list[str]
    records: dict[str, list[dict[str, Any]]]  # provider id -> records
    duplicate: tuple[str, str]  # (provider id, record id) voided after approval

    @property
    def record_count(self) -> int:
        return sum(len(r) for r in self.records.values())


def build_plan(periods: list[str]) -> Plan:
    rng = random.Random(SEED)
    usccs = [make_uscc(i + 1, COUNTY_CODES[e.county]) for i, e in enumerate(ENTERPRISES)]
    records: dict[str, list[dict[str, Any]]] = {p.id: [] for p in PROVIDERS}
    seq: Counter = Counter()
    for n, period in enumerate(periods):
        for i, e in enumerate(ENTERPRISES):
            trend = Decimal(1) + Decimal(n) / 10 + Decimal(rng.randint(-15, 15)) / 100
            for pid, resource in e.uses:
                res = next(r for r in PROVIDER[pid].resources if r.resource == resource)
                target = half_up(Decimal(e.monthly * 100) * trend / len(e.uses))
                records[pid] += job_records(rng, PROVIDER[pid], res, usccs[i], period, target, seq)
    early = PROVIDER["jx-aicc"]
    records["jx-aicc"] += job_records(rng, early, early.resources[1], usccs[OUTSIDE_WINDOW],
                                      OUTSIDE_WINDOW_PERIOD, 3_000_000, seq)
    # The exporter of jx-aicc sent one job of CLAWBACK twice under a new id in month 1.
    original = next(r for r in records["jx-aicc"]
                    if r["enterprise_uscc"] == usccs[CLAWBACK] and r["ended_at"][:7] == periods[0])
    seq["jx-aicc"] += 1
    dup_id = f"{early.cluster}-{4_100_000 + seq['jx-aicc']}"
    records["jx-aicc"].append({**original, "record_id": dup_id,
                               "metadata": {**original["metadata"], "job_id": dup_id.split("-")[1]}})
    plan = Plan(periods, usccs, records, ("jx-aicc", dup_id))
    cli_demo_risk.plant(plan, PROVIDERS, ENTERPRISES)  # one case per risk signal in the latest month
    return plan


# --- seeding through the service layer ----------------------------------------------------

def _registry(db, plan: Plan) -> None:
    from metering.models import Enterprise, ModelFiling, Provider

    first = plan.periods[0]
    year = period_year(plan.periods[-1])
    with db.session() as session, session.begin():
        for p in PROVIDERS:
            if session.get(Provider, p.id) is None:
                # jx-hpc joined the catalogue in the second demo month: its month-1 usage is not eligible.
                listed_from = (period_start_date(shift_period(first, 1)) if p.id == "jx-hpc"
                               else date(2025, 3, 1))
                session.add(Provider(id=p.id, name=p.name, kind=p.kind, county=p.county,
                                     listed_from=listed_from))
        for i, (e, uscc) in enumerate(zip(ENTERPRISES, plan.usccs, strict=True)):
            if session.get(Enterprise, uscc) is None:
                session.add(Enterprise(uscc=uscc, name=e.name, county=e.county, eligible=i != INELIGIBLE))
        session.flush()
        for i, (pattern, model, this_year) in FILINGS.items():
            filing_no = pattern.format(y=year, py=year - 1)
            if session.scalars(select(ModelFiling).where(ModelFiling.filing_no == filing_no)).first() is None:
                obtained = date(year if this_year else year - 1, int(filing_no[-4:-2]), int(filing_no[-2:]))
                session.add(ModelFiling(enterprise_uscc=plan.usccs[i], filing_no=filing_no,
                                        model_name=model, obtained_on=obtained))
        session.flush()
        cli_demo_risk.register(session, plan, PROVIDERS, ENTERPRISES)


def _usage(db, plan: Plan, now: datetime, require_contracts: bool = False) -> Counter:
    from metering.ingest import ingest_records

    outcome: Counter = Counter()
    with click.progressbar(length=plan.record_count, label="usage records", show_pos=True) as bar:
        for pid, records in plan.records.items():
            for i in range(0, len(records), BATCH):
                batch = records[i:i + BATCH]
                with db.session() as session, session.begin():
                    result = ingest_records(session, pid, batch, now=now, require_contracts=require_contracts)
                outcome.update(accepted=result.accepted, duplicates=result.duplicates,
                               rejected=result.rejected)
                bar.update(len(batch))
    if outcome["rejected"]:
        raise click.ClickException(f"{outcome['rejected']} demo records were rejected")
    return outcome


def _invoice_no(period: str, n: int) -> str:
    """A 20-digit 全电发票 number: year, province (33), issuing office, serial."""
    return f"{period[2:4]}332000{n:012d}"


def _invoices(db, plan: Plan) -> dict[tuple[str, str, str], tuple[str, Fen]]:
    """One invoice per provider, enterprise and month with usage: (no., amount) by key."""
    from billing.invoices import submit_invoice
    from metering.models import UsageRecord

    out: dict[tuple[str, str, str], tuple[str, Fen]] = {}
    with db.session() as session, session.begin():
        rows = session.execute(
            select(UsageRecord.period, UsageRecord.provider_id, UsageRecord.enterprise_uscc,
                   func.sum(UsageRecord.amount))
            .where(UsageRecord.provider_id.in_([p.id for p in PROVIDERS]),
                   UsageRecord.enterprise_uscc.in_(plan.usccs),
                   UsageRecord.period.in_([*plan.periods, OUTSIDE_WINDOW_PERIOD]))
            .group_by(UsageRecord.period, UsageRecord.provider_id, UsageRecord.enterprise_uscc)
            .order_by(UsageRecord.period, UsageRecord.provider_id, UsageRecord.enterprise_uscc)
        ).all()
        for n, (period, pid, uscc, metered) in enumerate(rows, 1):
            amount = int(metered)
            if uscc == plan.usccs[USAGE_MISMATCH] and period == plan.periods[2] and pid == "wz-aicc":
                amount += 188_000  # ¥1,880 of storage billed on the compute invoice, never metered
            _, last = local_bounds(period)
            no = _invoice_no(period, n)
            submit_invoice(session, pid, invoice_no=no, enterprise_uscc=uscc, period=period,
                           amount=amount, tax_amount=half_up(Decimal(amount) * 6 / 106),
                           issued_on=(last - timedelta(days=1)).date())
            out[(period, pid, uscc)] = (no, amount)
    return out


def _claims(db, plan: Plan, invoices: dict[tuple[str, str, str], tuple[str, Fen]]) -> int:
    """Each enterprise claims each month what it paid (most of them; a few stories differ)."""
    from billing.claims import submit_claim
    from billing.models import Claim

    rng = random.Random(SEED + 1)
    submitted = 0
    with db.session() as session, session.begin():
        done = {(u, p) for u, p in session.execute(
            select(Claim.enterprise_uscc, Claim.period).where(Claim.enterprise_uscc.in_(plan.usccs)))}
        months = [(m, period) for m, period in enumerate(plan.periods)] + [(None, OUTSIDE_WINDOW_PERIOD)]
        for m, period in months:
            for i, uscc in enumerate(plan.usccs):
                if (uscc, period) in done or (m is None and i != OUTSIDE_WINDOW):
                    continue
                if m is not None and rng.random() < 0.06 and i not in STORY:
                    continue  # some enterprises claim a month late (or never)
                items = []
                for (p, pid, u), (no, amount) in sorted(invoices.items()):
                    if p != period or u != uscc:
                        continue
                    if m == 0 and pid == "jx-hpc" and i != NOT_LISTED:
                        continue  # not yet in the catalogue; most enterprises know not to claim it
                    paid = amount - rng.choice((0, 0, 0, 30, 50))  # bank rounding within tolerance
                    if m == 0 and i == AMOUNT_MISMATCH:
                        paid = amount + 12_000  # the transfer fee was added to the amount paid
                    if m == 1 and i == NOT_FOUND:
                        no = no[:-2] + no[-1] + no[-2]  # two digits swapped when typing it in
                    items.append({"provider_id": pid, "invoice_no": no, "amount_paid": paid})
                if not items:
                    continue
                others = [{"program": OTHER_SUBSIDIES[i][0], "amount": OTHER_SUBSIDIES[i][1]}] \
                    if i in OTHER_SUBSIDIES and m == 1 else []
                submit_claim(session, uscc, period, items, others)
                submitted += 1
                if m == 1 and i == CLAIMED_TWICE:  # resubmitted after a portal timeout
                    submit_claim(session, uscc, period, items, [])
                    submitted += 1
    return submitted


def _reconcile(db, policy, period: str, others=()):
    from billing.reconciliation import reconcile

    with db.session() as session, session.begin():
        run, _ = reconcile(session, policy, period, others=others)
        return run.summary


def _decide(db, policy, period: str, plan: Plan, others=()) -> None:
    """Finance approves the verified claims of the month and rejects the resubmission."""
    from billing.claims import approve, reject
    from billing.models import Claim

    with db.session() as session, session.begin():
        claims = list(session.scalars(select(Claim).where(
            Claim.period == period, Claim.enterprise_uscc.in_(plan.usccs)).order_by(Claim.id)))
        for c in claims:
            if c.status == ClaimStatus.VERIFIED:
                approve(session, policy, c, "核验无误 verified against invoices and metering", others)
            elif (c.status == ClaimStatus.FLAGGED and c.enterprise_uscc == plan.usccs[CLAIMED_TWICE]
                  and any(d["code"] == "invoice_claimed_twice" for i in c.items for d in i.discrepancies)):
                reject(session, policy, c, "重复提交 duplicate submission of an earlier claim", others)


def _void_duplicate(db, plan: Plan) -> None:
    from kernel import audit
    from metering.usage import get_record, void_record

    pid, rid = plan.duplicate
    with db.session() as session, session.begin():
        record = get_record(session, pid, rid, lock=True)
        record, changed = void_record(session, record, "exporter retry sent the job twice")
        if changed:
            audit.append(session, "usage_record.voided", "usage_record", f"ur_{record.id}",
                         before={"status": "active"}, after={"status": "void", "record_id": rid})


def seed(db, policy, plan: Plan, now: datetime, others=()) -> dict[str, Any]:
    """Write the whole programme (idempotent step by step); returns counts for the output.
    `others`: the programmes run beside `policy` (VOUCHER_POLICIES_DIR, docs/POLICY.md#programmes),
    stacked by every reconciliation and decided with every approval."""
    _registry(db, plan)
    usage = _usage(db, plan, now, policy.require_contracts)  # as the push API (docs/POLICY.md#risk)
    invoices = _invoices(db, plan)
    claims = _claims(db, plan, invoices)
    first, second, third = plan.periods
    _reconcile(db, policy, first, others)
    _decide(db, policy, first, plan, others)
    _reconcile(db, policy, second, others)
    _decide(db, policy, second, plan, others)
    _reconcile(db, policy, third, others)  # the latest month stays under review
    _void_duplicate(db, plan)
    for period in (*plan.periods, OUTSIDE_WINDOW_PERIOD):  # clawback, fresh summaries, the April claim
        _reconcile(db, policy, period, others)
    cli_demo_redemption.seed(db, policy, plan, now, others)  # a provider in redemption mode beside the others
    return {"records": usage["accepted"] + usage["duplicates"], "invoices": len(invoices), "claims": claims}


# --- output -------------------------------------------------------------------------------

def _width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E7F else 1 for ch in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    gap = " " * max(width - _width(text), 0)
    return gap + text if right else text + gap


def print_reconciliations(db, periods: list[str]) -> None:
    from billing.models import Reconciliation
    from kernel.money import yuan

    with db.session() as session:
        for period in periods:
            run = session.get(Reconciliation, period)
            if run is None:
                continue
            s, t = run.summary, run.summary["totals"]
            statuses = " · ".join(f"{k} {v}" for k, v in s["by_status"].items() if v)
            click.echo(f"  {period}: {s['claims']} claims ({statuses}); payable ¥{yuan(t['payable'])},"
                       f" granted ¥{yuan(t['granted'])}, clawed back ¥{yuan(t['clawed_back'])}")


def discrepancy_table(db, usccs: list[str]) -> Counter:
    """Every discrepancy code (docs/API.md#discrepancy-codes) found in the demo's claims, with one example each. Returns the counts."""
    from billing.models import Claim
    from metering.models import Enterprise

    counts: Counter = Counter()
    example: dict[str, str] = {}
    with db.session() as session:
        names = dict(session.execute(select(Enterprise.uscc, Enterprise.name)).tuples().all())
        for c in session.scalars(select(Claim).where(Claim.enterprise_uscc.in_(usccs))
                                 .order_by(Claim.period, Claim.id)):
            found = list(c.discrepancies or []) + [d for i in c.items for d in i.discrepancies or []]
            for d in found:
                counts[d["code"]] += 1
                example.setdefault(d["code"], f"clm_{c.id} {c.period} {names.get(c.enterprise_uscc, '')}: "
                                              f"{d['message']}")
    click.echo("\nDiscrepancies found by the reconciliations (docs/API.md#discrepancy-codes):")
    from console.i18n import translate

    for code in CODES:  # the label: the one label table (kernel/vocabulary.py), in English
        click.echo(f"  {code.value:<24} {counts[code]:>3}  {example.get(code, '-')}"
                   f"  [{translate(label(Discrepancy, code))}]")
    return counts


def quota_table(db, policy, usccs: list[str], year: int) -> None:
    from billing.ledger import read_quota
    from kernel.money import yuan
    from metering.models import Enterprise

    click.echo(f"\nQuota {year} (CNY): cap · granted · reserved · remaining")
    header = (_pad("enterprise", 34) + _pad("county", 8) + _pad("basis", 18) + _pad("cap", 15, True)
              + _pad("granted", 15, True) + _pad("reserved", 15, True) + _pad("remaining", 15, True))
    click.echo("  " + header)
    with db.session() as session:
        for uscc in usccs:
            e = session.get(Enterprise, uscc)
            b = read_quota(session, policy, uscc, year)
            if e is None or b is None:
                continue
            basis = b.cap_basis if e.eligible else "not eligible"
            click.echo("  " + _pad(e.name, 34) + _pad(e.county or "", 8) + _pad(basis, 18)
                       + _pad(yuan(b.cap), 15, True) + _pad(yuan(b.granted), 15, True)
                       + _pad(yuan(b.reserved), 15, True) + _pad(yuan(b.remaining), 15, True))


def programme_table(db, programmes, year: int, today: date) -> None:
    """Each programme run beside the default one (docs/POLICY.md#programmes): whom it covers, what
    its claims reserve and were granted after stacking, its budget (billing.budget.figures)."""
    from billing.budget import figures
    from kernel.money import yuan

    if not programmes.others:
        return
    click.echo(f"\nProgrammes beside {programmes.default.id} ({year}; VOUCHER_POLICIES_DIR):")
    with db.session() as session:
        for p in programmes.others:
            fig = figures(session, p, year, today, waitlist=False)
            budget = "unlimited" if fig.annual is None else f"¥{yuan(fig.annual)}, remaining ¥{yuan(fig.remaining)}"
            click.echo(f"  {p.id} ({p.stacking}{f' ≤ {p.stack_limit} of the spend' if p.stack_limit else ''}; "
                       f"{', '.join(p.counties) or 'every county'}): reserved ¥{yuan(fig.reserved)}, "
                       f"granted ¥{yuan(fig.granted)}; budget {budget}")


# fen: ¥50,000,000 (docs/POLICY.md#budget's example), the [budget] the demo shows beside a policy without one
ILLUSTRATIVE_ANNUAL = 5_000_000_000


def print_budget(db, policy, year: int, today: date) -> None:
    """The programme's budget as GET /v1/budget shows it (billing.budget.figures). The shipped
    Jiaxing policy has no `[budget]` (unlimited), so the demo adds, for illustration only, what
    the same use would be against a `[budget] annual` of ILLUSTRATIVE_ANNUAL: computed, never
    written (a budget row belongs to a policy that has one; docs/POLICY.md#budget)."""
    from billing.budget import FORECAST_DAYS, daily_use, figures, forecast_exhausted_on
    from kernel.money import yuan

    with db.session() as session:
        fig = figures(session, policy, year, today)
        since = datetime.combine(today - timedelta(days=FORECAST_DAYS - 1), datetime.min.time(), UTC)
        daily = daily_use(session, year, since, policy.programme)
    used = fig.reserved + fig.granted
    click.echo(f"\nBudget {year} (GET /v1/budget): reserved ¥{yuan(fig.reserved)}, granted ¥{yuan(fig.granted)}, "
               f"waitlisted ¥{yuan(fig.waitlisted)} ({fig.waitlisted_claims} claims)")
    if fig.annual is not None:
        click.echo(f"  annual ¥{yuan(fig.annual)}, remaining ¥{yuan(fig.remaining)}, "
                   f"forecast exhaustion {fig.forecast_exhausted_on or 'none (no use in 90 days)'}")
        return
    annual = ILLUSTRATIVE_ANNUAL
    on = forecast_exhausted_on(annual, used, daily, today)
    click.echo(f"  annual: unlimited (policy {policy.id} has no [budget])")
    click.echo(f"  with [budget] annual = {annual} (¥{yuan(annual)}): {used * 100 // annual} % used, "
               f"¥{yuan(max(annual - used, 0))} remaining, forecast exhaustion {on or 'none'} "
               f"(at the last {FORECAST_DAYS} days' pace)")


def write_reports(db, periods: list[str], directory: Path) -> list[Path]:
    from billing.reports import filename, write_report

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    with db.session() as session:
        for period in periods:
            path = directory / filename(period, "xlsx")
            partial = path.with_name(path.name + ".part")
            with open(partial, "wb") as fh:
                write_report(session, period, "xlsx", fh)
            partial.replace(path)
            paths.append(path)
    return paths


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _events_before(db, settings, deliver_to: str | None) -> tuple[int, str | None]:
    """The id after which this run's events come; with `deliver_to`, the endpoint registered
    first (so the demo's events fan out to it) and its secret."""
    from kernel import webhooks
    from kernel.errors import DomainError
    from kernel.outbox import OutboxEvent

    with db.session() as session, session.begin():
        first = (session.scalar(select(func.max(OutboxEvent.id))) or 0) + 1
        if not deliver_to:
            return first, None
        try:
            endpoint = webhooks.create_endpoint(session, "finance", None, deliver_to, ["*"],
                                                settings.webhook_allowed_hosts)
        except DomainError as exc:
            raise click.ClickException(f"--deliver-to: {exc.message}") from None
        click.echo(f"webhook endpoint we_{endpoint.id} → {deliver_to}\n  secret (shown once): {endpoint.secret}")
        return first, endpoint.secret


def print_events(db, first: int) -> None:
    """The events this run raised (docs/API.md#events): counts by type and the latest few."""
    from kernel.outbox import OutboxEvent

    with db.session() as session:
        rows = list(session.execute(select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.object_id)
                                    .where(OutboxEvent.id >= first).order_by(OutboxEvent.id)))
    click.echo(f"\nEvents raised: {len(rows)}")
    for kind, n in sorted(Counter(r.type for r in rows).items()):
        click.echo(f"  {kind:<26} {n:>6}")
    for r in rows[-5:]:
        click.echo(f"  evt_{r.id}  {r.type}  {r.object_id}")


def _deliver(db, settings, url: str, secret: str | None) -> None:
    """Send the demo's events to `url` now (as `voucher webhooks --once` would)."""
    from adapters.webhooks import deliver_until_idle
    from kernel.webhooks import WebhookDelivery
    from voucher.app import webhook_retry

    deliver_until_idle(db, webhook_retry(settings), limit=100)
    with db.session() as session:
        counts = Counter(session.scalars(select(WebhookDelivery.status)))
    click.echo(f"delivered to {url}: {counts.get('succeeded', 0)} succeeded, "
               f"{counts.get('pending', 0)} pending (retried by `voucher webhooks`), "
               f"{counts.get('failed', 0)} failed")


@click.command()
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--reports-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the monthly XLSX reports go (default var/reports/)")
@click.option("--deliver-to", default=None, metavar="URL",
              help="register a finance webhook endpoint at URL (a host of VOUCHER_WEBHOOK_ALLOWED_HOSTS) "
                   "and deliver the events the demo raises to it")
def demo(base_url: str, reports_dir: Path | None, deliver_to: str | None) -> None:
    """Seed a realistic programme (3 + 1 redeeming providers, 30 enterprises, 3 months); print keys and a curl.

    Safe to run again: a seeded database is left as it is.
    """
    from billing.models import Reconciliation
    from billing.policy_file import load_programmes
    from kernel.db import Database
    from kernel.keys import issue_key
    from metering.models import Provider

    settings = cli_settings()
    db = Database(settings.database_url)
    programmes = load_programmes(settings.policies_dir, settings.policy_path)
    policy = programmes.default
    now = datetime.now(UTC)
    try:
        first_event, secret = _events_before(db, settings, deliver_to)
        with db.session() as session:
            seeded = (session.get(Provider, PROVIDERS[0].id) is not None
                      and session.get(Reconciliation, OUTSIDE_WINDOW_PERIOD) is not None)
            if seeded:  # show the months this database was seeded with
                periods = sorted(p for p in session.scalars(select(Reconciliation.period))
                                 if p != OUTSIDE_WINDOW_PERIOD)[-3:]
        if seeded:
            plan = Plan(periods, [make_uscc(i + 1, COUNTY_CODES[e.county]) for i, e in enumerate(ENTERPRISES)],
                        {}, ("", ""))
            click.echo("demo data already present: left as it is")
        else:
            plan = build_plan(demo_periods(policy, now))
            click.echo(f"seeding a demo programme: {len(PROVIDERS)} providers and 1 redeeming, {len(ENTERPRISES)} enterprises"
                       f" ({len(FILINGS)} model filings, 1 not eligible), {plan.periods[0]} … {plan.periods[-1]}")
            started = datetime.now(UTC)
            counts = seed(db, policy, plan, now, programmes.others)
            took = (datetime.now(UTC) - started).total_seconds()
            click.echo(f"{counts['records']:,} usage records, {counts['invoices']} invoices, "
                       f"{counts['claims']} claims in {took:.1f} s")
        click.echo("\nReconciliations:")
        print_reconciliations(db, [OUTSIDE_WINDOW_PERIOD, *plan.periods])
        discrepancy_table(db, plan.usccs)
        quota_table(db, policy, plan.usccs, period_year(plan.periods[-1]))
        print_budget(db, policy, period_year(plan.periods[-1]), parse_day(day_of(now)))
        programme_table(db, programmes, period_year(plan.periods[-1]), parse_day(day_of(now)))
        cli_demo_risk.print_figures(db, plan)
        cli_demo_redemption.print_figures(db)
        paths = write_reports(db, plan.periods, reports_dir or REPO_ROOT / "var" / "reports")
        click.echo("\nMonthly reports (XLSX):")
        for path in paths:
            click.echo(f"  {_display(path)}")
        click.echo(f"  also: GET {base_url}/v1/reconciliations/{plan.periods[-1]}/report.xlsx (finance key)")

        print_events(db, first_event)
        if deliver_to:
            _deliver(db, settings, deliver_to, secret)

        key_enterprise = plan.usccs[OUTSIDE_WINDOW]
        with db.session() as session, session.begin():
            _, finance_key = issue_key(session, "finance", None)
            _, provider_key = issue_key(session, "provider", PROVIDERS[0].id)
            _, enterprise_key = issue_key(session, "enterprise", key_enterprise)
    finally:
        db.dispose()

    ended = (now - timedelta(hours=1)).replace(second=0, microsecond=0)
    record = {
        "record_id": f"demo-{ended:%Y%m%d%H%M}",
        "enterprise_uscc": key_enterprise,
        "resource": "gpu.h800",
        "unit": "gpu_hour",
        "quantity": "8",
        "started_at": (ended - timedelta(hours=1)).isoformat(),
        "ended_at": ended.isoformat(),
        "amount": 8 * PROVIDERS[0].resources[0].price,
        "currency": "CNY",
    }
    click.echo(f"\nfinance key:    {finance_key}")
    click.echo(f"provider key:   {provider_key}   ({PROVIDERS[0].id})")
    click.echo(f"enterprise key: {enterprise_key}   ({key_enterprise})")
    click.echo(f"\nWeb console: {base_url}/console/sign-in (sign in with any key above); "
               f"API reference: {base_url}/docs")
    click.echo("\nPush a usage record (run it twice: the second answer is a duplicate):")
    body = json.dumps({"records": [record]}, ensure_ascii=False)
    click.echo(f"curl -s -X POST {base_url}/v1/usage-records -H 'Authorization: Bearer {provider_key}' "
               f"-H 'Content-Type: application/json' -d '{body}'")
    click.echo(f"\nIssue the statements of {plan.periods[-2]} through a Stripe-compatible API"
               " (an enterprise with claims still under review stays pending until they are decided):\n"
               f"  VOUCHER_STRIPE_API_BASE=… VOUCHER_STRIPE_API_KEY=… voucher statements --period {plan.periods[-2]}")
