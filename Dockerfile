# nanoseg: one image that trains (`make run`) and serves (`make serve`): the Makefile targets CI runs.
# Build:  docker build -t nanoseg .
# The project checkout is mounted at its own host path (MLflow records absolute artifact paths) and run as
# its owner; it is never installed into: the venv is the image's (/opt/venv), the code the checkout's src/.
# Train:  docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:$PWD" -w "$PWD" -v /path/to/shared:"$(dirname "$PWD")/shared":ro nanoseg make run
# Serve:  docker run --rm --user "$(id -u):$(id -g)" -p 127.0.0.1:5001:5001 -v "$PWD:$PWD" -w "$PWD" nanoseg make serve SERVE_HOST=0.0.0.0
#         (0.0.0.0 inside the container only; the host publishes it on loopback: the server has no
#         authentication, put a reverse proxy with auth and TLS in front to reach it from elsewhere)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# default-jre-headless: the Java runtime (17+) of Spark, for `nanoseg batch` (what `make java` installs on a host)
RUN apt-get update && apt-get install -y --no-install-recommends git make curl default-jre-headless \
    && rm -rf /var/lib/apt/lists/*

# a home any --user can write to (Keras, matplotlib and DVC keep their caches there)
RUN useradd --create-home --uid 1000 nanoseg && install -d -m 1777 /home/run
WORKDIR /opt/nanoseg

# the same `make install` as `make test` (CI) and `make run`, into the image's venv
COPY Makefile requirements.lock pyproject.toml README.md ./
COPY src ./src
RUN make install VENV=/opt/venv

# from here on the venv is the image's: `make install` in a mounted checkout with another
# requirements.lock / pyproject.toml says to rebuild the image instead of reinstalling
ENV NANOSEG_FROZEN_VENV=1 \
    HOME=/home/run
USER nanoseg
EXPOSE 5001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:5001/ping || exit 1
CMD ["nanoseg", "--help"]
