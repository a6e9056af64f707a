"""Peak memory of a stage's whole process tree, sampled by the launcher while the job runs.

A stage is several processes: torchrun, the trainer rank(s), vLLM's engine, the verifier's fork-server
workers and the code sandbox. An OOM kill is decided on their sum, so that sum is what is recorded:
the resident set (RSS) of every process in the tree, summed, sampled every `interval_s`. Shared pages
(libraries, copy-on-write after a fork) are counted once per process, so the figure is an upper bound
on what the tree really holds; it is the number to compare with the machine's memory.

The launcher prints the peak and keeps the largest over a stage's attempts in its manifest
(`peak_rss_gib`, `peak_rss_processes`), which `make status` shows.
"""

from __future__ import annotations

import threading
from typing import Optional

import psutil

GIB = 2**30


def tree_rss(pid: int) -> tuple[int, int]:
    """(bytes of RSS summed over `pid` and all its descendants, number of processes); (0, 0) once gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total, alive = 0, 0
    for p in procs:
        try:
            total += p.memory_info().rss
            alive += 1
        except psutil.Error:  # it ended between listing and reading
            pass
    return total, alive


class PeakTreeMemory:
    """Samples `tree_rss(pid)` in a daemon thread until `stop()`; `peak` is the largest sum seen."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid, self.interval_s = pid, interval_s
        self.peak, self.processes_at_peak = 0, 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> PeakTreeMemory:
        self._thread = threading.Thread(target=self._run, name="peak-tree-memory", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        total, count = tree_rss(self.pid)
        if total > self.peak:
            self.peak, self.processes_at_peak = total, count

    def stop(self) -> float:
        """Stop sampling; the peak in GiB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak / GIB
