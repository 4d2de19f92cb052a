"""The migrations build exactly the models' schema on both databases, and go down and up."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from auth_service.models import metadata
from tests.conftest import alembic_config
from tests.support import fresh_postgres_database


def drift(url: str) -> list[Any]:
    """What autogenerate would write for this database: nothing, if models and migrations agree."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            revision: str | None = MigrationContext.configure(connection).get_current_revision()
            return revision
    finally:
        engine.dispose()


def test_one_head() -> None:
    """A single line of migrations: `upgrade head` is unambiguous."""
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, heads


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    assert drift(database_url) == []


@pytest.fixture
def empty_database(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of the same kind with nothing in it, for a full down-and-up (not the shared test one)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_server_url"), "auth_mig") as url:
        yield url


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    config = alembic_config(empty_database)
    head = ScriptDirectory.from_config(config).get_current_head()

    command.upgrade(config, "head")
    assert tables(empty_database) == set(metadata.tables) | {"alembic_version"}
    assert current_revision(empty_database) == head
    engine = create_engine(empty_database)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM role")).scalars().all() == ["admin"]  # seeded
    engine.dispose()

    command.downgrade(config, "base")
    assert tables(empty_database) == {"alembic_version"}
    assert current_revision(empty_database) is None

    command.upgrade(config, "head")
    assert tables(empty_database) == set(metadata.tables) | {"alembic_version"}
    assert current_revision(empty_database) == head
    assert drift(empty_database) == []
