# Shared by start.sh and stop.sh (sourced, not run). Bash 3.2+ (macOS) and Linux.
#
# Layout, all under $BINSWEEP_HOME/runs/cluster (BINSWEEP_HOME defaults to the repository):
#   pids/ray-head.pid, pids/ray-worker-<i>.pid, pids/mlflow.pid   leaders of new sessions (setsid)
#   logs/ray-head.log, logs/ray-worker-<i>.log, logs/mlflow.log, logs/postgres.log, logs/ray -> Ray's session logs
#   pg/                  the private PostgreSQL cluster (data/, sock/), when that backend is used
#   env.sh               the exports a client needs (also printed by start.sh on stdout)
#   cluster.conf         the choices of the first start (--s3, --node-homes, ports), for --add-workers
#   nodes/<node>/        each node's own BINSWEEP_HOME with --node-homes (head, w1, w2, ...)
#   pids/s3.pid, logs/s3.log   moto's S3 server with --s3
#   cwd/                 empty working directory of the Ray head (jobs without a working_dir run here)
# Ray's own temp dir lives at /tmp/binsweep-<uid>-<hash>/ray because its unix sockets must have short paths.

CLUSTER_SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CLUSTER_SCRIPT_DIR/../.." && pwd)"
BINSWEEP_HOME="${BINSWEEP_HOME:-$REPO_DIR}"
mkdir -p "$BINSWEEP_HOME"
BINSWEEP_HOME="$(cd "$BINSWEEP_HOME" && pwd)"
export BINSWEEP_HOME

RUN_DIR="$BINSWEEP_HOME/runs/cluster"
PID_DIR="$RUN_DIR/pids"
LOG_DIR="$RUN_DIR/logs"
PG_DIR="$RUN_DIR/pg"
ENV_FILE="$RUN_DIR/env.sh"

# The Python that has ray and mlflow: BINSWEEP_PYTHON, else the repository's .venv, else python3 on PATH.
if [ -n "${BINSWEEP_PYTHON:-}" ]; then
    PY="$BINSWEEP_PYTHON"
elif [ -x "$REPO_DIR/.venv/bin/python" ]; then
    PY="$REPO_DIR/.venv/bin/python"
else
    PY="$(command -v python3 || true)"
fi

log() { printf '[binsweep-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A short, stable temp dir for Ray per run dir (unix socket paths are limited to ~107 bytes). It ends in /ray, the
# name Ray gives its default temp dir under RAY_TMPDIR: with RAY_TMPDIR set to its parent, a bare ray.init() on this
# machine finds the head's address file there and joins, as it does on a `ray up` head (ray_runtime.running_cluster).
ray_tmp_dir() {
    local h
    h="$(printf '%s' "$RUN_DIR" | cksum | cut -d' ' -f1)"
    printf '/tmp/binsweep-%s-%s/ray' "$(id -u)" "$h"
}

# What the first start.sh chose for the whole cluster (S3 server, node-local homes); --add-workers reads it back.
CLUSTER_CONF="$RUN_DIR/cluster.conf"

# alive PID: the process exists and is not a zombie.
alive() {
    local pid="$1" stat
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    stat="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
    case "$stat" in Z*|"") return 1 ;; esac
    return 0
}

cmdline_of() { ps -o args= -p "$1" 2>/dev/null || true; }

# pid_from FILE PATTERN: the pid recorded in FILE if that process is alive and its command line contains PATTERN
# (guards against a recycled pid); prints nothing otherwise.
pid_from() {
    local file="$1" pattern="$2" pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file" 2>/dev/null || true)"
    if alive "$pid" && case "$(cmdline_of "$pid")" in *"$pattern"*) true ;; *) false ;; esac; then
        printf '%s' "$pid"
    fi
}

# Processes of session SID that are still alive (zombies excluded).
session_members() {
    local sid="$1" p
    for p in $(pgrep -s "$sid" 2>/dev/null || true); do
        if alive "$p"; then printf '%s ' "$p"; fi
    done
    return 0
}

# The PostgreSQL binaries: initdb/pg_ctl on PATH, else Debian's newest /usr/lib/postgresql/<v>/bin.
pg_bin_dir() {
    local d
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        d="$(dirname "$(command -v initdb)")"
        # /usr/local/bin/initdb may be a link into the real bin dir, where psql and createdb sit too
        if [ -L "$(command -v initdb)" ]; then
            d="$(cd "$(dirname "$(readlink -f "$(command -v initdb)")")" && pwd)"
        fi
        printf '%s' "$d"
        return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then printf '%s' "$d"; return 0; fi
    done
    return 1
}

# PostgreSQL refuses to run as root: as root, its commands run as this OS user.
PG_OS_USER="${BINSWEEP_PG_OS_USER:-postgres}"
as_pg_user() {
    if [ "$(id -u)" = 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u "$PG_OS_USER" -- "$@"
        else
            su -s /bin/sh "$PG_OS_USER" -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}
