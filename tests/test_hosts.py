"""Processes meet at the coordination service's barriers, never first in a collective: gloo
fails a collective's first call when one process comes more than 30 s after another."""

import os
import subprocess
import sys
from pathlib import Path

import fault_helpers as fh
import portpicker

REPO = Path(__file__).resolve().parents[1]
GLOO_DEADLINE_S = 30


def test_a_process_far_behind_still_meets_the_other():
    port = portpicker.pick_unused_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "hosts_worker.py"), f"--process-id={i}",
         f"--port={port}", f"--delay={GLOO_DEADLINE_S + 5}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    logs = fh.outputs(procs, timeout=150)
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
        assert "sums 18.0 36.0" in log, log[-3000:]
