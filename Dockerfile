# One image for every boxrun process: `boxrun api`, `boxrun worker`, `boxrun agent`, `boxrun migrate`.
# Used by docker-compose.temporal.yml (build: .).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package is built from (no .dockerignore needed: .venv, .git, tests stay out).
# boxrun/ and the top-level folders its symlinks point to (boxrun/api -> ../api, ...); README.md is optional.
WORKDIR /tmp/boxrun-src
COPY pyproject.toml README.md* ./
COPY boxrun ./boxrun
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY worker ./worker

RUN pip install '.[server,agent]' \
    && cd / && rm -rf /tmp/boxrun-src \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin boxrun \
    && mkdir -p /var/lib/boxrun/agent \
    && chown -R boxrun:boxrun /var/lib/boxrun

USER boxrun
WORKDIR /var/lib/boxrun

CMD ["boxrun", "--help"]
