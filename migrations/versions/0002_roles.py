"""Roles, the user-role link, and the seeded `admin` role.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration must not change when the app does.
ADMIN_PERMISSIONS = [
    "audit:read",
    "roles:assign",
    "roles:read",
    "roles:write",
    "users:delete",
    "users:read",
    "users:write",
]


def upgrade() -> None:
    role = op.create_table(
        "role",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_role")),
        sa.UniqueConstraint("name", name=op.f("uq_role_name")),
    )
    op.create_table(
        "user_role",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["role_id"], ["role.id"], name=op.f("fk_user_role_role_id_role"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_role_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "role_id", name=op.f("pk_user_role")),
    )
    op.create_index(op.f("ix_user_role_role_id"), "user_role", ["role_id"])
    now = datetime.now(UTC)
    is_sqlite = op.get_bind().dialect.name == "sqlite"
    op.bulk_insert(
        role,
        [
            {
                "id": uuid.uuid4(),
                "name": "admin",
                "description": "Every built-in permission.",
                "permissions": ADMIN_PERMISSIONS,
                "created_at": now.replace(tzinfo=None) if is_sqlite else now,
                "updated_at": now.replace(tzinfo=None) if is_sqlite else now,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("user_role")
    op.drop_table("role")
