"""Sandbox launcher: isolate this process, then ``execve`` the IPython kernel in its place.

Run as ``python -I -S _launcher.py '<json>'`` by :mod:`k25mini.tools.sandbox` (never imported as part of the
package API: it must start fast and imports only the standard library). Steps, in order:

1. new namespaces — ``mode == "root"``: network + mount + IPC namespaces (we are root in the initial user
   namespace); ``mode == "userns"``: a new user namespace first (unprivileged), mapping only our own uid/gid,
   then network + mount + IPC; ``mode == "weak"``: none (the caller labels every observation as such);
2. (root/userns) the root mount is made private and each world-writable scratch dir (``/tmp``, ``/dev/shm``, ...)
   gets a fresh size-capped tmpfs, so a write there dies with the namespace; the work dir, which sits under one
   of them, is bind-mounted back from a descriptor opened before the tmpfs hid it; (root) the ``PYTHONPATH``
   dirs (site-packages) are bound read-only under ``/tmp/.k25mini-site/N`` the same way, so the sandbox uid can
   import from a virtualenv inside a directory it may not traverse;
3. ``PR_SET_NO_NEW_PRIVS`` (setuid binaries cannot raise privileges again);
4. (root) ``setgroups([])`` + ``setresgid`` + ``setresuid`` to the episode's unprivileged uid;
5. resource limits (``RLIMIT_*``), ``umask 077``, ``chdir`` into the work dir;
6. ``execve`` the kernel with the scrubbed environment given in the json (nothing inherited).

Any failure exits with status 97 after one line on stderr, before user code can run.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x20, 0x1000, 0x4000, 0x40000
RO_BASE = "/tmp/.k25mini-site"  # (root mode) read-only views of the interpreter's site-packages
PR_SET_NO_NEW_PRIVS = 38
FAIL = 97

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _private_scratch(workdir: str, scratch: list, tmpfs_size: str, site_dirs: list | None = None) -> list:
    """Private tmpfs scratch dirs, the work dir bound back in; with ``site_dirs`` (root mode) each of them is also
    bound read-only under :data:`RO_BASE`, so the sandbox uid can import from site-packages that sit under a
    directory it cannot traverse (e.g. a checkout in a mode-700 ``mktemp -d``). Returns the paths to import
    from."""
    keep = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    site_fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in (site_dirs or []) if os.path.isdir(d)]
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    for d in scratch:
        _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={tmpfs_size}")
    if not os.path.isdir(workdir):  # its parent was hidden by a fresh tmpfs: recreate the mount point
        os.makedirs(workdir, mode=0o700)
        _mount(f"/proc/self/fd/{keep}", workdir, None, MS_BIND, None)
    os.close(keep)
    if not site_fds:
        return list(site_dirs or [])
    if "/tmp" not in scratch:
        raise OSError("read-only site-packages views need a private /tmp")
    views = []
    for i, fd in enumerate(site_fds):
        target = f"{RO_BASE}/{i}"
        os.makedirs(target, mode=0o755)
        os.chmod(RO_BASE, 0o755)
        os.chmod(target, 0o755)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        os.close(fd)
        views.append(target)
    return views


def main() -> None:
    cfg = json.loads(sys.argv[1])
    mode = cfg["mode"]
    workdir = cfg["workdir"]
    env = dict(cfg["env"])
    if mode == "root":
        _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC), "unshare(net|mount|ipc)")
        site = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        views = _private_scratch(workdir, cfg["scratch"], cfg["tmpfs_size"], site)
        if site:
            env["PYTHONPATH"] = os.pathsep.join(views)
    elif mode == "userns":
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC), "unshare(user|net|mount|ipc)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")  # our own ids only: not root inside, caps end at execve
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        _private_scratch(workdir, cfg["scratch"], cfg["tmpfs_size"])
    elif mode != "weak":
        raise ValueError(f"unknown mode {mode!r}")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if mode == "root":
        uid, gid = cfg["uid"], cfg["gid"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError(f"uid drop to {uid} did not take")
    for name, value in cfg["rlimits"].items():
        soft, hard = value if isinstance(value, list) else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.umask(0o077)
    os.chdir(workdir)
    os.execve(cfg["argv"][0], cfg["argv"], env)


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:  # noqa: BLE001 - any failure must stop here, before the kernel runs
        sys.stderr.write(f"k25mini sandbox launcher failed: {type(e).__name__}: {e}\n")
        sys.stderr.flush()
        os._exit(FAIL)
