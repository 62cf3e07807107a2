"""`voucher demo`: a small programme on the configured database, for `make run`."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import click
from stdnum.cn import uscc as uscc_mod

from config.settings import Settings
from metering.models import Enterprise, ModelFiling, Provider
from voucher.db import Database
from voucher.keys import issue_key

COUNTIES = ["南湖区", "秀洲区", "嘉善县", "平湖市", "海盐县", "海宁市", "桐乡市"]


def make_uscc(seq: int, region: str = "330402") -> str:
    """A valid USCC (GB 32100-2015) for demo enterprises: 91 + region + org code + check."""
    body = f"91{region}MA{seq:07d}"[:17]
    body = body[:-1] + "0123456789ABCDEFGHJKLMNPQRTUWXY"[seq % 31]
    return body + uscc_mod.calc_check_digit(body)


@click.command()
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True)
def demo(base_url: str) -> None:
    """Seed providers, enterprises and keys; print keys and a curl that pushes a record."""
    settings = Settings.from_env()
    db = Database(settings.database_url)
    providers = [
        ("jx-zhisuan", "嘉兴智算中心", "intelligent_computing", "南湖区"),
        ("wz-chaosuan", "乌镇超算中心", "supercomputing", "桐乡市"),
    ]
    with db.session() as session, session.begin():
        for pid, name, kind, county in providers:
            if session.get(Provider, pid) is None:
                session.add(Provider(id=pid, name=name, kind=kind, county=county,
                                     listed_from=date(2025, 5, 13)))
        usccs = [make_uscc(i + 1) for i in range(len(COUNTIES))]
        for i, code in enumerate(usccs):
            if session.get(Enterprise, code) is None:
                session.add(Enterprise(uscc=code, name=f"嘉兴示范人工智能企业{i + 1:02d}",
                                       county=COUNTIES[i], eligible=True))
        session.flush()
        if session.query(ModelFiling).filter_by(filing_no="Zhejiang-JX-202501").first() is None:
            session.add(ModelFiling(enterprise_uscc=usccs[0], filing_no="Zhejiang-JX-202501",
                                    model_name="禾城大模型", obtained_on=date(2025, 3, 1)))
        _, finance_key = issue_key(session, "finance", None)
        _, provider_key = issue_key(session, "provider", "jx-zhisuan")
        _, enterprise_key = issue_key(session, "enterprise", usccs[0])
    db.dispose()

    ended = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    record = {
        "record_id": f"demo-{ended:%Y%m%d%H%M}",
        "enterprise_uscc": usccs[0],
        "resource": "gpu.h800",
        "unit": "gpu_hour",
        "quantity": "8",
        "started_at": (ended - timedelta(hours=1)).isoformat(),
        "ended_at": ended.isoformat(),
        "amount": 12000,
        "currency": "CNY",
    }
    click.echo(f"finance key:    {finance_key}")
    click.echo(f"provider key:   {provider_key}   (jx-zhisuan)")
    click.echo(f"enterprise key: {enterprise_key}   ({usccs[0]})")
    click.echo("\nPush a usage record (run it twice: the second answer is a duplicate):")
    body = json.dumps({"records": [record]}, ensure_ascii=False)
    click.echo(f"curl -s -X POST {base_url}/v1/usage-records -H 'Authorization: Bearer {provider_key}' "
               f"-H 'Content-Type: application/json' -d '{body}'")
