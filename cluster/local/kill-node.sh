#!/usr/bin/env bash
# Kill a worker node of the local cluster the way a cloud loses one (a spot reclaim, a kernel panic): SIGKILL of its
# raylet, no drain, no goodbye. Ray marks the node dead, its workers die with it, and Tune retries the trials that ran
# there (max_failures) on the nodes that are left. The node's `ray start --block` process notices and exits.
#
#     cluster/local/kill-node.sh w2        # or just 2
set -euo pipefail

# shellcheck source=cluster/local/_common.sh
. "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

case "${1:-}" in
    -h|--help|"") echo "usage: cluster/local/kill-node.sh wI   (a worker node that start.sh started, e.g. w1)"; exit 0 ;;
esac
i="${1#w}"
case "$i" in ''|*[!0-9]*) die "node '$1': expected w<number>, e.g. w1" ;; esac
pidfile="$PID_DIR/ray-worker-$i.pid"
leader="$(pid_from "$pidfile" "ray.scripts.scripts start --address")"
[ -n "$leader" ] || die "node w$i is not running (no live process in $pidfile)"
raylet=""
for p in $(session_members "$leader"); do
    case "$(cmdline_of "$p")" in *"/raylet "*|*"raylet/raylet"*) raylet="$p" ;; esac
done
[ -n "$raylet" ] || die "node w$i: no raylet among its processes"
kill -KILL "$raylet"
log "killed the raylet of node w$i (pid $raylet)"
