"""Sandbox throughput and the attack cases' outcomes, on this machine.

    .venv/bin/python scripts/bench_sandbox.py [--workers 2]

Scores HumanEval's 164 canonical solutions and 164 generated code tasks through the `code` reward
(programs/s), then runs each attack case once and prints its status and time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data.code_tasks import code_function_task, humaneval_records  # noqa: E402
from pipeline.rl.rewards import RewardContext, score  # noqa: E402
from pipeline.rl.sandbox import Limits, Sandbox  # noqa: E402

ATTACKS = {
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "infinite loop": "while True:\n    pass\n",
    "memory bomb": "x = bytearray(8 << 30)\n",
    "huge file": "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * (1 << 20))\n",
    "read /etc/passwd": "print(open('/etc/passwd').read())\n",
    "read the run folder": f"print(os.listdir({str(Path.cwd() / 'runs')!r}))\n",
    "outbound connection": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)\n",
    "kill the parent": f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n",
    "sys.exit in the tests": "import sys\nsys.exit(0)\n",
    "100 MB of output": "import sys\nsys.stdout.write('x' * (100 << 20))\n",
}


def wrap(code: str) -> str:
    return f"<think>\nx\n</think>\n\n```python\n{code}\n```"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ctx = RewardContext(sandbox=Sandbox(workers=args.workers))
    print(f"sandbox mode: {ctx.sandbox.mode}, workers {args.workers}, cores {os.cpu_count()}")
    for name, records in (
        ("humaneval canonical", humaneval_records()),
        ("generated code tasks", [code_function_task(i, 5) for i in range(164)]),
    ):
        start = time.perf_counter()
        _, parts = score([wrap(r["answer"]) for r in records], records, {"code": 1.0}, ctx)
        seconds = time.perf_counter() - start
        print(
            f"{name}: {sum(parts['code']):.0f}/{len(records)} passed in {seconds:.1f} s "
            f"= {len(records) / seconds:.1f} programs/s"
        )
    sandbox = Sandbox(limits=Limits(), workers=1)
    for name, code in ATTACKS.items():
        outcome = sandbox.run("import os\n" + code, ["assert True"])
        print(
            f"{name:24s} {outcome.status:13s} passed={outcome.passed!s:5s} {outcome.seconds:5.2f} s  "
            f"{outcome.output.splitlines()[-1][:70] if outcome.output else ''}"
        )


if __name__ == "__main__":
    main()
