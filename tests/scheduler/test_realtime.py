"""scheduler.realtime: every thread of the process under SCHED_FIFO, threads started
later included, or a PermissionError that names the missing capability."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from scheduler.realtime import check_priority, fifo_permitted

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_FIFO is Linux-only here")

# Runs in a child process, so this test process keeps its own scheduling policy.
CHILD = textwrap.dedent("""
    import json, os, sys, threading
    from scheduler.realtime import set_realtime_priority
    stop = threading.Event()
    before = threading.Thread(target=stop.wait)
    before.start()
    try:
        set = set_realtime_priority(3)
    except PermissionError as exc:
        stop.set()
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
    after = threading.Thread(target=stop.wait)
    after.start()
    policies = {tid: os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}
    params = {tid: os.sched_getparam(int(tid)).sched_priority for tid in policies}
    stop.set()
    print(json.dumps({"set": set, "policies": policies, "params": params, "fifo": os.SCHED_FIFO}))
""")


def test_every_thread_runs_fifo_or_the_error_names_the_capability():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    if not fifo_permitted():
        assert "CAP_SYS_NICE" in out["error"]
        return
    assert out["set"] >= 2  # the main thread and the one started before
    assert len(out["policies"]) >= 3  # ... and the one started after, which inherited it
    assert set(out["policies"].values()) == {out["fifo"]}
    assert set(out["params"].values()) == {3}


def test_the_permission_probe_leaves_this_process_as_it_was():
    fifo_permitted()
    assert {os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")} == {os.SCHED_OTHER}


@pytest.mark.parametrize("bad", [0, 100, -1, 2.5, True, "5"])
def test_priority_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"realtime priority must be an integer in 1\.\.99"):
        check_priority(bad)
