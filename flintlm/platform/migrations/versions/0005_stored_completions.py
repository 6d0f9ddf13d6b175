"""stored_completions: chat completions captured with `store: true` (or by a key's capture
mode), and `api_keys.capture`, the key's capture mode.

Revision ID: 0005_stored_completions
Revises: 0004_request_id
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_stored_completions"
down_revision: str | None = "0004_request_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("capture", sa.String(8), nullable=True))
    op.create_table(
        "stored_completions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(200), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("completion", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stored_completions"),
    )
    op.create_index("ix_stored_completions_tenant_id_created_at", "stored_completions",
                    ["tenant_id", "created_at"])
    op.create_index("ix_stored_completions_key_id", "stored_completions", ["key_id"])
    op.create_index("ix_stored_completions_created_at", "stored_completions", ["created_at"])


def downgrade() -> None:
    op.drop_table("stored_completions")
    with op.batch_alter_table("api_keys") as batch:  # SQLite drops columns by rebuilding
        batch.drop_column("capture")
