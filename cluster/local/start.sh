#!/usr/bin/env bash
# Start a local binsweep cluster on this machine: a Ray head (token auth, dashboard on 127.0.0.1), optional extra
# Ray worker nodes, and an MLflow tracking server on 127.0.0.1 (PostgreSQL backend when PostgreSQL and psycopg2 are
# available, else the embedded SQLite store runs/mlflow.db). Idempotent: what already runs is left alone.
#
# stdout carries only the `export` lines a client needs, so this works:
#     eval "$(cluster/local/start.sh)"
# Progress goes to stderr; PIDs and logs go to $BINSWEEP_HOME/runs/cluster/. Stop with cluster/local/stop.sh.
set -euo pipefail

# shellcheck source=cluster/local/_common.sh
. "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<'EOF'
usage: cluster/local/start.sh [options]

  --num-cpus N         logical CPUs of the head node (default: $BINSWEEP_RAY_CPUS, else max(4, cores),
                       the same rule as the embedded cluster)
  --num-gpus G         GPUs of the head node (default: Ray detects them)
  --workers K          extra Ray worker nodes as processes on this machine (default 0)
  --worker-cpus N      logical CPUs of each extra worker node (default 2)
  --worker-gpus G      logical GPUs each extra worker node declares (default 0): Ray places GPU trials there; on a
                       machine without a GPU torch finds no CUDA device in them and trains on the CPU
  --add-workers K      add K worker nodes (--worker-cpus/--worker-gpus) to the running cluster, numbered after
                       the existing ones, and change nothing else: nodes that join after a sweep was submitted
  --max-workers M      the cluster may grow to M extra worker nodes of that shape: declared to sweeps as
                       BINSWEEP_MAX_RESOURCES (what an autoscaler's config tells them on the cloud), so that
                       `concurrency: auto` counts nodes that have not joined yet
  --s3                 serve an S3 API on 127.0.0.1 (moto's server, a test dependency) and keep Ray's storage,
                       MLflow's artifacts (and your datasets) in s3://BUCKET/...; every node gets the AWS variables
  --s3-port P          port of the S3 server (default 9000)
  --s3-bucket B        its bucket (default binsweep)
  --node-homes         every node its own BINSWEEP_HOME (runs/cluster/nodes/<node>): nothing travels through this
                       machine's disk that a real cluster would not share
  --rehearsal          --s3 --node-homes: the cloud's conditions on one machine (cluster/README.md, "Rehearsal")
  --port P             Ray GCS port (default 6379)
  --dashboard-port P   Ray dashboard / job API port, bound to 127.0.0.1 (default 8265)
  --client-port P      Ray Client server port (default 10001)
  --agent-port P       dashboard agent HTTP port of the head; extra worker i uses P+i (default 52365)
  --object-store-mb M  object store size per node in MiB (default: Ray's choice, 30% of memory)
  --backend B          MLflow backend store: auto | postgres | sqlite (default auto)
  --mlflow-port P      MLflow server port, bound to 127.0.0.1 (default 5000)
  --mlflow-workers N   MLflow server worker processes (default 2)
  --pg-port P          port (unix socket only, no TCP) of the private PostgreSQL cluster (default 5433)
  --no-mlflow          start Ray only
  -h, --help           this text

Every option also reads an environment variable: BINSWEEP_RAY_CPUS, BINSWEEP_RAY_GPUS, BINSWEEP_CLUSTER_WORKERS,
BINSWEEP_WORKER_CPUS, BINSWEEP_RAY_PORT, BINSWEEP_DASHBOARD_PORT, BINSWEEP_CLIENT_PORT, BINSWEEP_AGENT_PORT,
BINSWEEP_OBJECT_STORE_MB, BINSWEEP_MLFLOW_BACKEND, BINSWEEP_MLFLOW_PORT, BINSWEEP_MLFLOW_WORKERS, BINSWEEP_PG_PORT,
BINSWEEP_WORKER_GPUS, BINSWEEP_MAX_WORKERS, BINSWEEP_S3_PORT, BINSWEEP_S3_BUCKET.
BINSWEEP_HOME (default: the repository) says where runs/ lives; BINSWEEP_PYTHON which Python runs ray and mlflow.
EOF
}

default_cpus() {
    local n
    n="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
    [ "$n" -lt 4 ] && n=4
    printf '%s' "$n"
}

NUM_CPUS="${BINSWEEP_RAY_CPUS:-$(default_cpus)}"
NUM_GPUS="${BINSWEEP_RAY_GPUS:-}"
WORKERS="${BINSWEEP_CLUSTER_WORKERS:-0}"
WORKER_CPUS="${BINSWEEP_WORKER_CPUS:-2}"
GCS_PORT="${BINSWEEP_RAY_PORT:-6379}"
DASH_PORT="${BINSWEEP_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${BINSWEEP_CLIENT_PORT:-10001}"
AGENT_PORT="${BINSWEEP_AGENT_PORT:-52365}"
OBJECT_STORE_MB="${BINSWEEP_OBJECT_STORE_MB:-}"
BACKEND="${BINSWEEP_MLFLOW_BACKEND:-auto}"
MLFLOW_PORT="${BINSWEEP_MLFLOW_PORT:-5000}"
MLFLOW_WORKERS="${BINSWEEP_MLFLOW_WORKERS:-2}"
PG_PORT="${BINSWEEP_PG_PORT:-5433}"
WITH_MLFLOW=1
WORKER_GPUS="${BINSWEEP_WORKER_GPUS:-0}"
ADD_WORKERS=0
MAX_WORKERS="${BINSWEEP_MAX_WORKERS:-}"
S3=0
S3_PORT="${BINSWEEP_S3_PORT:-9000}"
S3_BUCKET="${BINSWEEP_S3_BUCKET:-binsweep}"
NODE_HOMES=0

while [ $# -gt 0 ]; do
    case "$1" in
        --num-cpus) NUM_CPUS="$2"; shift 2 ;;
        --num-gpus) NUM_GPUS="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --worker-cpus) WORKER_CPUS="$2"; CLI_WORKER_CPUS="$2"; shift 2 ;;
        --port) GCS_PORT="$2"; shift 2 ;;
        --dashboard-port) DASH_PORT="$2"; shift 2 ;;
        --client-port) CLIENT_PORT="$2"; shift 2 ;;
        --agent-port) AGENT_PORT="$2"; shift 2 ;;
        --object-store-mb) OBJECT_STORE_MB="$2"; shift 2 ;;
        --backend) BACKEND="$2"; shift 2 ;;
        --mlflow-port) MLFLOW_PORT="$2"; shift 2 ;;
        --mlflow-workers) MLFLOW_WORKERS="$2"; shift 2 ;;
        --pg-port) PG_PORT="$2"; shift 2 ;;
        --no-mlflow) WITH_MLFLOW=0; shift ;;
        --worker-gpus) WORKER_GPUS="$2"; CLI_WORKER_GPUS="$2"; shift 2 ;;
        --add-workers) ADD_WORKERS="$2"; shift 2 ;;
        --max-workers) MAX_WORKERS="$2"; shift 2 ;;
        --s3) S3=1; shift ;;
        --s3-port) S3_PORT="$2"; shift 2 ;;
        --s3-bucket) S3_BUCKET="$2"; shift 2 ;;
        --node-homes) NODE_HOMES=1; shift ;;
        --rehearsal) S3=1; NODE_HOMES=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

