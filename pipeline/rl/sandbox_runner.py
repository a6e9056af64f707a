"""Runs inside the sandbox's fresh namespaces (started by `pipeline.rl.sandbox`, stdlib only).

    unshare --mount --net --pid --fork --kill-child [--map-root-user] \
        python -I -S sandbox_runner.py <spec.json>

As PID 1 of a new PID namespace, in a new mount and network namespace, it:
1. makes every mount private, builds a root folder holding only read-only bind mounts of the system
   libraries and the Python installation, a size-capped tmpfs as /tmp, and /dev/null;
2. writes the program (the harness, the model's code and the tests) into that tmpfs;
3. chroots into it, so the run folder, the home folder and /etc are not there to read;
4. sets the resource limits, drops to an unprivileged uid that no other process uses (so the process
   limit counts this program alone), and execs `python -I -S` on the program with the harness's
   nonce on stdin.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str = "", flags: int = 0, data: str = "") -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() or None, flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def bind_readonly(source: str, root: str) -> None:
    target = root + source
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, flags=MS_BIND | MS_REC)
    mount("", target, flags=MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(spec: dict) -> str:
    root = spec["root"]
    mount("", "/", flags=MS_REC | MS_PRIVATE)  # nothing done here propagates back to the host
    os.makedirs(root + "/tmp", exist_ok=True)
    for path in spec["binds"]:
        if os.path.exists(path):
            bind_readonly(path, root)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmpfs_bytes']},mode=1777")
    return root


def set_limits(limits: dict) -> None:
    for name, value in (
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_CPU", limits["cpu_seconds"]),
        ("RLIMIT_FSIZE", limits["file_bytes"]),
        ("RLIMIT_NOFILE", limits["open_files"]),
        ("RLIMIT_NPROC", limits["processes"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    root = build_root(spec)
    with open(root + "/tmp/program.py", "w") as f:
        f.write(spec["program"])
    os.chmod(root + "/tmp/program.py", 0o644)
    read_end, write_end = os.pipe()
    os.write(write_end, (spec["nonce"] + "\n").encode())
    os.close(write_end)
    os.dup2(read_end, 0)
    os.chroot(root)
    os.chdir("/tmp")
    set_limits(spec["limits"])
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    os.execve(spec["python"], [spec["python"], "-I", "-S", "/tmp/program.py"], env)


if __name__ == "__main__":
    main()
