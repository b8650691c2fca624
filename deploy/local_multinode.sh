#!/usr/bin/env bash
# A multi-node Ray cluster on one machine: a head node and one or more worker
# nodes, each its own raylet started with `ray start` on this host. Each
# node declares its own device resources (`device_<device>`, one unit per chip;
# scheduler.control.device_resource), so `infersched serve --address` places
# each pool's worker actors on the node of its kind, as on a real cluster.
#
#   deploy/local_multinode.sh [start] [options]   start it; prints RAY_AUTH_MODE=... and RAY_ADDRESS=127.0.0.1:PORT
#   deploy/local_multinode.sh status              print the address if it is running (exit 1 if not)
#   deploy/local_multinode.sh stop                stop every process of this cluster
#   deploy/local_multinode.sh pids                list those processes' PIDs (what stop would end)
#
# Options (start):
#   --head-resources JSON     the head's device resources (default '{"device_h100-sxm": 2}')
#   --worker-resources JSON   one worker node with these resources; repeat for more nodes
#                             (default: one node with '{"device_b200": 1}')
#   --head-only               no worker nodes: a one-node cluster (the live tests use it so
#                             that Ray's processes are started by a fresh process)
#   --port N                  GCS port (default: a free port)
#   --num-cpus N              CPUs each node declares (default 1: worker actors ask for none)
#   --timeout S               seconds to wait for every node to register (default 60)
# Options (stop):
#   --grace S                 seconds each stop stage may take before SIGKILL (default 5)
# Options (all commands):
#   --temp-dir DIR            Ray's temp dir for this cluster's nodes (default
#                             /tmp/infersched-ray-$UID; keep it short: Unix socket paths
#                             under it are limited to 107 characters)
#
# The defaults match deploy/clusters/live-small.yaml: its two h100-sxm pools on
# the head, its b200 pool on the worker node. The ports Ray would otherwise fix
# (GCS, dashboard, Ray client server, each node's dashboard agent) are picked
# free, so the cluster can start next to another local Ray. Ray registers the
# nodes under this host's IP (it replaces a loopback node address), and the GCS
# also answers on 127.0.0.1:PORT.
#
# Ray token authentication is on (RAY_AUTH_MODE=token, the token from
# ~/.ray/auth_token, generated when missing), as Ray does for a new head when a
# token exists. Drivers that join need the same setting:
#   eval "$(deploy/local_multinode.sh | sed 's/^/export /')"   # RAY_AUTH_MODE and RAY_ADDRESS
#   infersched serve --cluster deploy/clusters/live-small.yaml --address "$RAY_ADDRESS"
# Export RAY_AUTH_MODE=disabled before starting to run without it.
#
# `stop` ends only this cluster's processes (deploy/ray_cluster_pids.py): Ray
# processes whose command line names a session under its temp dir (GCS,
# raylets, agents, monitors), the Ray client server of its GCS port, and their
# descendants (worker processes). Like `ray stop`, it sends SIGTERM to the
# raylets first, then to the rest, then to the GCS, waiting for each stage
# (up to --grace seconds, default 5): raylets and the autoscaler monitor report
# their exit to the GCS and hang if it is already going. SIGKILL is left for
# what outlives that, and named. It does not use `ray stop`, which ends every
# Ray process on the machine, other clusters included.
set -euo pipefail

die() { echo "local_multinode: error: $*" >&2; exit 1; }
say() { echo "local_multinode: $*" >&2; }

command=start
case "${1:-}" in
  start|stop|status|pids) command=$1; shift ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

temp_dir=/tmp/infersched-ray-$(id -u)
head_resources='{"device_h100-sxm": 2}'
worker_resources=()
head_only=0
port=
num_cpus=1
timeout_s=60
stop_grace_s=5
while (($#)); do
  case $1 in
    --head-resources) head_resources=${2:?--head-resources needs a JSON object}; shift 2 ;;
    --worker-resources) worker_resources+=("${2:?--worker-resources needs a JSON object}"); shift 2 ;;
    --head-only) head_only=1; shift ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --num-cpus) num_cpus=${2:?--num-cpus needs a number}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
    --grace) stop_grace_s=${2:?--grace needs seconds}; shift 2 ;;
    --temp-dir) temp_dir=${2:?--temp-dir needs a directory}; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
