"""ingest batches: one row per ingested batch, for the providers' console page

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-29 03:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision = '0005'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ingest_batch',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider_id', sa.String(length=63), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.Column('received_at', kernel.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('records', sa.Integer(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('rejected_by_code', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_batch'))
    )
    op.create_index('ix_ingest_batch_provider_received', 'ingest_batch', ['provider_id', 'received_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_ingest_batch_provider_received', table_name='ingest_batch')
    op.drop_table('ingest_batch')
