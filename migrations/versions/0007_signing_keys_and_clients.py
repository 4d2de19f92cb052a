"""Signing keys (asymmetric JWTs published as JWKS), service clients, and the sealed
successor of a rotated refresh token (for the reuse grace interval).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


CLIENT_PERMISSIONS = ["clients:read", "clients:write"]  # written out: the migration must not follow the app
role = sa.table("role", sa.column("name", sa.String()), sa.column("permissions", sa.JSON()))


def _admin_permissions(change: Callable[[set[str]], set[str]]) -> None:
    """The seeded `admin` role holds every built-in permission, the new ones included."""
    bind = op.get_bind()
    found = bind.execute(sa.select(role.c.permissions).where(role.c.name == "admin")).first()
    if found is not None:
        permissions = sorted(change(set(found[0] or [])))
        bind.execute(role.update().where(role.c.name == "admin").values(permissions=permissions))


def upgrade() -> None:
    _admin_permissions(lambda held: held | set(CLIENT_PERMISSIONS))
    with op.batch_alter_table("refresh_token") as batch:
        batch.add_column(sa.Column("successor", sa.Text(), nullable=True))
    op.create_table(
        "signing_key",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=8), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("current", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_key")),
        sa.UniqueConstraint("current", name=op.f("uq_signing_key_current")),
    )
    op.create_table(
        "client",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("token_generation", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client")),
        sa.UniqueConstraint("client_id", name=op.f("uq_client_client_id")),
    )


def downgrade() -> None:
    _admin_permissions(lambda held: held - set(CLIENT_PERMISSIONS))
    op.drop_table("client")
    op.drop_table("signing_key")
    with op.batch_alter_table("refresh_token") as batch:
        batch.drop_column("successor")
