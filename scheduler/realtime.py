"""Real-time CPU priority for a latency-critical process (Linux SCHED_FIFO).

The scheduler is the control plane every request passes through twice. On a
host whose cores are busy (workers, clients, other jobs), the kernel's fair
scheduler lets a waking thread wait milliseconds for a core; a SCHED_FIFO
thread runs as soon as it is runnable. On the 2-core development machine
(BENCHMARKS.md, `bench/live_throughput.py --realtime-priority 10` against the
same without it, run back to back) this took the highest sustained rate from
500 to 600 requests/s, and a do-nothing gRPC server's p99 at 500 requests/s
from 7.9 ms to 2.0 ms.
The kernel's RT throttling (sched_rt_runtime_us, 95% by default) keeps the
rest of the host alive even if such a process spins.
"""
from __future__ import annotations

import os
import threading

MAX_PRIORITY = 99  # SCHED_FIFO priorities are 1..99 on Linux


def check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= MAX_PRIORITY:
        raise ValueError(f"realtime priority must be an integer in 1..{MAX_PRIORITY}, got {priority!r}")
    return priority


def set_realtime_priority(priority: int) -> int:
    """Put every thread of this process under SCHED_FIFO at `priority`; threads started
    later inherit it from the thread that starts them. Returns how many threads were
    set. Raises PermissionError (without CAP_SYS_NICE) or OSError (not Linux) with the
    reason."""
    check_priority(priority)
    if not hasattr(os, "sched_setscheduler") or not os.path.isdir("/proc/self/task"):
        raise OSError("realtime priority needs Linux (SCHED_FIFO via sched_setscheduler)")
    param = os.sched_param(priority)
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, param)
        except ProcessLookupError:
            continue  # the thread ended while we looked
        except PermissionError as exc:
            raise PermissionError(f"SCHED_FIFO priority {priority} needs CAP_SYS_NICE (root, or "
                                  f"`setcap cap_sys_nice+ep` on the interpreter): {exc.strerror}") from None
        count += 1
    return count


def fifo_permitted() -> bool:
    """Whether this process may use SCHED_FIFO. A throwaway thread tries it on itself
    and exits, so no thread that stays changes its policy."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    permitted = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # 0: the calling thread
            permitted.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return bool(permitted)