case "$BACKEND" in auto|postgres|sqlite) ;; *) die "--backend must be auto, postgres or sqlite, not '$BACKEND'" ;; esac
for v in NUM_CPUS WORKERS WORKER_CPUS WORKER_GPUS ADD_WORKERS GCS_PORT DASH_PORT CLIENT_PORT AGENT_PORT MLFLOW_PORT \
         MLFLOW_WORKERS PG_PORT S3_PORT ${MAX_WORKERS:+MAX_WORKERS}; do
    case "${!v}" in ''|*[!0-9]*) die "$v must be a whole number, not '${!v}'" ;; esac
done
if [ "$CLIENT_PORT" -ge 10002 ] && [ "$CLIENT_PORT" -le 19999 ]; then
    die "--client-port $CLIENT_PORT lies in Ray's worker port range 10002-19999"
fi
[ -n "$PY" ] && "$PY" -c 'import ray' 2>/dev/null \
    || die "no Python with ray found (set BINSWEEP_PYTHON or create .venv with 'make install')"

if [ "$ADD_WORKERS" -gt 0 ]; then
    # the cluster's own choices, not this call's defaults: new nodes must look like the ones already there
    [ -f "$CLUSTER_CONF" ] || die "--add-workers: no cluster under $RUN_DIR (start one first)"
    # shellcheck disable=SC1090
    . "$CLUSTER_CONF"
    WORKER_CPUS="${CLI_WORKER_CPUS:-$WORKER_CPUS}"   # the new nodes' shape may differ (a GPU node type)
    WORKER_GPUS="${CLI_WORKER_GPUS:-$WORKER_GPUS}"
