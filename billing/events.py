"""The claim events a reconciliation raises (docs/API.md#events).

The reconciliation writes one audit entry per run (`reconciliation.run`), not one per claim.
Its outcome for each claim is still an event: `claim.verified` or `claim.flagged` for every
claim the run evaluated (its `reconciled_at` is the run's `last_run_at`) whose status or
payable differs from what its latest event said — a re-run that changes nothing raises no
claim event. Plugged into the outbox by the composition root (api/events.py `install`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import Claim, Reconciliation
from kernel.outbox import Raised, events_of
from kernel.vocabulary import RECONCILED, ClaimStatus, EventType

_TYPE = {ClaimStatus.VERIFIED: EventType.CLAIM_VERIFIED, ClaimStatus.FLAGGED: EventType.CLAIM_FLAGGED}


def claims_reconciled(session: Session, entry: dict[str, Any]) -> list[Raised]:
    """The claim events implied by a `reconciliation.run` audit entry."""
    period = entry["object_id"].removeprefix("rec_")
    run = session.get(Reconciliation, period)
    if run is None or run.last_run_at is None:
        return []
    rows = session.execute(select(Claim.id, Claim.status, Claim.payable).where(
        Claim.period == period, Claim.reconciled_at == run.last_run_at,
        Claim.status.in_(RECONCILED)).order_by(Claim.id)).all()
    ids = [f"clm_{r.id}" for r in rows]
    latest = events_of(session, "claim", ids)
    raised = []
    for row, object_id in zip(rows, ids, strict=True):
        kind = _TYPE[ClaimStatus(row.status)]
        last = latest.get(object_id)
        if last is not None and last.type == kind and last.data["object"].get("payable") == row.payable:
            continue
        raised.append(Raised(kind, "claim", object_id))
    return raised
