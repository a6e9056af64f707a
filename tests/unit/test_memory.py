"""The launcher's peak-memory monitor sums RSS over the whole process tree, grandchildren included."""

from __future__ import annotations

import subprocess
import sys
import time

from pipeline.run import memory

# a child holding 200 MiB that starts a grandchild holding 300 MiB; both wait, then exit
CHILD = """
import subprocess, sys, time
a = bytearray(200 * 2**20)
g = subprocess.Popen([sys.executable, "-c", "b = bytearray(300 * 2**20); import time; time.sleep(2.5)"])
g.wait()
"""


def test_the_peak_counts_every_process_of_the_tree():
    proc = subprocess.Popen([sys.executable, "-c", CHILD])
    monitor = memory.PeakTreeMemory(proc.pid, interval_s=0.1).start()
    proc.wait()
    peak_gib = monitor.stop()
    assert 0.5 < peak_gib < 1.0, peak_gib  # 200 + 300 MiB plus two interpreters
    assert monitor.processes_at_peak == 2


def test_a_finished_process_reads_as_nothing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    time.sleep(0.1)
    assert memory.tree_rss(proc.pid) == (0, 0)