fi

mkdir -p "$PID_DIR" "$LOG_DIR" "$RUN_DIR/cwd"
RAY_TMP="$(ray_tmp_dir)"
mkdir -p "$RAY_TMP"
chmod 700 "$(dirname "$RAY_TMP")" "$RAY_TMP"

HOST=127.0.0.1
MLFLOW_URI="http://$HOST:$MLFLOW_PORT"
S3_URI="http://$HOST:$S3_PORT"
if [ "$S3" = 1 ]; then
    STORAGE="${BINSWEEP_RAY_STORAGE:-s3://$S3_BUCKET/ray}"
    ARTIFACTS="s3://$S3_BUCKET/mlartifacts"
else
    STORAGE="${BINSWEEP_RAY_STORAGE:-$BINSWEEP_HOME/runs/ray}"
    ARTIFACTS="$BINSWEEP_HOME/runs/mlartifacts"
fi
started=()   # pidfiles of what this invocation started, to undo on failure
PG_STARTED=0

on_exit() {
    local rc=$? f pid
    [ "$rc" -eq 0 ] && return 0
    if [ "$PG_STARTED" = 1 ]; then
        as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    [ ${#started[@]} -eq 0 ] && return "$rc"
    log "start failed; stopping what this run started (see logs in $LOG_DIR)"
    for f in "${started[@]}"; do
        pid="$(cat "$f" 2>/dev/null || true)"
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 2
    for f in "${started[@]}"; do
        pid="$(cat "$f" 2>/dev/null || true)"
        # shellcheck disable=SC2046
        [ -n "$pid" ] && kill -KILL $(session_members "$pid") 2>/dev/null || true
        rm -f "$f"
    done
    return "$rc"
}
trap on_exit EXIT

# detach LOGFILE PIDFILE CMD...: run CMD as the leader of a new session (so stop.sh can end it and every process it
# spawned, and nothing else), detached from our stdin/stdout, and record its pid.
detach() {
    local logfile="$1" pidfile="$2"
    shift 2
    "$PY" -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' "$@" \
        </dev/null >>"$logfile" 2>&1 &
    echo $! >"$pidfile"
    started+=("$pidfile")
}

# http_status URL [HEADER]: the HTTP status code of a GET, or 000.
http_status() {
    if command -v curl >/dev/null 2>&1; then
        if [ $# -gt 1 ]; then
            curl -s -o /dev/null -w '%{http_code}' --max-time 3 -H "$2" "$1" || true
        else
            curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" || true
        fi
    else
        "$PY" - "$@" <<'EOF' || true
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    k, v = sys.argv[2].split(":", 1)
    req.add_header(k.strip(), v.strip())
try:
    print(urllib.request.urlopen(req, timeout=3).status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
EOF
    fi
}

# wait_for WHAT PIDFILE TIMEOUT_S CHECK...: poll CHECK until it succeeds; fail if the process dies or time runs out.
wait_for() {
    local what="$1" pidfile="$2" timeout="$3" t=0
    shift 3
    while ! "$@"; do
        if ! alive "$(cat "$pidfile" 2>/dev/null)"; then
            log "$what exited during start-up; last lines of its log:"
            tail -n 25 "$LOG_DIR/$(basename "$pidfile" .pid).log" >&2 || true
            return 1
        fi
        if [ "$t" -ge "$((timeout * 2))" ]; then
            log "$what did not come up within ${timeout}s; see $LOG_DIR/$(basename "$pidfile" .pid).log"
            return 1
        fi
        sleep 0.5
        t=$((t + 1))
    done
}

port_busy() {  # something already accepts connections on 127.0.0.1:PORT
    "$PY" -c 'import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

# ---------------------------------------------------------------------------------------------------------- token
# Ray 2.60: `ray start --head` turns token auth on when RAY_AUTH_MODE=token, but does not create the token (only
# ray.init() does); workers and clients need the same token. Ray reads RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
# ~/.ray/auth_token, in that order. Create the default file (mode 0600) only when none of them is there.
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
    log "creating a Ray auth token in ~/.ray/auth_token"
    (umask 077 && "$PY" -m ray.scripts.scripts get-auth-token --generate >/dev/null)
fi
if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
    TOKEN="$RAY_AUTH_TOKEN"
elif [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then
    TOKEN="$(cat "$RAY_AUTH_TOKEN_PATH")"
else
    TOKEN="$(cat "$HOME/.ray/auth_token")"
fi
[ -n "$TOKEN" ] || die "the Ray auth token is empty"

# ------------------------------------------------------------------------------------------------------------ S3
# moto's S3 server: a real HTTP S3 API in its own process, in memory (it forgets everything when stopped). Clients
# find it through the standard AWS variables (pyarrow, botocore, MLflow), so code sees plain s3:// URIs as on AWS.
if [ "$S3" = 1 ]; then
    export AWS_ENDPOINT_URL="$S3_URI" MLFLOW_S3_ENDPOINT_URL="$S3_URI" AWS_DEFAULT_REGION=us-east-1 \
        AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
    # moto accepts any key; these dummies are not secrets, and real clusters use instance roles instead
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-binsweep}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-binsweep}"
fi
s3_up() { [ "$(http_status "$S3_URI/moto-api/")" = 200 ]; }
if [ "$S3" = 1 ] && [ "$ADD_WORKERS" = 0 ]; then
    if [ -n "$(pid_from "$PID_DIR/s3.pid" "moto.server")" ]; then
        log "S3 server already running"
    else
        "$PY" -c 'import moto.server' 2>/dev/null \
            || die "--s3 needs moto's server in $PY (pip install 'moto[server]', part of binsweep's test extras)"
        port_busy "$S3_PORT" && die "port $S3_PORT is taken by another program (use --s3-port)"
        log "starting the S3 server on $S3_URI (bucket $S3_BUCKET)"
        detach "$LOG_DIR/s3.log" "$PID_DIR/s3.pid" "$PY" -m moto.server -H "$HOST" -p "$S3_PORT"
    fi
    wait_for "S3 server" "$PID_DIR/s3.pid" 60 s3_up
    "$PY" -c 'import sys, boto3
s3 = boto3.client("s3")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=sys.argv[1])' "$S3_BUCKET" || die "cannot create the bucket $S3_BUCKET"
fi

# -------------------------------------------------------------------------------------------------------- MLflow
BACKEND_URI=""
BACKEND_NAME=""
PG_DRIVER=""
MLFLOW_PID=""
pg_ready() { as_pg_user "$PG_BIN/pg_isready" -q -h "$PG_DIR/sock" -p "$PG_PORT" >/dev/null 2>&1; }

start_postgres() {
    local data="$PG_DIR/data" sock="$PG_DIR/sock" pglog="$LOG_DIR/postgres.log"
    mkdir -p "$PG_DIR" "$sock"
    touch "$pglog"
    if [ "$(id -u)" = 0 ]; then
        chown "$PG_OS_USER" "$PG_DIR" "$sock" "$pglog"
        [ -d "$data" ] && chown -R "$PG_OS_USER" "$data"
    fi
    chmod 700 "$PG_DIR" "$sock"
    if [ ! -f "$data/PG_VERSION" ]; then
        log "initdb: private PostgreSQL cluster in $data"
        as_pg_user "$PG_BIN/initdb" -D "$data" -U mlflow --auth=trust -E UTF8 --no-instructions >>"$pglog" 2>&1 \
            || { tail -n 20 "$pglog" >&2; return 1; }
    fi
    if ! as_pg_user "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        # no TCP at all (listen_addresses=''): the server is reached only through the 0700 socket directory,
        # so 'trust' admits only this OS user (and root), like peer authentication.
        as_pg_user "$PG_BIN/pg_ctl" -D "$data" -l "$pglog" -w -t 60 \
            -o "-c listen_addresses='' -c unix_socket_directories='$sock' -c unix_socket_permissions=0700 -p $PG_PORT" \
            start >/dev/null || { tail -n 20 "$pglog" >&2; return 1; }
        PG_STARTED=1
    fi
    if ! "$PG_BIN/psql" -h "$sock" -p "$PG_PORT" -U mlflow -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1; then
        "$PG_BIN/createdb" -h "$sock" -p "$PG_PORT" -U mlflow mlflow
    fi
    # the driver is named: SQLAlchemy 2.1 means psycopg (3) by plain postgresql://, 2.0 means psycopg2
    BACKEND_URI="postgresql+$PG_DRIVER://mlflow@/mlflow?host=$sock&port=$PG_PORT"
}

choose_backend() {
    local why=""
    if [ "$BACKEND" != sqlite ]; then
        if ! PG_BIN="$(pg_bin_dir)"; then
            why="PostgreSQL (initdb, pg_ctl) is not installed"
        elif ! PG_DRIVER="$("$PY" -c 'import importlib.util as u
print(next(m for m in ("psycopg", "psycopg2") if u.find_spec(m)))' 2>/dev/null)"; then
            why="no PostgreSQL driver for Python (pip install 'psycopg[binary]' or psycopg2-binary)"
        elif [ "$(id -u)" = 0 ] && ! id "$PG_OS_USER" >/dev/null 2>&1; then
            why="running as root and there is no '$PG_OS_USER' OS user to run PostgreSQL as"
        elif [ "$(id -u)" = 0 ] && ! runuser -u "$PG_OS_USER" -- test -x "$RUN_DIR" 2>/dev/null; then
            why="the OS user '$PG_OS_USER' cannot reach $RUN_DIR (a parent directory is private)"
        fi
        if [ -z "$why" ]; then
            BACKEND_NAME=postgresql
            return 0
        fi
        [ "$BACKEND" = postgres ] && die "--backend postgres: $why"
        log "MLflow on SQLite: $why"
    fi
    BACKEND_NAME=sqlite
    mkdir -p "$BINSWEEP_HOME/runs"
    # the embedded store itself (design.md), so runs logged before or after the server share one history
    BACKEND_URI="sqlite:///$BINSWEEP_HOME/runs/mlflow.db"
}

if [ "$WITH_MLFLOW" = 1 ] && [ "$ADD_WORKERS" = 0 ]; then
    MLFLOW_PID="$(pid_from "$PID_DIR/mlflow.pid" "mlflow server")"
    if [ -n "$MLFLOW_PID" ]; then
        log "MLflow server already running (pid $MLFLOW_PID)"
        BACKEND_NAME="$(cat "$RUN_DIR/mlflow.backend" 2>/dev/null || echo unknown)"
        [ "$BACKEND_NAME" = postgresql ] && PG_BIN="$(pg_bin_dir)" && { pg_ready || start_postgres; }
    else
        port_busy "$MLFLOW_PORT" && die "port $MLFLOW_PORT is taken by another program (use --mlflow-port)"
        choose_backend
        [ "$BACKEND_NAME" = postgresql ] && start_postgres
        echo "$BACKEND_NAME" >"$RUN_DIR/mlflow.backend"
        [ "$S3" = 1 ] || mkdir -p "$ARTIFACTS"
        log "starting MLflow server on $MLFLOW_URI ($BACKEND_NAME)"
        # Job execution (huey consumers for GenAI jobs) is off: binsweep does not use it and it adds 7 processes.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false detach "$LOG_DIR/mlflow.log" "$PID_DIR/mlflow.pid" \
            "$PY" -m mlflow server \
            --backend-store-uri "$BACKEND_URI" \
            --artifacts-destination "$ARTIFACTS" \
            --host "$HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS"
    fi
fi

# ----------------------------------------------------------------------------------------------------------- Ray
# Environment every Ray process (and so every job and trial) inherits from its raylet.
export BINSWEEP_RAY_STORAGE="$STORAGE"
export RAY_USAGE_STATS_ENABLED=0
# a job's entrypoint `python ...` must be this Python (the one with ray, mlflow and binsweep), not the first on PATH
PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
export PATH
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}"
[ "$WITH_MLFLOW" = 1 ] && export MLFLOW_TRACKING_URI="$MLFLOW_URI"
# The largest the cluster may become, for `concurrency: auto` (sweep_platform/placement.py): the head plus
# --max-workers nodes of the workers' shape.
if [ -n "$MAX_WORKERS" ]; then
    BINSWEEP_MAX_RESOURCES="{\"CPU\": $((NUM_CPUS + MAX_WORKERS * WORKER_CPUS)), \"GPU\": $(( ${NUM_GPUS:-0} + MAX_WORKERS * WORKER_GPUS)), \"sweep_driver\": 1, \"trial_driver\": 1000}"
    export BINSWEEP_MAX_RESOURCES
fi

# node_home NAME: the BINSWEEP_HOME of a node: its own folder with --node-homes, else the shared one.
node_home() {
    if [ "$NODE_HOMES" = 1 ]; then
        mkdir -p "$RUN_DIR/nodes/$1"
        printf '%s' "$RUN_DIR/nodes/$1"
    else
        printf '%s' "$BINSWEEP_HOME"
    fi
}

ray_common=(--node-ip-address="$HOST" --block --disable-usage-stats)
[ -n "$OBJECT_STORE_MB" ] && ray_common+=(--object-store-memory="$((OBJECT_STORE_MB * 1024 * 1024))")

HEAD_PID="$(pid_from "$PID_DIR/ray-head.pid" "ray.scripts.scripts start --head")"
if [ -n "$HEAD_PID" ]; then
    log "Ray head already running (pid $HEAD_PID)"
else
    port_busy "$GCS_PORT" && die "port $GCS_PORT is taken by another program (use --port)"
    port_busy "$DASH_PORT" && die "port $DASH_PORT is taken by another program (use --dashboard-port)"
    head_args=(--head --port="$GCS_PORT" --dashboard-host="$HOST" --dashboard-port="$DASH_PORT"
        --ray-client-server-port="$CLIENT_PORT" --dashboard-agent-listen-port="$AGENT_PORT"
        --num-cpus="$NUM_CPUS" --temp-dir="$RAY_TMP" --labels="binsweep-node=head"
        --resources='{"sweep_driver": 1, "trial_driver": 1000}')  # sweep_platform/placement.py
    [ -n "$NUM_GPUS" ] && head_args+=(--num-gpus="$NUM_GPUS")
    log "starting Ray head: GCS 127.0.0.1:$GCS_PORT, dashboard http://$HOST:$DASH_PORT, $NUM_CPUS CPUs"
    # jobs submitted without a working_dir run in the head's cwd: an empty folder, so nothing there shadows a package
    (cd "$RUN_DIR/cwd" && detach "$LOG_DIR/ray-head.log" "$PID_DIR/ray-head.pid" \
        env BINSWEEP_HOME="$(node_home head)" "$PY" -m ray.scripts.scripts start "${head_args[@]}" "${ray_common[@]}")
    started+=("$PID_DIR/ray-head.pid")
fi

head_up() { [ "$(http_status "http://$HOST:$DASH_PORT/api/gcs_healthz")" = 200 ]; }
wait_for "Ray head" "$PID_DIR/ray-head.pid" 120 head_up
ln -sfn "$RAY_TMP/session_latest/logs" "$LOG_DIR/ray"

# start_worker I: Ray worker node I, "w<I>" (its label binsweep-node, its own temp dir and, with --node-homes, home).
# One machine, several raylets: the node-manager, object-manager and agent gRPC ports are random; only the agent's
# HTTP port has a fixed default (52365), so each node gets its own. Each node also gets its own temp dir: in a shared
# one, a node that holds no reference to a job's working_dir package garbage-collects the unpacked copy that a job on
# another node is running from (seen: the sweep driver lost its own files).
start_worker() {
    local i="$1" pidfile="$PID_DIR/ray-worker-$1.pid"
    if [ -n "$(pid_from "$pidfile" "ray.scripts.scripts start --address")" ]; then
        log "Ray worker $i already running"
        return 0
    fi
    : >"$LOG_DIR/ray-worker-$i.log"
    log "starting Ray worker node w$i ($WORKER_CPUS CPUs, $WORKER_GPUS GPUs)"
    mkdir -p "$RAY_TMP-w$i"
    chmod 700 "$RAY_TMP-w$i"
    (cd "$RUN_DIR/cwd" && detach "$LOG_DIR/ray-worker-$i.log" "$pidfile" \
        env BINSWEEP_HOME="$(node_home "w$i")" \
        "$PY" -m ray.scripts.scripts start --address="$HOST:$GCS_PORT" --num-cpus="$WORKER_CPUS" \
        --num-gpus="$WORKER_GPUS" --labels="binsweep-node=w$i" --dashboard-agent-listen-port="$((AGENT_PORT + i))" \
        --temp-dir="$RAY_TMP-w$i" "${ray_common[@]}")
    started+=("$pidfile")
}
worker_up() { grep -q "Ray runtime started" "$LOG_DIR/ray-worker-$1.log" 2>/dev/null; }

if [ "$ADD_WORKERS" -gt 0 ]; then
    # numbered after every worker this cluster ever had (a killed node keeps its name and its logs)
    last=0
    for f in "$PID_DIR"/ray-worker-*.pid; do
        [ -e "$f" ] || continue
        n="$(basename "$f" .pid)"; n="${n#ray-worker-}"
        [ "$n" -gt "$last" ] && last="$n"
    done
    WORKERS_TO_START="$(seq $((last + 1)) $((last + ADD_WORKERS)))"
elif [ "$WORKERS" -gt 0 ]; then
    WORKERS_TO_START="$(seq 1 "$WORKERS")"
else
    WORKERS_TO_START=""
fi
for i in $WORKERS_TO_START; do start_worker "$i"; done
for i in $WORKERS_TO_START; do wait_for "Ray worker $i" "$PID_DIR/ray-worker-$i.pid" 120 worker_up "$i"; done
if [ "$ADD_WORKERS" -gt 0 ]; then
    log "added worker nodes: $(printf 'w%s ' $WORKERS_TO_START)"
    cat "$ENV_FILE"
    exit 0
fi

if [ "$WITH_MLFLOW" = 1 ]; then
    mlflow_up() { [ "$(http_status "$MLFLOW_URI/health")" = 200 ]; }
    wait_for "MLflow server" "$PID_DIR/mlflow.pid" 180 mlflow_up
fi

# ----------------------------------------------------------------------------------------------------------- env
{
    echo "# binsweep local cluster ($(date '+%Y-%m-%d %H:%M:%S')); stop with cluster/local/stop.sh"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_API_SERVER_ADDRESS=http://$HOST:$DASH_PORT"
    echo "export RAY_ADDRESS=$HOST:$GCS_PORT"
    [ "$WITH_MLFLOW" = 1 ] && echo "export MLFLOW_TRACKING_URI=$MLFLOW_URI"
    echo "export BINSWEEP_HOME=$BINSWEEP_HOME"
    echo "export BINSWEEP_RAY_STORAGE=$STORAGE"
    if [ "$S3" = 1 ]; then
        for v in AWS_ENDPOINT_URL MLFLOW_S3_ENDPOINT_URL AWS_DEFAULT_REGION AWS_REGION AWS_EC2_METADATA_DISABLED \
                 AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
            echo "export $v=${!v}"
        done
    fi
} >"$ENV_FILE"
{
    echo "# written by the first cluster/local/start.sh; --add-workers reads it"
    for v in S3 S3_PORT S3_BUCKET NODE_HOMES GCS_PORT DASH_PORT CLIENT_PORT AGENT_PORT WORKER_CPUS WORKER_GPUS NUM_CPUS NUM_GPUS \
             MAX_WORKERS OBJECT_STORE_MB WITH_MLFLOW MLFLOW_PORT; do
        printf '%s=%q\n' "$v" "${!v}"
    done
    printf 'BINSWEEP_RAY_STORAGE=%q\n' "$STORAGE"
} >"$CLUSTER_CONF"
log "up: Ray dashboard http://$HOST:$DASH_PORT (token in ~/.ray/auth_token)$([ "$WITH_MLFLOW" = 1 ] && echo ", MLflow $MLFLOW_URI ($BACKEND_NAME)")"
log "the exports below are also in $ENV_FILE"
cat "$ENV_FILE"
