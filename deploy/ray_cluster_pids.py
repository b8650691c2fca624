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
"""
from __future__ import annotations

import os
import re
import sys


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


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    options = {"--exclude-tree": None, "--gcs-port": None}
    rest = argv[1:]
    while rest:
        if rest[0] not in options or len(rest) < 2 or not rest[1].isdigit():
            print("usage: ray_cluster_pids.py TEMP_DIR [--gcs-port PORT] [--exclude-tree PID]", file=sys.stderr)
            return 2
        options[rest[0]] = int(rest[1])
        rest = rest[2:]
    try:
        pids = cluster_pids(argv[0], options["--exclude-tree"], options["--gcs-port"])
    except ValueError as exc:
        print(f"ray_cluster_pids: error: {exc}", file=sys.stderr)
        return 2
    for pid in pids:
        print(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
