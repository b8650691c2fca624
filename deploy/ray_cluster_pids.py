"""PIDs of one local Ray cluster's processes, for deploy/local_multinode.sh stop.

    python deploy/ray_cluster_pids.py TEMP_DIR [--gcs-port PORT] [--exclude-tree PID]

Prints one PID a line: the Ray processes whose command line names a session
under TEMP_DIR (GCS, raylets, agents, log monitor, autoscaler monitor; all of
them carry `TEMP_DIR/session_...` in a flag), with `--gcs-port` also the Ray
client server (`python -m ray.util.client.server --address=HOST:PORT`, which
names no session), plus every descendant of those (worker processes retitle
themselves "ray::...", so only their parent ties them to the cluster).
`--exclude-tree PID` leaves out PID, its ancestors and its descendants: the
script that asks, and whatever runs it, whose own command lines may name the
directory.

Matching a session path instead of "anything mentioning TEMP_DIR" keeps
unrelated processes out, and a temp dir must be a dedicated absolute
directory, so a typo cannot select every process on the machine.

    python deploy/ray_cluster_pids.py TEMP_DIR --stop [--grace S] [...]

ends those processes in the order `ray stop` uses: raylets, then everything
else (agents, dashboard, monitors, client server, workers), then the GCS,
each stage sent SIGTERM and given up to S seconds (default 5) to exit;
only what outlives every stage gets SIGKILL. The order matters: on SIGTERM a
raylet unregisters its node with the GCS and the autoscaler monitor writes its
exit to the GCS, both waiting for the reply; a GCS that got SIGTERM at the
same moment has stopped answering, so they hang until killed.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time

# Stop stages by executable name, as `ray stop` orders them: raylets first (their agents
# fate-share with them), the GCS last (every other process reports to it while exiting).
FIRST, LAST = ("raylet",), ("gcs_server",)


def processes() -> tuple[dict[int, int], dict[int, str]]:
    """Every process's parent PID and command line (arguments joined by spaces)."""
    parent: dict[int, int] = {}
    args: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                # Field 4 (ppid) follows the parenthesised command name, which may hold spaces.
                parent[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return parent, args


def cluster_pids(temp_dir: str, exclude_tree: int | None = None, gcs_port: int | None = None) -> list[int]:
    root = os.path.abspath(temp_dir).rstrip("/")
    if not os.path.isabs(temp_dir) or root.count("/") < 2:
        raise ValueError(f"temp dir must be a dedicated absolute directory such as /tmp/NAME, got {temp_dir!r}")
    needle = root + "/session_"
    parent, args = processes()

    def ancestors(pid: int) -> set[int]:
        seen: set[int] = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            pid = parent.get(pid, 0)
        return seen

    spared: set[int] = ancestors(exclude_tree) if exclude_tree else set()
    client = re.compile(rf"-m ray\.util\.client\.server .*--address=\S+:{gcs_port}( |$)") if gcs_port else None
    marked = {pid for pid, a in args.items()
              if pid > 1 and pid not in spared and (needle in a or (client is not None and client.search(a)))}
    frontier = set(marked)
    while frontier:
        frontier = {pid for pid, pp in parent.items() if pp in frontier and pid not in marked}
        marked |= frontier
    return sorted(pid for pid in marked
                  if pid > 1 and pid not in spared and not (exclude_tree and exclude_tree in ancestors(pid)))


def stage_of(cmdline: str) -> int:
    """0 for raylets, 2 for the GCS, 1 for every other process of a cluster."""
    exe = os.path.basename(cmdline.split(" ", 1)[0])
    return 0 if exe in FIRST else 2 if exe in LAST else 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


def _signal(pids, signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop(temp_dir: str, exclude_tree: int | None = None, gcs_port: int | None = None, grace_s: float = 5.0,
         poll_s: float = 0.02) -> tuple[set[int], list[list[int]], list[int]]:
    """SIGTERM the cluster's processes stage by stage, waiting up to grace_s for each stage; SIGKILL what is
    left at the end. Returns (every PID seen, the PIDs sent SIGTERM per stage, the PIDs that needed SIGKILL).
    Agents and workers whose raylet exits end with it before their own stage comes."""
    seen = set(cluster_pids(temp_dir, exclude_tree, gcs_port))
    stages: list[list[int]] = []
    for stage in range(3):
        # Listed afresh per stage: a worker forked meanwhile belongs to the cluster too.
        _, args = processes()
        pids = [p for p in cluster_pids(temp_dir, exclude_tree, gcs_port) if stage_of(args.get(p, "")) == stage]
        seen.update(pids)
        stages.append(pids)
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        waiting = set(pids)
        while waiting and time.monotonic() < deadline:
            waiting = {p for p in waiting if _alive(p)}
            if waiting:
                time.sleep(poll_s)
    killed = [p for p in cluster_pids(temp_dir, exclude_tree, gcs_port) if _alive(p)]
    _signal(killed, signal.SIGKILL)
    return seen | set(killed), stages, killed


USAGE = "usage: ray_cluster_pids.py TEMP_DIR [--gcs-port PORT] [--exclude-tree PID] [--stop [--grace S]]"


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    options: dict[str, float | None] = {"--exclude-tree": None, "--gcs-port": None, "--grace": 5.0}
    do_stop = False
    rest = argv[1:]
    while rest:
        if rest[0] == "--stop":
            do_stop, rest = True, rest[1:]
            continue
        key, value = rest[0], rest[1] if len(rest) > 1 else ""
        if key not in options or not re.fullmatch(r"\d+(\.\d+)?" if key == "--grace" else r"\d+", value):
            print(USAGE, file=sys.stderr)
            return 2
        options[key] = float(value) if key == "--grace" else int(value)
        rest = rest[2:]
    exclude, port = options["--exclude-tree"], options["--gcs-port"]
    try:
        if not do_stop:
            for pid in cluster_pids(argv[0], exclude, port):
                print(pid)
            return 0
        start = time.monotonic()
        seen, stages, killed = stop(argv[0], exclude, port, grace_s=float(options["--grace"]))
    except ValueError as exc:
        print(f"ray_cluster_pids: error: {exc}", file=sys.stderr)
        return 2
    raylets, others, gcs = (len(s) for s in stages)
    print(f"{len(seen) - len(killed)} of {len(seen)} processes ended on SIGTERM in {time.monotonic() - start:.1f} s "
          f"(sent to {raylets} raylets, then {others} others, then {gcs} GCS)"
          + (f"; SIGKILL: {' '.join(map(str, killed))}" if killed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
