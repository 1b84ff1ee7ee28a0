"""SIGTERM (a preemption notice) during training, through `python -m madad_jax.main`.

The run saves the step it reached (data iterator included), says so in one line and exits
with `PREEMPTED_EXIT`; a second SIGTERM during that save changes nothing; the same command
then resumes and ends bit-equal to an uninterrupted run.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import fault_helpers as fh
import jax
import numpy as np
import pytest

from madad_jax.core import checkpoint
from madad_jax.core.errors import PREEMPTED_EXIT

STEPS = 24
# No periodic save inside the run: without the SIGTERM save, every step would be lost.
ARGS = (f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every_steps=1000",
        "--config.train.log_every_steps=1")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("preempt")
    data, vae = fh.train_inputs(root / "in")
    return {"root": root, "env": fh.env(fh.shared_cache(tmp_path_factory)), "data": data,
            "vae": vae}


def _sigterm_after(cmd, environ, step: int) -> subprocess.CompletedProcess:
    """Run `cmd`; once it logged `step`, send SIGTERM twice (the second during the save)."""
    proc = subprocess.Popen(cmd, cwd=fh.REPO, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(f"[train] step {step}:"):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(300), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "".join(lines))


def _params(workdir: Path) -> list[np.ndarray]:
    return jax.tree.leaves(checkpoint.load_params(str(workdir / "checkpoints"))[0])


def test_sigterm_saves_the_step_reached_and_the_rerun_is_bit_equal(ctx):
    straight = ctx["root"] / "straight"
    r = fh.run(fh.main_cmd(straight, ctx["data"], ctx["vae"], *ARGS), ctx["env"])
    assert r.returncode == 0, r.stderr[-3000:]

    workdir = ctx["root"] / "preempted"
    cmd = fh.main_cmd(workdir, ctx["data"], ctx["vae"], *ARGS)
    stopped = _sigterm_after(cmd, ctx["env"], step=3)
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr[-3000:]
    line = fh.error_line(stopped, "SIGTERM", str(workdir / "checkpoints"))
    at = int(re.search(r"after step (\d+)", line).group(1))
    assert 3 <= at < STEPS, line
    assert checkpoint.latest_step(str(workdir / "checkpoints")) == at
    assert not fh.tmp_files(workdir), fh.tmp_files(workdir)
    assert not (workdir / ".lock").exists()

    r = fh.run(cmd, ctx["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {at}" in r.stderr, r.stderr[-3000:]
    a, b = _params(straight), _params(workdir)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), "the resumed run differs"
