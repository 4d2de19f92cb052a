"""Start-up as an operator meets it, through real processes: refusals that say what to do
and never print a secret, `migrate` waiting for a database that is not up yet, and the
image's own command line (migrate, serve, stop on SIGTERM).

Each process costs a second of imports, so the independent ones run side by side.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from auth_service.config import Settings
from auth_service.models import metadata
from tests.conftest import BACKENDS, ROOT, TEST_SECRET, alembic_config
from tests.support import free_port, fresh_postgres_database, tcp_proxy, wait_until_healthy

# One xdist worker runs this module: its fixture starts eight processes, once.
pytestmark = pytest.mark.xdist_group("deploy")

Result = subprocess.CompletedProcess[str]

GOOD_KEY = "a-good-production-key-0123456789-abcdefghij"
WEAK_KEY = "someones-weak-key-42"
DB_PASSWORD = "db-password-s3cr3t"
SECRETS = {
    "SMTP_PASSWORD": "smtp-password-1234",
    "WEBHOOK_SECRET": "webhook-secret-5678",
    "METRICS_TOKEN": "metrics-token-9012",
    "FIRST_SUPERUSER_PASSWORD": "first-superuser-password-3456",
}
NEVER_SHOWN = [WEAK_KEY, GOOD_KEY, DB_PASSWORD, *SECRETS.values()]
UVICORN = ["-m", "uvicorn", "--factory", "auth_service.main:create_app", "--host", "127.0.0.1"]


def environment(cwd: Path, **settings: str) -> dict[str, str]:
    """A clean environment: none of the suite's own settings, only `settings`. The process
    runs in `cwd` (no `.env` of the developer's is read) with the repository importable."""
    names = {name.upper() for name in Settings.model_fields}
    env = {name: value for name, value in os.environ.items() if name not in names}
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DATABASE_URL"] = f"sqlite:///{cwd / 'auth.db'}"
    env.update(settings)
    return env


def run(cwd: Path, args: list[str], settings: dict[str, str], timeout: float = 60) -> Result:
    """`python ARGS` in `cwd`, with only `settings` set."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=environment(cwd, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def output(result: Result) -> str:
    return result.stdout + result.stderr


REMOTE_URL = f"postgresql+psycopg2://auth:{DB_PASSWORD}@127.0.0.1:{free_port()}/auth"  # nobody listens there
REFUSALS: dict[str, tuple[list[str], dict[str, str], list[str]]] = {
    # name: (arguments, settings, what the message must say)
    "cli_without_key": (["-m", "auth_service", "prune"], {"ENVIRONMENT": "production"},
                        ["SECRET_KEY is required", "token_urlsafe(48)", "ENVIRONMENT=development"]),
    "cli_weak_key": (["-m", "auth_service", "prune"],
                     {"ENVIRONMENT": "production", "SECRET_KEY": WEAK_KEY, "DATABASE_URL": REMOTE_URL, **SECRETS},
                     ["SECRET_KEY is too weak", "token_urlsafe(48)"]),
    "cli_empty_key": (["-m", "auth_service", "create-admin", "--email", "ops@example.com"],
                      {"ENVIRONMENT": "production", "SECRET_KEY": ""}, ["SECRET_KEY is required"]),
    "migrate_weak_key": (["-m", "auth_service", "migrate"],
                         {"ENVIRONMENT": "production", "SECRET_KEY": WEAK_KEY, "DATABASE_URL": REMOTE_URL},
                         ["SECRET_KEY is too weak"]),
    "uvicorn_without_key": ([*UVICORN, "--port", str(free_port())], {"ENVIRONMENT": "production", **SECRETS},
                            ["SECRET_KEY is required", "token_urlsafe(48)"]),
    "uvicorn_weak_key": ([*UVICORN, "--port", str(free_port())],
                         {"ENVIRONMENT": "production", "SECRET_KEY": WEAK_KEY, "DATABASE_URL": REMOTE_URL, **SECRETS},
                         ["SECRET_KEY is too weak", "token_urlsafe(48)"]),
    "smtp_without_host": (["-m", "auth_service", "prune"],
                          {"ENVIRONMENT": "production", "SECRET_KEY": GOOD_KEY, "EMAIL_BACKEND": "smtp",
                           "SMTP_HOST": "", "SMTP_PASSWORD": SECRETS["SMTP_PASSWORD"]},
                          ["SMTP_HOST"]),
    "alembic_bad_url": (["-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
                        {"DATABASE_URL": f"postgres//auth:{DB_PASSWORD}@db/auth"},
                        ["DATABASE_URL must be a PostgreSQL or SQLite URL"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    directory = tmp_path_factory.mktemp("refusals")

    def one(name: str) -> Result:
        args, settings, _ = REFUSALS[name]
        return run(directory, args, settings, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(REFUSALS, pool.map(one, REFUSALS), strict=True))


@pytest.mark.parametrize("name", REFUSALS)
def test_bad_settings_stop_the_process_with_one_clear_line(name: str, refusals: dict[str, Result]) -> None:
    result = refusals[name]
    assert result.returncode != 0, output(result)
    assert "Traceback" not in output(result) and "input_value" not in output(result), output(result)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    for words in REFUSALS[name][2]:
        assert words in error_lines[0]
    for secret in NEVER_SHOWN:
        assert secret not in output(result)


def test_migrate_waits_a_bounded_time_and_never_shows_the_password(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql+psycopg2://auth:{DB_PASSWORD}@127.0.0.1:{port}/auth"
    started = time.monotonic()
    settings = {"ENVIRONMENT": "test", "SECRET_KEY": TEST_SECRET, "DATABASE_URL": url, "DATABASE_WAIT_SECONDS": "2"}
    result = run(tmp_path, ["-m", "auth_service", "migrate"], settings)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert 2 <= elapsed < 30
    waits = re.findall(rf"waiting for the database at 127\.0\.0\.1:{port} \(attempt (\d+), ", result.stderr)
    assert waits[:2] == ["1", "2"], result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the database at 127.0.0.1:{port} did not answer within 2 s"), last
    assert "DATABASE_WAIT_SECONDS" in last and "Connection refused" in last
    assert DB_PASSWORD not in output(result) and "Traceback" not in output(result)


def schema_is_current(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    return revision == head and tables == set(metadata.tables) | {"alembic_version"}


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'auth.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_server_url"), "auth_deploy") as url:
        yield url


def test_migrate_builds_the_schema_and_can_run_again(empty_database: str, tmp_path: Path) -> None:
    if empty_database.startswith("sqlite"):
        (tmp_path / "data").mkdir()
    settings = {"ENVIRONMENT": "production", "SECRET_KEY": GOOD_KEY, "DATABASE_URL": empty_database}
    first = run(tmp_path, ["-m", "auth_service", "migrate"], settings)
    assert first.returncode == 0, first.stderr
    assert "Running upgrade" in first.stderr and "has the latest schema" in first.stderr
    assert schema_is_current(empty_database)
    again = run(tmp_path, ["-m", "auth_service", "migrate"], settings)
    assert again.returncode == 0, again.stderr
    assert "Running upgrade" not in again.stderr
    password = make_url(empty_database).password
    assert not password or password not in output(first) + output(again)


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="needs PostgreSQL (TEST_DATABASE_URL)")
def test_replicas_starting_together_migrate_one_at_a_time(postgres_server_url: str, tmp_path: Path) -> None:
    """Without the advisory lock, the second `CREATE TABLE users` fails and that replica exits."""
    with fresh_postgres_database(postgres_server_url, "auth_race") as url:
        settings = {"ENVIRONMENT": "test", "SECRET_KEY": TEST_SECRET, "DATABASE_URL": url}
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: run(tmp_path, ["-m", "auth_service", "migrate"], settings), range(3)))
        for result in results:
            assert result.returncode == 0, result.stderr
        assert sum("Running upgrade  -> 0001" in result.stderr for result in results) == 1
        assert schema_is_current(url)


def test_migrate_into_a_missing_folder_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'auth.db'}"
    settings = {"ENVIRONMENT": "production", "SECRET_KEY": GOOD_KEY, "DATABASE_URL": url}
    result = run(tmp_path, ["-m", "auth_service", "migrate"], settings)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unable to open database file" in result.stderr and "writable" in result.stderr


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="needs PostgreSQL (TEST_DATABASE_URL)")
def test_migrate_goes_on_when_the_database_comes_up(postgres_server_url: str, tmp_path: Path) -> None:
    server = make_url(postgres_server_url)
    port = free_port()
    with fresh_postgres_database(postgres_server_url, "auth_wait") as url:
        behind_proxy = make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        env = environment(
            tmp_path, ENVIRONMENT="test", SECRET_KEY=TEST_SECRET, DATABASE_URL=behind_proxy, DATABASE_WAIT_SECONDS="30"
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "auth_service", "migrate"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        seen: list[str] = []
        while "waiting for the database" not in "".join(seen):  # the first attempt was refused
            line = process.stderr.readline()
            assert line, f"migrate ended before waiting: {''.join(seen)}"
            seen.append(line)
        with tcp_proxy(port, (server.host or "127.0.0.1", server.port or 5432)):
            _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, "".join(seen) + stderr
        assert "the database at" in stderr and "answers" in stderr
        assert schema_is_current(url)


def docker_command() -> str:
    """The Dockerfile's CMD, to run here as the image would (but on loopback and a free port)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert match, "the Dockerfile has a one-line exec-form CMD"
    shell, flag, script = json.loads(match.group(1))
    assert (shell, flag) == ("sh", "-c")
    assert "exec uvicorn" in script  # uvicorn replaces the shell: it is PID 1 and gets SIGTERM
    return str(script)


def test_the_image_command_migrates_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    script = docker_command().replace("--host 0.0.0.0", "--host 127.0.0.1").replace("--port 8000", f"--port {port}")
    assert f"--port {port}" in script
    cheap_hashes = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_COST": "1024", "ARGON2_PARALLELISM": "1"}
    env = environment(tmp_path, ENVIRONMENT="production", SECRET_KEY=GOOD_KEY, FIRST_SUPERUSER_EMAIL="root@example.com",
                      FIRST_SUPERUSER_PASSWORD=SECRETS["FIRST_SUPERUSER_PASSWORD"], **cheap_hashes)  # fmt: skip
    process = subprocess.Popen(
        ["sh", "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout=60)
        login = httpx.post(
            f"http://127.0.0.1:{port}/auth/login",
            data={"username": "root@example.com", "password": SECRETS["FIRST_SUPERUSER_PASSWORD"]},
        )
        assert login.status_code == 200, login.text  # migrated, and the first superuser was created
        process.send_signal(signal.SIGTERM)  # the shell exec'd uvicorn: same pid
        logs, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # A graceful stop: uvicorn finishes, then re-raises SIGTERM (docker shows exit code 143).
    assert process.returncode in (0, -signal.SIGTERM), logs
    assert "has the latest schema" in logs and "Application shutdown complete" in logs
    assert SECRETS["FIRST_SUPERUSER_PASSWORD"] not in logs and GOOD_KEY not in logs
