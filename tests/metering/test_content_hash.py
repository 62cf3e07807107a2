"""Every stored record carries its content hash, so the hash's bytes may never change: a replay
pushed after an upgrade must still be a duplicate, not a conflict."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from metering.records import content_hash, validate_record
from tests.factories import make_uscc, record

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def reference_hash(rec) -> str:
    """The canonical form as first defined: json.dumps of the fields, keys sorted, compact."""
    return hashlib.sha256(json.dumps(
        [rec.enterprise_uscc, rec.resource, rec.unit, str(rec.quantity),
         rec.started_at.astimezone(UTC).isoformat(), rec.ended_at.astimezone(UTC).isoformat(),
         rec.amount, rec.currency, rec.metadata],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()).hexdigest()


metadata = st.none() | st.dictionaries(
    st.text(max_size=8),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                 max_leaves=6),
    max_size=4)


@given(md=metadata, resource=st.sampled_from(["gpu.h800", "cpu", "npu.910b"]),
       quantity=st.sampled_from(["1", "12.5", "0.000001", "999999.123456"]))
def test_the_hash_is_the_canonical_json_of_the_record(md, resource, quantity):
    raw = {**record(1, make_uscc(7)), "resource": resource, "quantity": quantity, "metadata": md,
           "started_at": "2026-03-31T23:30:00+08:00", "ended_at": "2026-04-01T00:30:00+08:00"}
    rec = validate_record(raw, "records[0]", NOW, timedelta(minutes=5))
    assert not hasattr(rec, "code"), rec
    assert content_hash(rec) == reference_hash(rec)


def test_unicode_metadata_is_hashed_as_utf8_not_escaped():
    raw = {**record(1, make_uscc(7)), "metadata": {"集群": "嘉兴超算", "note": "é\u2028"}}
    rec = validate_record(raw, "records[0]", NOW, timedelta(minutes=5))
    assert content_hash(rec) == reference_hash(rec)
    assert content_hash(rec) != content_hash(validate_record({**raw, "metadata": {"集群": "嘉兴"}},
                                                             "records[0]", NOW, timedelta(minutes=5)))
