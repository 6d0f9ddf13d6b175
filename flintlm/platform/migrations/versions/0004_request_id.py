"""usage_events.http_request_id: the HTTP request's x-request-id, so support can find a row.

Revision ID: 0004_request_id
Revises: 0003_responses
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_request_id"
down_revision: str | None = "0003_responses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites no rows, on SQLite or PostgreSQL.
    op.add_column("usage_events", sa.Column("http_request_id", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("http_request_id")
