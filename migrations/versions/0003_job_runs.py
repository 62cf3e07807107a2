"""job runs: one row per (job, period), claimed before a scheduled run starts

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-29 02:30:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kernel.db

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_run',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('period', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('process', sa.String(length=128), nullable=False),
    sa.Column('started_at', kernel.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', kernel.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', kernel.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_run')),
    sa.UniqueConstraint('job', 'period', name=op.f('uq_job_run_job'))
    )


def downgrade() -> None:
    op.drop_table('job_run')
