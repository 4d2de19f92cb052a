"""`make bench`: the service under load, with production Argon2id parameters.

Starts uvicorn (one worker) on a fresh SQLite database in a temporary directory (or on
BENCH_DATABASE_URL, a fresh PostgreSQL database you provide), then measures:
  - the latency of one login (one Argon2id verification, 64 MiB, t=3, p=4);
  - login throughput under a flood of concurrent logins, and how many were shed (503);
  - GET /users/me latency alone and during that flood: bounded hashing keeps it flowing;
  - the server's peak memory (VmHWM): bounded by HASH_CONCURRENCY x 64 MiB, not the flood.
It sends traffic to 127.0.0.1 only, and every loop is bounded in count and time.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "benchmark password 0123"
USERS = 20
FLOOD_THREADS = int(os.environ.get("BENCH_THREADS", "40"))
FLOOD_SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))


def peak_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    database_url = os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{workdir / 'auth.db'}")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "development",
        "SIGNUP_IP_LIMIT": "off",
        "LOGIN_IP_LIMIT": "off",
        "LOG_LEVEL": "WARNING",
        "OUTBOX_WORKER": "false",
    }
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "--factory", "auth_service.main:create_app", "--port", str(port)]
    server = subprocess.Popen([*command, "--no-access-log"], cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)})
    try:
        wait_until_healthy(url)
        run(url, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=10)


def run(url: str, pid: int) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(USERS):
            http.post("/auth/signup", json={"email": f"bench{i}@example.com", "password": PASSWORD}).raise_for_status()
        token = http.post("/auth/login", data={"username": "bench0@example.com", "password": PASSWORD}).json()
        me = {"Authorization": f"Bearer {token['access_token']}"}

        login_times = []
        for i in range(5):
            started = time.perf_counter()
            http.post(
                "/auth/login", data={"username": f"bench{i}@example.com", "password": PASSWORD}
            ).raise_for_status()
            login_times.append(time.perf_counter() - started)

        def me_latencies(count: int) -> list[float]:
            times = []
            for _ in range(count):
                started = time.perf_counter()
                http.get("/users/me", headers=me).raise_for_status()
                times.append(time.perf_counter() - started)
            return times

        quiet = me_latencies(200)

    statuses: Counter[int] = Counter()
    stop = time.monotonic() + FLOOD_SECONDS

    def flood(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < stop:
                email = f"bench{n % USERS}@example.com"
                statuses[client.post("/auth/login", data={"username": email, "password": PASSWORD}).status_code] += 1

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    with httpx.Client(base_url=url, timeout=60) as http:
        busy = []
        while time.monotonic() < stop - 0.5:
            started = time.perf_counter()
            http.get("/users/me", headers=me).raise_for_status()
            busy.append(time.perf_counter() - started)
    for thread in threads:
        thread.join()

    print(f"database: {'PostgreSQL' if 'postgresql' in os.environ.get('BENCH_DATABASE_URL', '') else 'SQLite'}")
    print(f"one login (Argon2id verify, default parameters): median {statistics.median(login_times) * 1000:.0f} ms")
    print(f"login flood: {FLOOD_THREADS} clients for {FLOOD_SECONDS:.0f} s: {dict(statuses)}")
    print(f"  successful logins per second: {statuses[200] / FLOOD_SECONDS:.1f}")
    print(f"GET /users/me alone:        p50 {percentile(quiet, 0.5):.1f} ms, p99 {percentile(quiet, 0.99):.1f} ms")
    during = f"p50 {percentile(busy, 0.5):.1f} ms, p99 {percentile(busy, 0.99):.1f} ms ({len(busy)} calls)"
    print(f"GET /users/me during flood: {during}")
    print(f"server peak memory (VmHWM): {peak_memory_mib(pid):.0f} MiB")


if __name__ == "__main__":
    main()
