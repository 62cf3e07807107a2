"""hold function: a redemption's authorisation applied in one round trip (PostgreSQL)

`voucher_hold(...)` writes what billing/redemptions.py `plan_hold` decided, atomically, in the
one lock order (docs/ARCHITECTURE.md#lock-order, #hold-fast-path): the period's row (shared;
open), the balance row (a conditional UPDATE that also requires the figures the plan was made
from, so a balance that moved since it was read refuses), the redemption row (refused when the
reference is taken), the two postings of the hold, then the audit chain's lock last: the entry
(its hash computed here from the caller's canonical JSON around prev_hash and seq), its event
and the event's webhook deliveries. It decides nothing: every rule stays in Python. NULL means
nothing was written and the caller takes the full path, which answers whatever changed.
SQLite has no such function: there the full path does it all.

Revision ID: 0019
Revises: 0018
"""
from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

CHAIN_LOCK = 0x766F7563_61756474  # kernel/audit.py CHAIN_LOCK, as of this revision

FUNCTION = """
CREATE FUNCTION voucher_hold(
    p_id bigint, p_provider text, p_reference text, p_uscc text, p_period text, p_year integer,
    p_programme text, p_list bigint, p_requested bigint, p_subsidy bigint, p_policy text,
    p_created timestamptz, p_expires timestamptz,
    p_reserved bigint, p_granted bigint, p_row_cap bigint, p_cap bigint, p_basis text,
    p_open_kind text, p_open_amount bigint, p_open_reason text, p_open_entry text,
    p_entry text, p_reason text,
    p_actor_key text, p_actor_role text, p_request_id text, p_action text, p_object_id text,
    p_after text, p_blob_head text, p_blob_tail text,
    p_event_type text, p_event_data text, p_endpoints bigint[], p_give_up timestamptz
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_seq bigint;
    v_prev text;
    v_event bigint;
BEGIN
    -- 1. the period's row, shared (created open on first use, as lock_period does)
    SELECT state INTO v_state FROM billing_period WHERE period = p_period FOR SHARE;
    IF NOT FOUND THEN
        INSERT INTO billing_period (period, state, created_at) VALUES (p_period, 'open', p_created)
        ON CONFLICT (period) DO NOTHING;
        SELECT state INTO v_state FROM billing_period WHERE period = p_period FOR SHARE;
    END IF;
    IF v_state IS DISTINCT FROM 'open' THEN
        RAISE EXCEPTION 'voucher_hold: period % is not open', p_period USING ERRCODE = 'VH001';
    END IF;
    -- 2. the balance row: opened and its cap raised as lock_balances does, then the hold, each
    --    refused unless the row still holds the figures the plan was made from
    IF p_row_cap IS NULL THEN
        INSERT INTO quota_balance (enterprise_uscc, year, programme_id, cap, cap_basis, reserved, granted,
                                   policy_id, updated_at)
        VALUES (p_uscc, p_year, p_programme, 0, p_basis, 0, 0, p_policy, p_created)
        ON CONFLICT DO NOTHING;
    END IF;
    IF p_open_kind IS NOT NULL THEN
        UPDATE quota_balance SET cap = p_cap, cap_basis = p_basis, policy_id = p_policy, updated_at = p_created
         WHERE enterprise_uscc = p_uscc AND year = p_year AND programme_id = p_programme
           AND cap = coalesce(p_row_cap, 0) AND reserved = p_reserved AND granted = p_granted;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'voucher_hold: the balance moved' USING ERRCODE = 'VH002';
        END IF;
        INSERT INTO ledger_posting (entry_id, enterprise_uscc, year, account, amount, kind, claim_id,
                                    policy_id, reason, created_at, redemption_id, programme_id)
        VALUES (p_open_entry, p_uscc, p_year, 'cap_source', -p_open_amount, p_open_kind, NULL, p_policy,
                p_open_reason, p_created, NULL, p_programme),
               (p_open_entry, p_uscc, p_year, 'available', p_open_amount, p_open_kind, NULL, p_policy,
                p_open_reason, p_created, NULL, p_programme);
    END IF;
    UPDATE quota_balance SET reserved = reserved + p_subsidy, updated_at = p_created
     WHERE enterprise_uscc = p_uscc AND year = p_year AND programme_id = p_programme
       AND reserved = p_reserved AND granted = p_granted AND cap = p_cap
       AND reserved + granted + p_subsidy <= cap;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'voucher_hold: the balance moved' USING ERRCODE = 'VH002';
    END IF;
    -- 3. the redemption, unless the reference was taken since the read
    INSERT INTO redemption (id, provider_id, reference, enterprise_uscc, period, year, status,
                            list_amount, requested, subsidy, held, discrepancies, policy_id,
                            created_at, expires_at)
    VALUES (p_id, p_provider, p_reference, p_uscc, p_period, p_year, 'authorized', p_list,
            p_requested, p_subsidy, p_subsidy, '[]'::json, p_policy, p_created, p_expires)
    ON CONFLICT (provider_id, reference) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'voucher_hold: reference % is taken', p_reference USING ERRCODE = 'VH003';
    END IF;
    -- 4. the hold's two postings (ledger.transfer "hold")
    INSERT INTO ledger_posting (entry_id, enterprise_uscc, year, account, amount, kind, claim_id,
                                policy_id, reason, created_at, redemption_id, programme_id)
    VALUES (p_entry, p_uscc, p_year, 'available', -p_subsidy, 'hold', NULL, p_policy, p_reason,
            p_created, p_id, p_programme),
           (p_entry, p_uscc, p_year, 'reserved', p_subsidy, 'hold', NULL, p_policy, p_reason,
            p_created, p_id, p_programme);
    -- 5. last, the audit chain's lock: the entry, its event, the event's deliveries
    PERFORM pg_advisory_xact_lock(CHAIN_LOCK);
    SELECT seq, hash INTO v_seq, v_prev FROM audit_event ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        v_seq := 0;
        v_prev := repeat('0', 64);
    END IF;
    v_seq := v_seq + 1;
    INSERT INTO audit_event (seq, at, actor_key_id, actor_role, request_id, action, object_type,
                             object_id, before, after, prev_hash, hash)
    VALUES (v_seq, p_created, p_actor_key, p_actor_role, p_request_id, p_action, 'redemption',
            p_object_id, 'null'::json, p_after::json, v_prev,
            encode(sha256(convert_to(p_blob_head || v_prev || p_blob_tail || v_seq::text || '}',
                                     'UTF8')), 'hex'));
    INSERT INTO event (type, created, audit_seq, object_type, object_id, enterprise_uscc,
                       provider_id, data)
    VALUES (p_event_type, p_created, v_seq, 'redemption', p_object_id, p_uscc, p_provider,
            p_event_data::json)
    RETURNING id INTO v_event;
    INSERT INTO webhook_delivery (endpoint_id, event_id, status, attempts, created_at,
                                  next_attempt_at, give_up_at)
    SELECT e, v_event, 'pending', 0, p_created, p_created, p_give_up FROM unnest(p_endpoints) AS e;
    RETURN v_event;
END
$$
""".replace("CHAIN_LOCK", str(CHAIN_LOCK))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS voucher_hold")
