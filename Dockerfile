# auth_service: migrate, then serve. Runs as a non-root user; HEALTHCHECK on /health.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_URL=sqlite:////data/auth.db

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY alembic.ini .
COPY migrations ./migrations
COPY auth_service ./auth_service

# A numeric uid/gid, so orchestrators (Kubernetes runAsNonRoot) can tell it is not root.
# /data holds the SQLite default and, in development, the generated key beside it.
RUN groupadd --system --gid 10001 auth \
    && useradd --system --uid 10001 --gid auth --home-dir /app --shell /usr/sbin/nologin auth \
    && mkdir -p /data \
    && chown auth:auth /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# FORWARDED_ALLOW_IPS (the app's setting) decides which proxies to trust, not uvicorn.
# The app logs each request itself, hence --no-access-log.
CMD ["sh", "-c", "python -m auth_service migrate && exec uvicorn --factory auth_service.main:create_app --host 0.0.0.0 --port 8000 --no-proxy-headers --no-access-log --workers ${WEB_CONCURRENCY:-1}"]
