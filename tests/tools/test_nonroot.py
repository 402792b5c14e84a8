"""The unprivileged path (``mode="userns"``, what a non-root user gets), exercised from a root test run by
dropping a child process to uid 65534 (nobody) with util-linux ``setpriv`` and running a few attacks there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k25mini.tools import sandbox as sb

REPO = Path(__file__).resolve().parents[2]
SCRIPT = r"""
import json, os
from k25mini.tools import CodeTool, sandbox_capabilities
caps = sandbox_capabilities()
out = {"uid": os.getuid(), "best": caps.best, "problems": caps.problems}
with CodeTool(timeout=2) as t:
    out["label"] = t.label
    out["net"] = t.run("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)").text
    out["uid_in"] = t.run("import os\nos.getuid()").text
    out["env"] = t.run("'K25_PLANTED' in os.environ").text
    out["fork"] = t.run("import os\nwhile True:\n    os.fork()", timeout=10).status
    out["after"] = t.run("1 + 1", timeout=30).text
    out["tmp"] = t.run("open('/tmp/k25-nonroot-' + str(os.getpid()), 'w').write('1')").text
    out["loop"] = t.run("while True:\n    pass").status
print(json.dumps(out))
"""


def _reachable_by_others(path: str) -> bool:
    """Every directory from / down to ``path`` can be traversed by a uid that is neither owner nor group."""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in [p, *p.parents])


def _under_scratch(path: str) -> bool:
    p = Path(path).resolve()
    return any(p == Path(d) or Path(d) in p.parents for d in sb.SCRATCH_DIRS)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_userns_mode_as_nobody(tmp_path):
    caps = sb.sandbox_capabilities()
    if "root" not in caps.modes:
        pytest.skip(f"no interpreter usable by a sandbox uid: {caps.problems}")
    unreachable = [p for p in [str(REPO), *sb._pythonpath().split(os.pathsep)] if p and not _reachable_by_others(p)]
    if unreachable:  # e.g. CI's clone in a mode-700 mktemp dir: uid 65534 cannot import the package at all
        pytest.skip(f"uid 65534 cannot reach {unreachable[0]}: the non-root path is only run from a world-"
                    "readable checkout")
    hidden = [p for p in [str(REPO), *sb._pythonpath().split(os.pathsep)] if p and _under_scratch(p)]
    if hidden:  # userns mode has no read-only views of site-packages (root mode has): a private tmpfs hides them
        pytest.skip(f"{hidden[0]} lies under a scratch dir ({', '.join(sb.SCRATCH_DIRS)}) that the userns sandbox "
                    "replaces with a private tmpfs: run from a checkout outside them (as CI does)")
    python = caps.modes["root"]  # the probe showed a sandbox uid can run it
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "K25_PLANTED": "1",
           "PYTHONPATH": os.pathsep.join([sb._pythonpath(), str(REPO)])}
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-s", "-c", SCRIPT],
                         env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(out)  # shown when an assertion below fails
    assert out["uid"] == 65534 and out["best"] == "userns", out
    assert out["label"].startswith("userns:") and "WEAK" not in out["label"]
    assert "Network is unreachable" in out["net"]
    assert out["uid_in"] == "65534" and out["env"] == "False"
    assert out["fork"] == "limit" and out["after"] == "2"
    assert out["tmp"] == "1" and not list(Path("/tmp").glob("k25-nonroot-*"))  # private tmpfs
    assert out["loop"] == "timeout"
    assert sys.executable  # the parent is untouched
