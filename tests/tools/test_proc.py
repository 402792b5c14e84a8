"""The sandbox's /proc readers (one stat parse for the zombie count and the state/session lookup)."""

from __future__ import annotations

import os
import subprocess
import time

import k25mini.tools.sandbox as sb


def test_proc_parsers_see_a_zombie_child_and_a_gone_pid():
    """``_zombie_children`` and ``_proc_stat`` share one /proc/<pid>/stat parse."""

    p = subprocess.Popen(["true"])
    for _ in range(100):  # until the child has exited (unreaped: a zombie)
        if sb._zombie_children(os.getpid()) == 1:
            break
        time.sleep(0.01)
    assert sb._zombie_children(os.getpid()) == 1
    p.wait()
    assert sb._zombie_children(os.getpid()) == 0
    state, sid = sb._proc_stat(os.getpid())
    assert state in "RS" and sid == os.getsid(0)
    assert sb._proc_stat(2**22 + 12345) is None  # above pid_max: never a process
