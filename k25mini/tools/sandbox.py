"""The code tool: a real IPython kernel in a sandboxed subprocess (chapter 06, issue #16; design in docs/sandbox.md).

One :class:`CodeTool` episode = one kernel: ``start(image=..., frames=...)``, any number of ``run(code)`` calls
that share state, ``close()``. Every call returns an :class:`Observation` (status, text, truncation, elapsed
time, the sandbox label) — exceptions, timeouts and limit hits included; nothing is raised at the model.

Isolation modes, strongest first (``sandbox_capabilities()`` says which work on this machine):

* ``"root"`` (started as root): new network, mount and IPC namespaces; the kernel runs as a fresh unprivileged
  uid per kernel (so ``RLIMIT_NPROC`` binds to it alone and it cannot signal anything else); ``/tmp``,
  ``/var/tmp``, ``/dev/shm``, ``/run/lock`` are private throwaway tmpfs mounts.
* ``"userns"`` (not root): ``unshare -rn`` style — a user namespace mapping only our own uid, plus network,
  mount and IPC namespaces; RLIMIT_NPROC then counts all of the real user's processes (see docs).
* ``"weak"``: rlimits, a private work dir and a scrubbed environment only — *no network isolation, same uid*.
  Used only when asked for by name (``mode="weak"``), and then every observation says so.

The client talks to the kernel over jupyter's ``ipc`` transport (unix sockets in the work dir), which works
across network namespaces where TCP loopback does not.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from k25mini.tools.helpers import SHOW_MIME

LAUNCHER = Path(__file__).with_name("_launcher.py")
HELPERS_FILE = Path(__file__).with_name("helpers.py")
MODES = ("root", "userns", "weak")
WEAK_LABEL = "WEAK SANDBOX (rlimits only: NO network isolation, same uid)"
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/run/shm")
UID_BASE, UID_SPAN = 420_000, 60_000  # fresh sandbox uids are drawn from here (no /etc/passwd entry needed)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SandboxUnavailable(RuntimeError):
    """The isolation asked for (or any isolation, for ``mode="auto"``) does not work on this machine."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (kernel would not start); never raised for what user code does."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-kernel limits. ``nproc`` counts tasks (threads too) of the sandbox uid; an idle kernel uses ~11."""

    timeout_s: float = 10.0  # wall time per call; then SIGINT, then (after ``grace_s``) a kernel restart
    grace_s: float = 1.5
    cpu_s: int = 120  # RLIMIT_CPU of the kernel process (whole episode); SIGXCPU kills it -> restart
    memory_bytes: int = 2 << 30  # RLIMIT_AS; an idle kernel with numpy maps ~0.8 GB of address space
    nproc: int = 48  # RLIMIT_NPROC
    fsize_bytes: int = 64 << 20  # RLIMIT_FSIZE: largest file the kernel may write
    nofile: int = 256  # RLIMIT_NOFILE
    tmpfs_size: str = "64m"  # each private scratch tmpfs (root / userns modes)
    max_output_chars: int = 8000  # observation text beyond this is dropped (and the count reported)
    max_images: int = 4  # show() images per call
    max_image_pixels: int = 512 * 512
    start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("timeout_s", "grace_s", "start_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number of seconds, got {v!r}")
        for name in ("cpu_s", "memory_bytes", "nproc", "fsize_bytes", "nofile", "max_output_chars",
                     "max_image_pixels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive int, got {v!r}")
        if not isinstance(self.max_images, int) or self.max_images < 0:
            raise ValueError(f"SandboxLimits.max_images must be an int >= 0, got {self.max_images!r}")
        if not re.fullmatch(r"\d+[kmg]?", str(self.tmpfs_size)):
            raise ValueError(f"SandboxLimits.tmpfs_size must look like '64m', got {self.tmpfs_size!r}")

    def rlimits(self) -> dict[str, int | tuple[int, int]]:
        """(soft, hard) or one value for both. CPU: SIGXCPU at the soft limit, SIGKILL only at the hard one."""
        return {"RLIMIT_CPU": (self.cpu_s, self.cpu_s + 2), "RLIMIT_AS": self.memory_bytes, "RLIMIT_NPROC": self.nproc,
                "RLIMIT_FSIZE": self.fsize_bytes, "RLIMIT_NOFILE": self.nofile, "RLIMIT_CORE": 0}


@dataclass
class Observation:
    """What one tool call gives back. ``status``: ``ok`` | ``error`` (an exception in user code) | ``timeout``
    (wall limit) | ``limit`` (a resource limit: memory, processes, file size, CPU, open files).
    ``restarted``: the kernel was replaced during this call (its variables are gone; ``image``/``frames`` and
    the helpers are loaded again). ``sandbox``: the isolation label; in weak mode it also starts ``text``."""

    status: str
    text: str
    sandbox: str
    elapsed_s: float
    truncated: bool = False
    dropped_chars: int = 0
    restarted: bool = False
    images: list[np.ndarray] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return {"status": self.status, "text": self.text, "sandbox": self.sandbox, "elapsed_s": self.elapsed_s,
                "truncated": self.truncated, "dropped_chars": self.dropped_chars, "restarted": self.restarted,
                "images": [list(im.shape) for im in self.images]}

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SandboxCapabilities:
    """Which isolation modes work here. ``modes``: working mode -> interpreter it runs; ``problems``: mode -> why
    not. ``best`` is the strongest working mode other than ``weak`` (None when there is none)."""

    modes: dict[str, str]
    problems: dict[str, str]

    @property
    def best(self) -> str | None:
        for m in ("root", "userns"):
            if m in self.modes:
                return m
        return None


# --------------------------------------------------------------------------- probing


_PROBE = (
    "import json, os, socket, sys\n"
    "import numpy, ipykernel\n"
    "s = socket.socket()\n"
    "try:\n    s.connect(('127.0.0.1', 9)); net = 'open'\n"
    "except OSError as e:\n    net = e.strerror or str(e)\n"
    "print(json.dumps({'version': list(sys.version_info[:2]), 'uid': os.getuid(), 'net': net}))\n"
)
_caps_lock = threading.Lock()
_caps_cache: SandboxCapabilities | None = None


def _pythonpath() -> str:
    """The site-packages dirs of this interpreter, so a system interpreter of the same version finds ipykernel."""
    dirs = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    dirs += [p for p in site.getsitepackages() if p not in dirs]
    return os.pathsep.join(dirs)


def _python_candidates() -> list[str]:
    """This interpreter first; then same-version system interpreters (used when a sandbox uid cannot read ours,
    e.g. a pyenv build under root's mode-700 home)."""
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    out = [sys.executable]
    for d in ("/usr/bin", "/usr/local/bin", "/bin"):
        p = os.path.join(d, ver)
        if os.path.exists(p) and os.path.realpath(p) != os.path.realpath(sys.executable):
            out.append(p)
    return out


def _probe(mode: str, python: str) -> str | None:
    """Run the probe under ``mode`` with ``python``; None if it works as expected, else the reason."""
    spawn = _Spawn(mode, SandboxLimits(), python)
    try:
        proc = spawn.launch([python, "-s", "-c", _PROBE], capture=True)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return "probe timed out"
        if proc.returncode != 0:
            return f"probe exited {proc.returncode}: {(err or out).decode(errors='replace').strip()[-300:]}"
        info = json.loads(out.decode().strip().splitlines()[-1])
        if info["version"] != list(sys.version_info[:2]):
            return f"{python} is Python {info['version']}, not {list(sys.version_info[:2])}"
        if mode != "weak" and info["net"] == "open":
            return "network namespace did not isolate the loopback"
        if mode == "root" and info["uid"] == 0:
            return "uid drop did not take"
        return None
    finally:
        spawn.cleanup()


def sandbox_capabilities(refresh: bool = False) -> SandboxCapabilities:
    """Probe (once per process, cached) which isolation modes work and with which interpreter."""
    global _caps_cache
    with _caps_lock:
        if _caps_cache is not None and not refresh:
            return _caps_cache
        modes, problems = {}, {}
        if os.geteuid() == 0:  # a user namespace would map root to root: host root-owned files stay readable
            tried = ["root"]
            problems["userns"] = "running as root: the 'root' mode applies (userns would keep uid 0)"
        else:
            tried = ["userns"]
            problems["root"] = "not running as root"
        if sys.platform != "linux":
            problems.update({m: "needs Linux namespaces" for m in tried})
            tried = []
        for mode in tried:
            reasons = []
            for py in _python_candidates():
                why = _probe(mode, py)
                if why is None:
                    modes[mode] = py
                    break
                reasons.append(f"{py}: {why}")
            if mode not in modes:
                problems[mode] = "; ".join(reasons)
        modes["weak"] = sys.executable
        _caps_cache = SandboxCapabilities(modes, problems)
        return _caps_cache


# --------------------------------------------------------------------------- processes


def _proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _proc_fields(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, session id) of a process from /proc/<pid>/stat, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "(comm)": state ppid pgrp session ...
        return fields[0].decode(), int(fields[1]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) of a process, None if it is gone."""
    f = _proc_fields(pid)
    return None if f is None else (f[0], f[2])


def _zombie_children(parent: int) -> int:
    """How many exited, unreaped children ``parent`` has (they still count against RLIMIT_NPROC)."""
    return sum(1 for p in _pids() if (f := _proc_fields(p)) is not None and f[0] == "Z" and f[1] == parent)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _uid_in_use(uid: int) -> bool:
    return any(_proc_uid(p) == uid for p in _pids())


class _Spawn:
    """One sandbox: its work dir, its uid (root mode) and the launched process; ``cleanup()`` removes all."""

    def __init__(self, mode: str, limits: SandboxLimits, python: str) -> None:
        self.mode, self.limits, self.python = mode, limits, python
        self.workdir = tempfile.mkdtemp(prefix="k25sbx-")
        self.uid = self.gid = None
        if mode == "root":
            rng = random.SystemRandom()
            for _ in range(100):
                uid = UID_BASE + rng.randrange(UID_SPAN)
                if not _uid_in_use(uid):
                    break
            else:  # pragma: no cover - 60k uids all busy
                raise SandboxError("no free sandbox uid")
            self.uid = self.gid = uid
            os.chown(self.workdir, uid, uid)
        os.chmod(self.workdir, 0o700)
        self.home = os.path.join(self.workdir, "home")
        self.mkdir(self.home)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.workdir, ".kernel.log")  # root-owned; the kernel holds only the fd

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)
        self.chown(path)

    def chown(self, path: str) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home,
            "TMPDIR": self.workdir,
            "IPYTHONDIR": os.path.join(self.home, ".ipython"),
            "MPLCONFIGDIR": os.path.join(self.home, ".matplotlib"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": _pythonpath(),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }

    def launch(self, argv: list[str], capture: bool = False) -> subprocess.Popen:
        cfg = {
            "mode": self.mode,
            "workdir": self.workdir,
            "scratch": [d for d in SCRATCH_DIRS if os.path.isdir(d) and os.stat(d).st_mode & 0o002],
            "tmpfs_size": self.limits.tmpfs_size,
            "uid": self.uid,
            "gid": self.gid,
            "rlimits": self.limits.rlimits(),
            "argv": argv,
            "env": self.env(),
        }
        if capture:
            out = err = subprocess.PIPE
        else:
            out = err = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env={"LANG": "C.UTF-8"},
                start_new_session=True, cwd="/",
            )
        finally:
            if not capture:
                os.close(out)
        return self.proc

    def log_tail(self, n: int = 600) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def strays(self) -> list[int]:
        """Live processes of this sandbox other than the kernel (zombies left out): same uid (root mode) or same
        session (other modes; a process that calls setsid() escapes this sweep, see docs/sandbox.md)."""
        if self.proc is None:
            return []
        main = self.proc.pid
        out = []
        for p in _pids():
            if p == main or (self.uid is not None and _proc_uid(p) != self.uid):
                continue
            st = _proc_stat(p)
            if st is not None and st[0] not in "ZX" and (self.uid is not None or st[1] == main):
                out.append(p)
        return out

    def kill_strays(self, rounds: int = 20) -> int:
        """Stop, then kill, every stray process (stopping first so a fork bomb cannot outrun the sweep).

        A process caught mid-``fork()`` by SIGSTOP can still complete the fork after the scan that found nothing
        new, so the whole stop-kill pass repeats until a scan after the kills finds no live stray."""
        killed: set[int] = set()
        for _ in range(rounds):
            seen: set[int] = set()
            for _ in range(50):
                new = [p for p in self.strays() if p not in seen]
                if not new:
                    break
                for p in new:
                    try:
                        os.kill(p, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
                seen.update(new)
            if not seen:
                break
            for p in seen:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= seen
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:  # let SIGKILL land so the caller can reap the zombies
                if all((st := _proc_stat(p)) is None or st[0] in "ZX" for p in seen):
                    break
                time.sleep(0.01)
        return len(killed)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        self.kill_strays()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
                pass
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
        self.kill_strays()  # anything forked in between

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- the kernel


class _Output:
    """Bounded text accumulator: keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.size, self.dropped = limit, [], 0, 0

    def add(self, s: str) -> None:
        room = self.limit - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(room, len(s))
        self.dropped += max(0, len(s) - max(room, 0))

    def text(self) -> str:
        return "".join(self.parts)


_SETUP = """
import sys
import numpy as np
exec(compile(open({helpers!r}).read(), 'k25mini_helpers', 'exec'))
del HELPERS
print(end='', flush=True); print(end='', file=sys.stderr, flush=True)  # start ipykernel's lazy output threads


def _k25_fork_guard():
    # A process forked by the code is a copy of the kernel, sockets included. If its copy of the cell ends
    # (normally or with an exception, e.g. EAGAIN in a fork bomb) it would return into the kernel's loop and
    # read and write the parent's messaging sockets, which can leave the parent waiting for a request that a
    # child consumed. A forked copy therefore exits as soon as its cell is over.
    import os
    shell = get_ipython()
    master = os.getpid()
    show = shell.showtraceback

    def showtraceback(*a, **k):
        if os.getpid() != master:
            os._exit(1)
        return show(*a, **k)

    def after_cell(*a, **k):
        if os.getpid() != master:
            os._exit(0)

    shell.showtraceback = showtraceback
    shell.events.register("post_run_cell", after_cell)
    hook = shell.displayhook
    start = hook.start_displayhook

    def start_displayhook(*a, **k):
        if os.getpid() != master:
            os._exit(0)
        return start(*a, **k)

    hook.start_displayhook = start_displayhook


_k25_fork_guard()
del _k25_fork_guard
"""


class _Kernel:
    """A started, ready kernel inside a :class:`_Spawn`, with a blocking client over ipc sockets."""

    def __init__(self, mode: str, limits: SandboxLimits, python: str) -> None:
        from jupyter_client import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        t0 = time.perf_counter()
        self.spawn = _Spawn(mode, limits, python)
        self.limits = limits
        try:
            sp = self.spawn
            conn = os.path.join(sp.workdir, "kernel.json")
            write_connection_file(conn, transport="ipc", ip=os.path.join(sp.workdir, "k"))
            sp.chown(conn)
            helpers = os.path.join(sp.workdir, "k25mini_helpers.py")
            shutil.copyfile(HELPERS_FILE, helpers)
            sp.chown(helpers)
            argv = [python, "-s", "-m", "ipykernel_launcher", "-f", conn, "--HistoryManager.enabled=False",
                    "--IPKernelApp.log_level=ERROR", "--InteractiveShell.colors=NoColor",
                    f"--IPKernelApp.parent_handle={os.getpid()}"]  # ipykernel exits if this client dies
            self.proc = sp.launch(argv)
            self.client = BlockingKernelClient(connection_file=conn)
            self.client.load_connection_file()
            self.client.start_channels()
            deadline = time.monotonic() + limits.start_timeout_s
            while True:
                if self.proc.poll() is not None:
                    raise SandboxError(f"kernel exited with {self.proc.returncode} while starting: {sp.log_tail()}")
                try:
                    self.client.wait_for_ready(timeout=min(1.0, max(0.05, deadline - time.monotonic())))
                    break
                except RuntimeError as e:
                    if time.monotonic() > deadline:
                        raise SandboxError(f"kernel did not start within {limits.start_timeout_s} s: "
                                           f"{e}; {sp.log_tail()}") from e
            setup = self.execute(_SETUP.format(helpers="k25mini_helpers.py"), limits.start_timeout_s)
            if setup["status"] != "ok":
                raise SandboxError(f"kernel setup failed: {setup['text'][-500:]}")
        except BaseException:
            self.close()
            raise
        self.start_s = time.perf_counter() - t0

    # -- process state
    def alive(self) -> bool:
        return self.proc.poll() is None

    def threads(self) -> set[str]:
        try:
            return set(os.listdir(f"/proc/{self.proc.pid}/task"))
        except OSError:
            return set()

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.stop_channels()
        self.spawn.cleanup()

    def put_array(self, name: str, arr: np.ndarray) -> None:
        path = os.path.join(self.spawn.workdir, f"{name}.npy")
        np.save(path, arr, allow_pickle=False)
        self.spawn.chown(path)

    # -- one execution
    def execute(self, code: str, timeout: float) -> dict:
        """Run ``code``; returns status ('ok'/'error'/'timeout'/'dead'), text, truncation, images, and whether
        the kernel is still usable (``alive``) and interruptible (``hung``: it ignored the interrupt)."""
        lim = self.limits
        out = _Output(lim.max_output_chars)
        images: list[np.ndarray] = []
        notes: list[str] = []
        error: dict | None = None
        kc = self.client
        msg_id = kc.execute(code, silent=False, store_history=False, allow_stdin=False, stop_on_error=True)
        t0 = time.monotonic()
        interrupted_at = None
        reply = idle = False
        hung = False
        while not (reply and idle):
            now = time.monotonic()
            if interrupted_at is None and now - t0 > timeout:
                interrupted_at = now
                try:
                    os.kill(self.proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
            if interrupted_at is not None and now - interrupted_at > lim.grace_s:
                hung = True
                break
            if not self.alive():
                break
            got = False
            if kc.iopub_channel.msg_ready() or kc.iopub_channel.socket.poll(20):
                msg = kc.iopub_channel.get_msg(timeout=0)
                got = True
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.add(content.get("text", ""))
                elif kind in ("execute_result", "display_data"):
                    data = content.get("data", {})
                    if SHOW_MIME in data:
                        img = self._decode_image(data[SHOW_MIME], len(images), notes)
                        if img is not None:
                            images.append(img)
                        out.add(f"[image {len(images)} shown]\n" if img is not None else "")
                    elif "text/plain" in data:
                        out.add(data["text/plain"] + "\n")
                    if any(k.startswith("image/") for k in data):
                        notes.append("image outputs are not passed on; use show(array)")
                elif kind == "error":
                    error = content
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
            if kc.shell_channel.msg_ready():
                msg = kc.shell_channel.get_msg(timeout=0)
                got = True
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = True
                    if msg["content"].get("status") == "error" and error is None:
                        error = msg["content"]
            if not got:
                continue
        text = out.text()
        if out.dropped:
            text += f"\n[output truncated: {out.dropped} more characters dropped]"
        if error is not None:
            tb = _ANSI.sub("", "\n".join(error.get("traceback", [])[-3:]))
            if len(tb) > 2000:
                tb = "..." + tb[-2000:]
            text += ("\n" if text else "") + (tb or f"{error.get('ename')}: {error.get('evalue')}")
        text += "".join(f"\n[{n}]" for n in dict.fromkeys(notes))
        if interrupted_at is not None:
            status = "timeout"
        elif not self.alive():
            status = "dead"
        elif error is not None:
            status = "error"
        else:
            status = "ok"
        return {"status": status, "text": text, "truncated": bool(out.dropped), "dropped": out.dropped,
                "images": images, "error": error, "hung": hung, "alive": self.alive() and not hung}

    def _decode_image(self, b64: str, n: int, notes: list[str]) -> np.ndarray | None:
        lim = self.limits
        if n >= lim.max_images:
            notes.append(f"only {lim.max_images} images per call are passed on")
            return None
        try:
            raw = base64.b64decode(b64, validate=True)
            if len(raw) > 4 * lim.max_image_pixels + 1024:
                raise ValueError("too large")
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError) as e:
            notes.append(f"an image could not be read: {e}")
            return None
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or arr.shape[0] * arr.shape[1] > lim.max_image_pixels:
            notes.append(f"images must be uint8 HxW(x3) with at most {lim.max_image_pixels} pixels")
            return None
        return arr


# --------------------------------------------------------------------------- pool


def _resolve_mode(mode: str) -> tuple[str, str]:
    """``mode`` -> (mode, interpreter). ``auto`` = strongest available; ``weak`` only when asked for by name."""
    if mode not in ("auto", *MODES):
        raise ValueError(f"mode must be 'auto', 'root', 'userns' or 'weak', got {mode!r}")
    caps = sandbox_capabilities()
    if mode == "auto":
        if caps.best is None:
            raise SandboxUnavailable(
                "no sandbox isolation works here (" + "; ".join(f"{m}: {w}" for m, w in caps.problems.items())
                + "). Refusing to run model code unsandboxed; pass mode='weak' to run with rlimits only "
                "(labelled as such in every observation)."
            )
        mode = caps.best
    if mode not in caps.modes:
        raise SandboxUnavailable(f"sandbox mode {mode!r} is unavailable here: {caps.problems.get(mode, '?')}")
    return mode, caps.modes[mode]


def _label(mode: str, uid: int | None) -> str:
    if mode == "root":
        return f"root: netns+mountns+ipcns, uid {uid}, rlimits"
    if mode == "userns":
        return "userns: netns+mountns+ipcns (own uid), rlimits"
    return WEAK_LABEL


class KernelPool:
    """Pre-started kernels (same mode and limits) so an episode starts without waiting for ipykernel.

    ``acquire()`` hands out a ready kernel (or starts one cold if none is ready) and starts a replacement in a
    background thread. Kernels in the pool have never run user code. ``close()`` stops them all.
    """

    def __init__(self, size: int = 1, mode: str = "auto", limits: SandboxLimits | None = None) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if limits is not None and not isinstance(limits, SandboxLimits):
            raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
        self.size = size
        self.limits = limits or SandboxLimits()
        self.mode, self.python = _resolve_mode(mode)
        self._ready: list[_Kernel] = []
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._starting = 0
        self._closed = False
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        for _ in range(size):
            self._start_one()

    def _start_one(self) -> None:
        th = threading.Thread(target=self._fill, daemon=True, name="k25-kernel-pool")
        with self._lock:
            self._starting += 1
            self._threads = [t for t in self._threads if t.is_alive()] + [th]
        th.start()

    def _fill(self) -> None:
        try:
            k = _Kernel(self.mode, self.limits, self.python)
        except BaseException as e:  # noqa: BLE001 - reported by acquire()
            with self._cv:
                self._starting -= 1
                self._errors.append(e)
                self._cv.notify_all()
            return
        with self._cv:
            self._starting -= 1
            if self._closed:
                k.close()
            else:
                self._ready.append(k)
            self._cv.notify_all()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the pool holds ``size`` ready kernels (benchmarks, tests)."""
        with self._cv:
            if not self._cv.wait_for(lambda: len(self._ready) >= self.size or self._errors, timeout):
                raise SandboxError(f"pool not ready within {timeout} s")
            if self._errors:
                raise SandboxError(f"a pool kernel failed to start: {self._errors[-1]}") from self._errors[-1]

    def acquire(self) -> _Kernel:
        with self._cv:
            if self._closed:
                raise RuntimeError("KernelPool is closed")
            k = self._ready.pop(0) if self._ready else None
        self._start_one()
        if k is not None and k.alive():
            return k
        if k is not None:
            k.close()
        return _Kernel(self.mode, self.limits, self.python)

    def close(self) -> None:
        """Stop every pooled kernel, waiting for kernels still starting (so none is left behind)."""
        with self._cv:
            self._closed = True
            ready, self._ready = self._ready, []
            threads = list(self._threads)
        for k in ready:
            k.close()
        for th in threads:  # a kernel that finishes starting after _closed is closed by _fill itself
            th.join(timeout=self.limits.start_timeout_s + 5)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- the tool


def _check_image(image, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {image.shape}")
    if image.dtype == object or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got dtype {image.dtype}")
    return np.ascontiguousarray(image)


class CodeTool:
    """A sandboxed, stateful Python tool for one episode at a time.

    >>> with CodeTool(timeout=5).start(image=img) as tool:     # doctest: +SKIP
    ...     tool.run("count_components(threshold(image))")

    ``mode``: ``"auto"`` (default; strongest isolation available, else :class:`SandboxUnavailable`), ``"root"``,
    ``"userns"``, or ``"weak"`` (rlimits only; labelled in every observation). ``pool``: take kernels from a
    :class:`KernelPool` (its mode and limits then apply). ``timeout`` overrides ``limits.timeout_s``.
    """

    def __init__(self, mode: str = "auto", limits: SandboxLimits | None = None, timeout: float | None = None,
                 pool: KernelPool | None = None) -> None:
        if limits is not None and not isinstance(limits, SandboxLimits):
            raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if pool is not None:
            if not isinstance(pool, KernelPool):
                raise TypeError(f"pool must be a KernelPool, got {type(pool).__name__}")
            if limits is not None or mode != "auto":
                raise ValueError("with a pool, mode and limits come from the pool; do not pass them too")
            self.mode, self.python, self.limits = pool.mode, pool.python, pool.limits
        else:
            self.mode, self.python = _resolve_mode(mode)
            self.limits = limits or SandboxLimits()
        self.timeout = float(timeout) if timeout is not None else self.limits.timeout_s
        self.pool = pool
        self._kernel: _Kernel | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._setup: str | None = None
        self.restarts = 0
        self.start_s: float | None = None

    # -- episode lifecycle
    @property
    def started(self) -> bool:
        return self._kernel is not None

    @property
    def label(self) -> str:
        uid = self._kernel.spawn.uid if self._kernel is not None else None
        return _label(self.mode, uid)

    @property
    def workdir(self) -> str | None:
        return self._kernel.spawn.workdir if self._kernel is not None else None

    @property
    def kernel_pid(self) -> int | None:
        return self._kernel.proc.pid if self._kernel is not None else None

    def start(self, image: np.ndarray | None = None, frames=None, setup: str | None = None) -> CodeTool:
        """Begin an episode: a fresh kernel with ``image`` (HxW or HxWxC) / ``frames`` (TxHxW(xC), or a list of
        equal-shape frames) preloaded as numpy arrays, and the helpers of :mod:`k25mini.tools.helpers`.
        ``setup``: Python run (inside the sandbox, its output discarded) after loading, and again after every
        kernel restart, e.g. a colour palette the task's code may name."""
        if setup is not None and not isinstance(setup, str):
            raise ValueError(f"setup must be a string of Python code or None, got {type(setup).__name__}")
        arrays = {}
        if image is not None:
            arrays["image"] = _check_image(image, "image", (2, 3))
        if frames is not None:
            if isinstance(frames, (list, tuple)):
                if not frames:
                    raise ValueError("frames must not be empty")
                frames = np.stack([_check_image(f, f"frames[{i}]", (2, 3)) for i, f in enumerate(frames)])
            arrays["frames"] = _check_image(frames, "frames", (3, 4))
        if self._kernel is not None:
            self.close()
        t0 = time.perf_counter()
        self._arrays = arrays
        self._setup = setup
        self._kernel = self._new_kernel()
        self.restarts = 0
        self.start_s = time.perf_counter() - t0
        return self

    def _new_kernel(self) -> _Kernel:
        k = self.pool.acquire() if self.pool is not None else _Kernel(self.mode, self.limits, self.python)
        try:
            if self._arrays:
                for name, arr in self._arrays.items():
                    k.put_array(name, arr)
                code = "\n".join(f"{n} = np.load('{n}.npy', allow_pickle=False)" for n in self._arrays)
                res = k.execute(code, self.limits.start_timeout_s)
                if res["status"] != "ok":
                    raise SandboxError(f"could not load {sorted(self._arrays)} into the kernel: {res['text'][-300:]}")
            if self._setup:
                res = k.execute(self._setup, self.limits.start_timeout_s)
                if res["status"] != "ok":
                    raise SandboxError(f"the episode's setup code failed in the kernel: {res['text'][-300:]}")
        except BaseException:
            k.close()
            raise
        return k

    def close(self) -> None:
        """End the episode: kill the kernel and everything it started, delete its work dir."""
        if self._kernel is not None:
            k, self._kernel = self._kernel, None
            k.close()

    def __enter__(self) -> CodeTool:
        if self._kernel is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- calls
    def run(self, code: str, timeout: float | None = None) -> Observation:
        """Execute ``code`` in the episode's kernel; always returns an :class:`Observation`."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if self._kernel is None:
            raise RuntimeError("CodeTool.run() before start(): call start(image=...) to begin an episode")
        t0 = time.perf_counter()
        k = self._kernel
        label = self.label
        threads_before = k.threads()
        res = k.execute(code, timeout if timeout is not None else self.timeout)
        status, text, notes = res["status"], res["text"], []
        restart_why = None
        if res["hung"]:
            new_threads = k.threads() - threads_before
            restart_why = ("threads started by the code kept running after the interrupt" if new_threads
                           else "the code ignored the interrupt after the time limit")
        elif status == "dead" or not k.alive():
            rc = k.proc.poll()
            if rc is not None and -rc == signal.SIGXCPU:
                status = "limit"
                restart_why = f"the kernel hit its CPU-time limit (RLIMIT_CPU = {self.limits.cpu_s} s) and was killed"
            else:
                status = "error" if status == "dead" else status
                how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"status {rc}"
                restart_why = f"the kernel died ({how})"
        elif status == "timeout" and k.threads() - threads_before:
            restart_why = "threads started by the code kept running after the interrupt"
        if status == "timeout":
            notes.append(f"time limit of {timeout or self.timeout:g} s reached; execution interrupted")
        elif status == "error" and _is_limit(res["error"]):
            status = "limit"
        if restart_why is None:
            n = k.spawn.kill_strays()
            if n:
                notes.append(f"stopped {n} background process(es) left by this call")
            if n or (k.alive() and _zombie_children(k.proc.pid)):  # e.g. forked copies that exited on their own
                reap = k.execute(_REAP, self.limits.start_timeout_s)  # zombies would count against RLIMIT_NPROC
                if reap["status"] != "ok" or reap["hung"] or not k.alive():
                    restart_why = "the kernel stopped answering after its background processes were stopped"
        restarted = False
        if restart_why is not None:
            k.close()
            self._kernel = None
            self._kernel = self._new_kernel()
            self.restarts += 1
            restarted = True
            notes.append(f"{restart_why}; kernel restarted: variables are lost, image/frames and helpers reloaded")
        text = text + "".join(f"\n[sandbox: {n}]" for n in notes)
        if self.mode == "weak":
            text = f"[{WEAK_LABEL}]\n{text}"
        return Observation(status=status, text=text.strip("\n"), sandbox=label,
                           elapsed_s=time.perf_counter() - t0, truncated=res["truncated"],
                           dropped_chars=res["dropped"], restarted=restarted, images=res["images"])


_REAP = """
import os as _os
while True:
    try:
        if _os.waitpid(-1, _os.WNOHANG)[0] == 0:
            break
    except ChildProcessError:
        break
del _os
"""


def _is_limit(error: dict | None) -> bool:
    """Errors that mean a resource limit was hit (memory, processes/threads, file size, open files)."""
    if not error:
        return False
    name, value = error.get("ename", ""), str(error.get("evalue", ""))
    return (
        name == "MemoryError"
        or "[Errno 11]" in value and name in ("BlockingIOError", "OSError")  # fork/clone: RLIMIT_NPROC
        or "can't start new thread" in value
        or "[Errno 27]" in value  # EFBIG: RLIMIT_FSIZE
        or "[Errno 24]" in value  # EMFILE: RLIMIT_NOFILE
    )
