"""Guardrails: a key's policy name, and each request's guardrail decisions on its ledger row.

Revision ID: 0006_guardrails
Revises: 0005_stored_completions
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_guardrails"
down_revision: str | None = "0005_stored_completions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("guardrail", sa.String(64), nullable=True))
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("guardrail", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("guardrail")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("guardrail")
