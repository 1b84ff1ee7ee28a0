"""Two JAX processes (gloo CPU collectives) train like one process on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import fault_helpers as fh
import numpy as np
import portpicker

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multihost_worker.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_two_processes_equal_one(tmp_path):
    port = portpicker.pick_unused_port()
    two = tmp_path / "two.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), f"--out={two}", f"--process-id={i}",
             "--num-processes=2", f"--port={port}", "--local-devices=2"],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = fh.outputs(procs, timeout=400)
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    assert "rows 0-3" in logs[0] and "rows 4-7" in logs[1]

    one = tmp_path / "one.npz"
    r = subprocess.run([sys.executable, str(WORKER), f"--out={one}", "--local-devices=4"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]

    a, b = np.load(two), np.load(one)
    assert set(a.files) == set(b.files)
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a["grad_norms"], b["grad_norms"], rtol=1e-5, atol=0)
    assert a["losses"][-1] < a["losses"][0]  # the steps did train
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
