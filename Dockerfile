# auth_service: wait for the database and migrate it, then serve. Production by default, so
# SECRET_KEY must be set; `docker run -e ENVIRONMENT=development ...` to try it without one.
# Build: make image (docker build -t auth_service .). Runs as uid 10001; HEALTHCHECK on /health.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Every package is pinned with its hashes (make lock): pip installs exactly those files or stops.
COPY requirements.txt .
RUN pip install --no-cache-dir --require-hashes -r requirements.txt

COPY alembic.ini .
COPY migrations ./migrations
COPY auth_service ./auth_service

# A numeric uid/gid, so orchestrators (Kubernetes runAsNonRoot) can tell it is not root.
# /data holds the SQLite default (and, in development, the generated key beside it). No
# VOLUME here (it would leave an anonymous volume behind each `docker run`): mount a named
# volume (-v auth-data:/data) or a host folder owned by 10001:10001.
RUN groupadd --gid 10001 auth \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin auth \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001

ENV ENVIRONMENT=production \
    DATABASE_URL=sqlite:////data/auth.db
EXPOSE 8000

# Liveness only (no database). The start period covers DATABASE_WAIT_SECONDS (default 60).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# `migrate` checks every setting (a bad one stops the container with one line), waits up to
# DATABASE_WAIT_SECONDS for the database, and upgrades it; then `exec` makes uvicorn PID 1,
# so `docker stop` (SIGTERM) shuts it down gracefully. While `migrate` waits, the shell is
# PID 1 and ignores SIGTERM: run with --init (the compose file does) to stop at once then.
# FORWARDED_ALLOW_IPS (the app's setting) decides which proxies to trust, not uvicorn; the
# app logs each request itself.
CMD ["sh", "-c", "python -m auth_service migrate && exec uvicorn --factory auth_service.main:create_app --host 0.0.0.0 --port 8000 --no-proxy-headers --no-access-log --http h11 --workers ${WEB_CONCURRENCY:-1}"]
