# nanoseg: one image that trains (`dvc repro`) and serves (`nanoseg serve` / `mlflow models serve`).
# Build:  docker build -t nanoseg .
# The project checkout is mounted at its own host path (MLflow records absolute artifact paths):
# Train:  docker run --rm -v "$PWD:$PWD" -w "$PWD" -v /path/to/shared:"$(dirname $PWD)/shared":ro nanoseg make run
# Serve:  docker run --rm -p 127.0.0.1:5001:5001 -v "$PWD:$PWD" -w "$PWD" nanoseg nanoseg serve --host 0.0.0.0 --port 5001
#         (0.0.0.0 inside the container only; the host publishes it on loopback: the server has no
#         authentication, put a reverse proxy with auth and TLS in front to reach it from elsewhere)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN apt-get update && apt-get install -y --no-install-recommends git make curl \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 nanoseg
WORKDIR /opt/nanoseg

# the same pinned install as `make install` (README) and CI
COPY requirements.lock pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install -q --upgrade pip \
    && python -m pip install -q -r requirements.lock \
    && python -m pip install -q --no-deps -e .

USER nanoseg
# the project checkout (params.yaml, dvc.yaml, data/, mlruns/, models/) is mounted here
WORKDIR /work/nanoseg
VOLUME ["/work/nanoseg", "/work/shared"]
EXPOSE 5001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:5001/ping || exit 1
CMD ["nanoseg", "--help"]
