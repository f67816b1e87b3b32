"""benchmarks.experiments.cpu: CPU seconds of a process tree from /proc, worker processes included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks.experiments.cpu import cpu_seconds, process_tree

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")

BUSY_CHILD = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass\n"


def test_a_child_process_is_in_the_tree_and_its_cpu_is_counted() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BUSY_CHILD!r}])",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while len(process_tree(parent.pid)) < 2:  # the grandchild has started
            assert time.monotonic() < deadline, "child never appeared"
            time.sleep(0.01)
        before = cpu_seconds(parent.pid)
        time.sleep(0.2)
        during = cpu_seconds(parent.pid)
        assert during > before, "a spinning grandchild's CPU time is counted"
    finally:
        parent.wait(timeout=10)
    assert process_tree(os.getpid())[0] == os.getpid()
