"""Indexes for the new-kind rule's samples (``Store.descriptor_samples``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-05-23

The rule refits its known kinds from the newest labelled inspections and the newest passing ones,
and each refit walked the whole table (or its ``created_at`` index) to find the rare labelled
rows. ``ix_inspections_labelled`` is a partial index of exactly those rows in time order (SQLite
and PostgreSQL both support the WHERE), its predicate spelled out here as 0001 spells out types:
it must stay the same as ``LABELLED`` in ``store/tables.py``, or the query stops using it
(``tests/test_store.py`` checks the plan). ``ix_inspections_verdict_created_at_id`` reads the
passing parts (verdict "ok") newest first without a sort.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LABELLED = sa.text("descriptor IS NOT NULL AND (verdict LIKE 'defect:%' OR review_status IS NOT NULL)")


def upgrade() -> None:
    op.create_index("ix_inspections_labelled", "inspections", ["created_at", "id"],
                    sqlite_where=LABELLED, postgresql_where=LABELLED)
    op.create_index("ix_inspections_verdict_created_at_id", "inspections", ["verdict", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_inspections_verdict_created_at_id", "inspections")
    op.drop_index("ix_inspections_labelled", "inspections")
