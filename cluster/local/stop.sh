#!/usr/bin/env bash
# Stop the local binsweep cluster that cluster/local/start.sh started for this BINSWEEP_HOME: extra Ray workers, the
# Ray head, the MLflow server, the S3 server and the private PostgreSQL cluster. Idempotent. It ends only the processes recorded in
# $BINSWEEP_HOME/runs/cluster/pids (each the leader of its own session, so together with what it spawned) and never
# calls `ray stop`, which would kill every Ray process on the machine, other users' and tests' included.
set -euo pipefail

# shellcheck source=cluster/local/_common.sh
. "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

case "${1:-}" in
    -h|--help) echo "usage: cluster/local/stop.sh   (stops what start.sh started for \$BINSWEEP_HOME=$BINSWEEP_HOME)"; exit 0 ;;
    "") ;;
    *) die "unknown option: $1" ;;
esac

# stop_session NAME PIDFILE PATTERN GRACE_S: SIGTERM the session leader (Ray drains its node and stops its children;
# MLflow stops its workers), wait, then SIGTERM and finally SIGKILL whatever of its session is left.
stop_session() {
    local name="$1" pidfile="$2" pattern="$3" grace="$4" pid t left
    [ -f "$pidfile" ] || return 0
    pid="$(pid_from "$pidfile" "$pattern")"
    if [ -z "$pid" ]; then
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        left="$( [ -n "$pid" ] && session_members "$pid" || true)"
        if [ -z "$left" ]; then
            log "$name: not running"
            rm -f "$pidfile"
            return 0
        fi
    else
        log "$name: stopping (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        t=0
        while alive "$pid" && [ "$t" -lt "$((grace * 5))" ]; do sleep 0.2; t=$((t + 1)); done
    fi
    left="$(session_members "$pid")"
    if [ -n "$left" ]; then
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null || true
        t=0
        while [ -n "$(session_members "$pid")" ] && [ "$t" -lt 25 ]; do sleep 0.2; t=$((t + 1)); done
        left="$(session_members "$pid")"
        # shellcheck disable=SC2086
        [ -n "$left" ] && { log "$name: killing $left"; kill -KILL $left 2>/dev/null || true; }
    fi
    rm -f "$pidfile"
}

[ -d "$PID_DIR" ] || { log "nothing to stop under $RUN_DIR"; exit 0; }

# workers first, so the head does not see them die; then the head, which also stops its dashboard and GCS
for f in "$PID_DIR"/ray-worker-*.pid; do
    [ -e "$f" ] || continue
    stop_session "Ray worker $(basename "$f" .pid | sed 's/ray-worker-//')" "$f" "ray.scripts.scripts start --address" 15
done
stop_session "Ray head" "$PID_DIR/ray-head.pid" "ray.scripts.scripts start --head" 20
stop_session "MLflow server" "$PID_DIR/mlflow.pid" "mlflow server" 10
stop_session "S3 server" "$PID_DIR/s3.pid" "moto.server" 10

if [ -f "$PG_DIR/data/PG_VERSION" ]; then
    if PG_BIN="$(pg_bin_dir)" && as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
        log "PostgreSQL: stopping"
        as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null
    else
        log "PostgreSQL: not running"
    fi
fi

# Ray's address file in the private temp dir now points at nothing
rm -f "$(ray_tmp_dir)/ray_current_cluster"
log "stopped"
