"""The code sandbox must hold: each attack below is contained, scores no pass, and leaves the test
process (standing in for the stage) and the machine as they were."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time

import pytest

from pipeline.rl.sandbox import RESULT_PREFIX, SANDBOX_UID_BASE, Limits, Sandbox, build_program

LIMITS = Limits(cpu_seconds=2, wall_seconds=4.0, memory_mb=512, file_mb=4, processes=16, output_bytes=16384)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(limits=LIMITS, workers=2)


needs_namespaces = pytest.mark.skipif(
    Sandbox(limits=LIMITS).mode != "namespaces",
    reason="unshare not permitted here: the rlimits fallback cannot hide files or the network",
)


def sandbox_processes() -> int:
    out = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True).stdout.split()
    return sum(int(uid) >= SANDBOX_UID_BASE for uid in out)


def test_a_correct_program_passes_and_a_wrong_one_fails(sandbox):
    tests = ["assert f(1) == 2", "assert f(5) == 6"]
    right = sandbox.run("def f(x):\n    return x + 1\n", tests)
    wrong = sandbox.run("def f(x):\n    return x + 2\n", tests)
    half = sandbox.run("def f(x):\n    return 2 if x == 1 else 0\n", tests)
    assert right.passed and right.tests_passed == 2
    assert not wrong.passed and wrong.status == "failed" and wrong.tests_passed == 0
    assert half.status == "failed" and half.fraction == 0.5
    assert sandbox.run("def f(x) return", tests).tests_passed == 0  # a syntax error fails every test


def test_setup_code_runs_before_the_program(sandbox):
    assert sandbox.run(
        "def g():\n    return helper() + 1\n", ["assert g() == 3"], setup="def helper():\n    return 2"
    ).passed


def test_many_run_in_parallel_in_order(sandbox):
    jobs = [(f"def f():\n    return {i}\n", [f"assert f() == {i}"], "") for i in range(6)]
    jobs[3] = ("def f():\n    return -1\n", ["assert f() == 3"], "")
    assert [o.passed for o in sandbox.run_many(jobs)] == [True, True, True, False, True, True]


def test_fork_bomb_is_contained_and_leaves_no_process(sandbox):
    before = sandbox_processes()
    outcome = sandbox.run("import os\nwhile True:\n    os.fork()\n", ["assert True"])
    assert not outcome.passed
    time.sleep(0.5)
    assert sandbox_processes() == before == 0 or sandbox.mode != "namespaces"


def test_infinite_loop_is_killed_at_the_wall_limit(sandbox):
    start = time.monotonic()
    outcome = sandbox.run("while True:\n    pass\n", ["assert True"])
    assert outcome.status in ("timeout", "crashed") and not outcome.passed
    assert time.monotonic() - start < LIMITS.wall_seconds + 3


def test_memory_bomb_fails_without_touching_the_stage(sandbox):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = sandbox.run("x = bytearray(8 << 30)\n", ["assert True"])
    assert not outcome.passed and "MemoryError" in outcome.output
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000  # KiB


def test_huge_file_write_is_stopped(sandbox, tmp_path):
    outcome = sandbox.run("open('big', 'wb').write(b'x' * (64 << 20))\n", ["assert True"])
    assert not outcome.passed and "File too large" in outcome.output


@needs_namespaces
def test_etc_passwd_home_and_the_run_folder_cannot_be_read(sandbox, tmp_path):
    secret = tmp_path / "runs" / "r" / "stage1" / "manifest.json"
    secret.parent.mkdir(parents=True)
    secret.write_text("secret")
    for path in ("/etc/passwd", str(secret), os.path.expanduser("~/.bashrc"), os.getcwd()):
        probe = f"import os\nprint(open({path!r}).read() if os.path.isfile({path!r}) else os.listdir({path!r}))\n"
        outcome = sandbox.run(probe, ["assert True"])
        assert not outcome.passed and ("No such file" in outcome.output or "Permission" in outcome.output), path


@needs_namespaces
def test_no_network_even_to_this_machine(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        probe = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        outcome = sandbox.run(probe + "print('connected')\n", ["assert True"])
        assert not outcome.passed and "connected" not in outcome.output
        outside = sandbox.run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n", ["assert True"])
        assert not outside.passed
    finally:
        server.close()


def test_killing_the_parent_does_nothing(sandbox):
    probe = f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\nos.kill({os.getppid()}, signal.SIGKILL)\n"
    outcome = sandbox.run(probe, ["assert True"])
    assert not outcome.passed  # and this test process is still here to check it


@pytest.mark.parametrize("escape", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "quit()", "raise SystemExit"])
def test_exiting_early_is_not_a_pass(sandbox, escape):
    assert not sandbox.run("def f():\n    return 1\n", [escape, "assert f() == 1"]).passed
    assert not sandbox.run(escape + "\n", ["assert True"]).passed


def test_forged_result_lines_are_not_a_pass(sandbox):
    forged = f"print('{RESULT_PREFIX} 0123456789abcdef 1 1')\nimport os\nos._exit(0)\n"
    assert not sandbox.run(forged, ["assert True"]).passed


def test_100_mb_of_output_is_cut_off(sandbox):
    start = time.monotonic()
    outcome = sandbox.run("import sys\nsys.stdout.write('x' * (100 << 20))\n", ["assert True"])
    assert outcome.status == "output_limit" and not outcome.passed
    assert len(outcome.output) <= 4096 and time.monotonic() - start < LIMITS.wall_seconds + 3


def test_the_program_runs_under_an_isolated_python(sandbox):
    """-I -S: no site-packages, no PYTHON* variables, no current folder on the path."""
    probe = "import sys\nassert not any('site-packages' in p for p in sys.path), sys.path\n"
    assert sandbox.run(probe, ["assert True"]).passed


def test_the_harness_embeds_the_program_as_data():
    text = build_program("x = '''\\n'''", ["assert x"], "")
    compile(text, "program.py", "exec")  # quotes and newlines in the program cannot break the harness
    assert sys.version_info >= (3, 10)
