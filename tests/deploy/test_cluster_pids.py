"""deploy/ray_cluster_pids.py picks one cluster's processes and nothing else.

`local_multinode.sh stop` signals exactly what this lists, so it is tested
with stand-in processes whose command lines look like a Ray cluster's: a
process naming a session under the temp dir (and its unnamed child), a Ray
client server of the cluster's GCS port, and look-alikes that must be left
alone.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "ray_cluster_pids.py"
_spec = importlib.util.spec_from_file_location("ray_cluster_pids", SCRIPT)
ray_cluster_pids = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ray_cluster_pids)


def _fake(argv: list[str]) -> subprocess.Popen:
    """bash running `sleep 60; true` (a child that names nothing) under the given argv[0] and extra args."""
    return subprocess.Popen([argv[0], "-c", "sleep 60; true", *argv[1:]], executable="/bin/bash")


def _children(pid: int) -> set[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child")


@pytest.fixture
def fakes():
    root = tempfile.mkdtemp(prefix="isr-test-", dir="/tmp")
    procs = {
        "session": _fake([f"{root}/session_2026-01-01_00-00-00_1/raylet"]),
        "client_server": _fake(["python", "-m", "ray.util.client.server", "--address=192.0.2.9:43210", "--port=1"]),
        "other_port": _fake(["python", "-m", "ray.util.client.server", "--address=192.0.2.9:43211", "--port=1"]),
        "similar_dir": _fake([f"{root}x/session_1/raylet"]),
        "names_dir_only": _fake(["tool", f"--temp-dir={root}"]),
    }
    try:
        yield root, {name: p.pid for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
        Path(root).rmdir()


def test_picks_session_processes_their_children_and_the_client_server(fakes):
    root, pids = fakes
    session_child = _children(pids["session"])
    picked = set(ray_cluster_pids.cluster_pids(root, gcs_port=43210))
    expected = {pids["session"], pids["client_server"], *session_child, *_children(pids["client_server"])}
    assert picked == expected


def test_without_the_gcs_port_the_client_server_is_not_picked(fakes):
    root, pids = fakes
    picked = set(ray_cluster_pids.cluster_pids(root))
    assert pids["session"] in picked and pids["client_server"] not in picked
    assert not picked & {pids["other_port"], pids["similar_dir"], pids["names_dir_only"]}


def test_never_picks_the_asking_process_tree(fakes):
    root, pids = fakes
    # Asking from inside the "session" tree (as the script does for its own PID) spares it.
    picked = set(ray_cluster_pids.cluster_pids(root, exclude_tree=pids["session"]))
    assert pids["session"] not in picked and not picked & _children(pids["session"])


@pytest.mark.parametrize("bad", ["/", "/tmp", "/tmp/", "relative/dir", ""])
def test_refuses_a_directory_that_is_not_dedicated(bad):
    done = subprocess.run([sys.executable, str(SCRIPT), bad], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and not done.stdout


@pytest.mark.parametrize("cmdline, stage", [
    ("/venv/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/r/session_1/sockets/raylet", 0),
    ("/venv/lib/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/r/session_1/logs", 2),
    ("/venv/bin/python3 -u /venv/lib/ray/autoscaler/_private/monitor.py --logs-dir=/tmp/r/session_1/logs", 1),
    ("ray::DashboardAgent", 1),
    ("ray::IDLE", 1),
    ("", 1),
])
def test_stop_stage_of_each_ray_process(cmdline, stage):
    assert ray_cluster_pids.stage_of(cmdline) == stage


def _stand_in(root: str, exe: str, on_term: str) -> subprocess.Popen:
    """A process whose command line names the session as Ray's do, with `on_term` as its SIGTERM handler.

    Returns once the handler is set (the stand-in says so on stdout): a fixed sleep was not enough on a
    loaded machine, and a stand-in signalled before its trap dies as if it had honoured SIGTERM.
    """
    script = f"trap '{on_term}' TERM; echo trapped; exec >&-; while :; do sleep 0.05; done"
    proc = subprocess.Popen([f"{root}/session_1/{exe}", "-c", script, f"--logs-dir={root}/session_1/logs"],
                            executable="/bin/bash", stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "trapped\n"
    proc.stdout.close()
    return proc


# On SIGTERM a raylet unregisters its node with the GCS and the autoscaler monitor writes its exit
# there; with the GCS gone they wait on it. The stand-ins exit only while the stand-in GCS lives.
NEEDS_GCS = "kill -0 {gcs} 2>/dev/null && exit 0; sleep 30"


@pytest.mark.parametrize("others, killed", [
    ({"raylet": NEEDS_GCS, "python3": NEEDS_GCS}, set()),            # Ray's order: no SIGKILL
    ({"raylet": NEEDS_GCS, "python3": ""}, {"python3"}),             # ignores SIGTERM: killed, named
])
def test_stop_ends_stages_in_order_and_kills_only_what_ignores_sigterm(others, killed):
    root = tempfile.mkdtemp(prefix="isr-test-", dir="/tmp")
    procs = {}
    try:
        procs["gcs_server"] = _stand_in(root, "gcs_server", "exit 0")
        for exe, on_term in others.items():
            procs[exe] = _stand_in(root, exe, on_term.format(gcs=procs["gcs_server"].pid))
        seen, stages, sigkilled = ray_cluster_pids.stop(root, grace_s=1.5)
        assert seen >= {p.pid for p in procs.values()}
        raylets, rest, gcs = stages
        assert raylets == [procs["raylet"].pid] and gcs == [procs["gcs_server"].pid]
        assert procs["python3"].pid in rest  # with the stand-ins' `sleep` children
        # Named: what ignored SIGTERM (and the `sleep` it had just started), nothing else.
        assert {p.pid for p in procs.values()} & set(sigkilled) == {procs[exe].pid for exe in killed}
        for p in procs.values():
            p.wait(timeout=5)
        assert not ray_cluster_pids.cluster_pids(root)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
        Path(root).rmdir()


@pytest.mark.parametrize("argv", [["--stop", "--grace"], ["--stop", "--grace", "-1"], ["--grace", "x"],
                                  ["--gcs-port", "1.5"]])
def test_bad_options_print_usage(argv):
    done = subprocess.run([sys.executable, str(SCRIPT), "/tmp/isr-none", *argv], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "usage:" in done.stderr and not done.stdout


def test_stop_with_nothing_running_says_so():
    done = subprocess.run([sys.executable, str(SCRIPT), "/tmp/isr-none", "--stop"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("0 of 0 processes ended on SIGTERM")
