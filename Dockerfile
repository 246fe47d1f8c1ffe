# pgcloak container image.
#   docker build -t pgcloak .                          # proxy only
#   docker build --build-arg WITH_PSQL=1 -t pgcloak .  # plus psql for debugging
#   docker run -p 6432:6432 -p 9187:9187 pgcloak serve --listen 0.0.0.0:6432 \
#       --admin 0.0.0.0:9187 --upstream postgresql://db:5432/app
# Two stages so compilers, pip caches and sources never reach the runtime image.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# A C compiler lets setup.py build the hot path with mypyc (optional but ~2x less CPU).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY pgcloak ./pgcloak
COPY sql ./sql
# Wheels for pgcloak and every runtime dependency, installed offline in the next stage.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ARG WITH_PSQL=0
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PGCLOAK_HEALTHCHECK_URL=http://127.0.0.1:9187/healthz
RUN if [ "$WITH_PSQL" = "1" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends postgresql-client \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 pgcloak \
    && useradd --system --uid 10001 --gid pgcloak --home-dir /home/pgcloak --create-home \
        --shell /usr/sbin/nologin pgcloak
# Bind-mount the wheels instead of COPYing them so they add no layer to the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels pgcloak
USER pgcloak
WORKDIR /home/pgcloak
EXPOSE 6432 9187
# Liveness via the admin listener; override PGCLOAK_HEALTHCHECK_URL if --admin changes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen(os.environ['PGCLOAK_HEALTHCHECK_URL'], timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["pgcloak"]
CMD ["serve", "--listen", "0.0.0.0:6432", "--admin", "0.0.0.0:9187"]
