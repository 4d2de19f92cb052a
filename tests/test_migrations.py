"""The migrations build exactly the models' schema on both databases, and go down and up."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from auth_service.models import metadata
from tests.conftest import alembic_config
from tests.support import fresh_postgres_database


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert differences == []


@pytest.fixture
def empty_database(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of the same kind with nothing in it, for a full down-and-up."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_server_url"), "auth_mig") as url:
        yield url


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    engine = create_engine(empty_database)
    assert set(inspect(engine).get_table_names()) >= set(metadata.tables)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM role")).scalars().all() == ["admin"]
    engine.dispose()

    command.downgrade(config, "base")
    engine = create_engine(empty_database)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()

    command.upgrade(config, "head")
    engine = create_engine(empty_database)
    assert set(inspect(engine).get_table_names()) >= set(metadata.tables)
    engine.dispose()
