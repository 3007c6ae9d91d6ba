"""The first schema: inspections, alerts, processed files, model versions.

Revision ID: 0001
Revises:
Create Date: 2026-05-09

Types are spelled out here rather than imported from the models, so this revision keeps making
the same tables whatever later changes to ``tables.py`` do.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)


def _inspections() -> None:
    op.create_table(
        "inspections",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("a", sa.Double(), nullable=False),
        sa.Column("r", sa.Double(), nullable=False),
        sa.Column("l", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("regions", JSON, nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("supervised_version", sa.Text(), nullable=True),
        sa.Column("image_path", sa.Text(), nullable=True),
        sa.Column("map_path", sa.Text(), nullable=True),
        sa.Column("overlay_path", sa.Text(), nullable=True),
        sa.Column("timings_ms", JSON, nullable=False),
        sa.Column("descriptor", JSON, nullable=True),
        sa.Column("review_status", sa.Text(), nullable=True),
        sa.Column("review_label", sa.Text(), nullable=True),
        sa.Column("reviewed_by", sa.Text(), nullable=True),
        sa.Column("reviewed_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_inspections"),
    )
    for column in ("created_at", "verdict", "kind"):
        op.create_index(f"ix_inspections_{column}", "inspections", [column])


def _alerts() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=True),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("evidence", JSON, nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.Column("acknowledged_at", TIME, nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint("key", name="uq_alerts_key"),
    )
    op.create_index("ix_alerts_created_at", "alerts", ["created_at"])


def _processed_files() -> None:
    op.create_table(
        "processed_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("claimed_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("inspection_id", BIG_ID, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_processed_files"),
        sa.UniqueConstraint("path", "size", "mtime_ns", name="uq_processed_files_path_size_mtime_ns"),
        sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"], ondelete="SET NULL",
                                name="fk_processed_files_inspection_id_inspections"),
    )


def _model_versions() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("version", name="uq_model_versions_version"),
    )


def upgrade() -> None:
    _inspections()
    _alerts()
    _processed_files()
    _model_versions()


def downgrade() -> None:
    for table in ("processed_files", "model_versions", "alerts", "inspections"):
        op.drop_table(table)
