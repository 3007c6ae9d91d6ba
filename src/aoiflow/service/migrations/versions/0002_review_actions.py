"""Reviews with regions: the operator's actions, and the regions an inspection was reviewed to.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-16

``review_actions`` keeps every action of a review (accept, mark normal, delete a region, move a
vertex, draw a box, rename, import) with its time and who did it, so labelling effort and
disagreements can be studied later; ``inspections.reviewed_regions`` the final regions (JSON: kind,
polygon, box, area), the inspection's reviewed labels. Types are spelled out, as in 0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # A nullable column without a default: a plain ADD COLUMN on both databases.
    op.add_column("inspections", sa.Column("reviewed_regions", JSON, nullable=True))
    op.create_table(
        "review_actions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("inspection_id", BIG_ID, nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("by", sa.Text(), nullable=True),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_review_actions"),
        sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"], ondelete="CASCADE",
                                name="fk_review_actions_inspection_id_inspections"),
    )
    op.create_index("ix_review_actions_inspection_id", "review_actions", ["inspection_id"])


def downgrade() -> None:
    op.drop_index("ix_review_actions_inspection_id", "review_actions")
    op.drop_table("review_actions")
    with op.batch_alter_table("inspections") as batch:  # SQLite drops a column by rebuilding the table
        batch.drop_column("reviewed_regions")