if ((head_only)); then
  ((${#worker_resources[@]} == 0)) || die "--head-only and --worker-resources contradict each other"
else
  ((${#worker_resources[@]})) || worker_resources=('{"device_b200": 1}')
fi
[[ $temp_dir = /* ]] || die "--temp-dir must be an absolute path, got '$temp_dir'"
temp_dir=${temp_dir%/}
state_file=$temp_dir/infersched-cluster.env

# `ray` from PATH, else from the repository's virtual environment; python is
# the one that runs that `ray`, so it imports the same Ray.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ray_bin=$(command -v ray || true)
[[ -n $ray_bin ]] || ray_bin=$repo/.venv/bin/ray
[[ -x $ray_bin ]] || die "no 'ray' on PATH or in $repo/.venv (pip install 'ray[default]')"
python_bin=$(dirname "$ray_bin")/python
[[ -x $python_bin ]] || python_bin=$(command -v python3)
export RAY_USAGE_STATS_ENABLED=0
# Token authentication on every node and driver (Ray's default for a new head
# when a token exists). A node started without it cannot join a head that has
# it, so it is set explicitly rather than left to each process to infer.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

# PIDs of this cluster's processes (see deploy/ray_cluster_pids.py): Ray
# processes whose command line names a session under the temp dir, the Ray
# client server of its GCS port, and their descendants; never this script or
# what runs it.
gcs_port=
cluster_pids() {
  if [[ -z $gcs_port && -f $state_file ]]; then
    gcs_port=$(sed -n 's/^RAY_ADDRESS=.*://p' "$state_file")
  fi
  "$python_bin" "$repo/deploy/ray_cluster_pids.py" "$temp_dir" --exclude-tree $$ ${gcs_port:+--gcs-port "$gcs_port"}
}

stop_cluster() {
  local pids summary
  pids=$(cluster_pids) || die "could not list the cluster's processes"
  if [[ -z $pids ]]; then
    say "no processes of the cluster under $temp_dir"
  else
    if [[ -z $gcs_port && -f $state_file ]]; then
      gcs_port=$(sed -n 's/^RAY_ADDRESS=.*://p' "$state_file")
    fi
    summary=$("$python_bin" "$repo/deploy/ray_cluster_pids.py" "$temp_dir" --stop --grace "$stop_grace_s" \
      --exclude-tree $$ ${gcs_port:+--gcs-port "$gcs_port"}) || die "could not stop the cluster's processes"
    say "stopped the cluster under $temp_dir: $summary"
  fi
  rm -f "$state_file"
}

# Free loopback TCP ports, all distinct (held open together while picking).
free_ports() {
  "$python_bin" - "$1" <<'EOF'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
}

# Wait until every node has registered with GCS with its resources; print them.
wait_for_nodes() {
  "$python_bin" - "$1" "$2" "$3" <<'EOF'
import json, logging, sys, time
import ray
address, expected, timeout_s = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
try:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        have = [n["Resources"] for n in nodes]
        # Each expected node's resources appear on some distinct alive node.
        unmatched = list(have)
        missing = []
        for want in expected:
            hit = next((r for r in unmatched if all(r.get(k, 0) >= v for k, v in want.items())), None)
            if hit is None:
                missing.append(want)
            else:
                unmatched.remove(hit)
        if not missing:
            break
        if time.monotonic() > deadline:
            sys.exit(f"nodes with {missing} did not register within {timeout_s:g} s; alive: {have}")
        time.sleep(0.2)
    for n in nodes:
        devices = {k: v for k, v in n["Resources"].items() if k.startswith("device_")}
        kind = "head" if n["Resources"].get("node:__internal_head__") else "worker"
        print(f"local_multinode: {kind} node {n['NodeID'][:12]} {devices}", file=sys.stderr)
finally:
    ray.shutdown()
EOF
}

gcs_alive() {
  [[ -f $state_file ]] || return 1
  local address
  address=$(sed -n 's/^RAY_ADDRESS=//p' "$state_file")
  [[ -n $address ]] && "$python_bin" -c '
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
socket.create_connection((host, int(port)), timeout=1).close()' "$address" 2>/dev/null
}

case $command in
  pids)
    cluster_pids
    exit 0 ;;
  stop)
    stop_cluster
    exit 0 ;;
  status)
    if gcs_alive; then cat "$state_file"; exit 0; fi
    say "not running (no live GCS recorded under $temp_dir)"
    exit 1 ;;
esac

# ---- start --------------------------------------------------------------------------
if gcs_alive; then
  die "a cluster is already running under $temp_dir ($(sed -n "s/^RAY_ADDRESS=//p" "$state_file")); run '$0 stop' first"
fi
if [[ -n $(cluster_pids) ]]; then
  say "cleaning up processes left from an earlier cluster under $temp_dir"
  stop_cluster
fi
mkdir -p "$temp_dir"
if [[ $RAY_AUTH_MODE = token ]] && ! "$ray_bin" get-auth-token >/dev/null 2>&1; then
  say "no Ray auth token yet; generating one (ray get-auth-token --generate)"
  "$ray_bin" get-auth-token --generate >/dev/null
fi

n_workers=${#worker_resources[@]}
read -r -a ports <<<"$(free_ports $((n_workers + 4)))"
[[ -n $port ]] || port=${ports[0]}
gcs_port=$port
client_port=${ports[1]}
dashboard_port=${ports[n_workers + 3]}
address=127.0.0.1:$port

# Whatever fails from here on, leave nothing running.
started=0
cleanup_on_error() {
  if ((started == 0)); then
    say "start failed; stopping what was started (logs under $temp_dir/session_latest/logs)"
    stop_cluster
  fi
}
trap cleanup_on_error EXIT

common=(--temp-dir="$temp_dir" --num-cpus="$num_cpus"
        --object-store-memory=$((100 * 1024 * 1024)) --disable-usage-stats --log-style=record)

say "starting the head node on $address with $head_resources"
"$ray_bin" start --head --port="$port" --ray-client-server-port="$client_port" --include-dashboard=false \
  --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" \
  --dashboard-agent-listen-port="${ports[2]}" --resources="$head_resources" "${common[@]}" >"$temp_dir/head.log" 2>&1 \
  || { cat "$temp_dir/head.log" >&2; die "ray start --head failed"; }

for ((i = 0; i < n_workers; i++)); do
  say "starting worker node $((i + 1)) with ${worker_resources[i]}"
  "$ray_bin" start --address="$address" --dashboard-agent-listen-port="${ports[i + 3]}" \
    --resources="${worker_resources[i]}" "${common[@]}" >"$temp_dir/worker-$((i + 1)).log" 2>&1 \
    || { cat "$temp_dir/worker-$((i + 1)).log" >&2; die "ray start --address=$address failed"; }
done

expected=$("$python_bin" -c 'import json, sys; print(json.dumps([json.loads(a) for a in sys.argv[1:]]))' \
  "$head_resources" "${worker_resources[@]}")
wait_for_nodes "$address" "$expected" "$timeout_s" || die "the cluster did not come up"

printf 'RAY_AUTH_MODE=%s\nRAY_ADDRESS=%s\nTEMP_DIR=%s\n' "$RAY_AUTH_MODE" "$address" "$temp_dir" >"$state_file"
started=1
say "$((n_workers + 1)) node(s) up; join with: RAY_AUTH_MODE=$RAY_AUTH_MODE infersched serve --address $address ...; stop with: $0 stop"
echo "RAY_AUTH_MODE=$RAY_AUTH_MODE"
echo "RAY_ADDRESS=$address"
