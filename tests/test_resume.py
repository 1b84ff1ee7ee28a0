"""A training run killed with SIGKILL and restarted ends bit-identical to an uninterrupted run.

Both runs are the real command line (`python -m madad_jax.main`) on the grain/ArrayRecord
pipeline with augmentation on. The interrupted run is killed while it writes its second
checkpoint (or, if that moment is missed, right after a later one lands), then the same
command is run again in the same directory.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fault_helpers
import jax
import numpy as np
from train_helpers import make_slices, save_vae, tiny_config, write_shards

from madad_jax.core import checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 8


def _command(workdir: Path, data: Path, vae: Path) -> list[str]:
    return [
        sys.executable, "-m", "madad_jax.main",
        "--config=tests/tiny_train_config.py:dit", f"--workdir={workdir}",
        f"--config.data.train_path={data}", f"--config.vae_train.checkpoint={vae}",
        "--config.data.augment=True", f"--config.train.num_steps={STEPS}",
        "--config.train.checkpoint_every_steps=2", "--config.train.log_every_steps=1",
        "--config.train.keep_checkpoints=2",
    ]


def _final_state(workdir: Path):
    params, _ = checkpoint.load_params(str(workdir / "checkpoints"))
    return jax.tree.leaves(params)


def _kill_during_save(cmd, env, ckpt_dir: Path, timeout: float = 300.0) -> str:
    """Start `cmd`; SIGKILL it while a checkpoint after the first is being written."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = "nothing"
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
            tmp = [n for n in names if "tmp" in n and not n.startswith("2")]
            done = [int(n) for n in names if n.isdigit()]
            if tmp:
                seen = f"mid-save ({tmp[0]})"
                break
            if any(s > 2 for s in done):
                seen = f"after step {max(done)}"
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed:\n" + (
            proc.stdout.read())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    config = tiny_config("dit")
    data = write_shards(make_slices(24, 32, seed=2),
                        str(tmp_path / "train.array_record-00000-of-00001"))
    vae = save_vae(config, str(tmp_path / "vae"))
    env = fault_helpers.env(tmp_path / "jax_cache")

    straight = tmp_path / "straight"
    r = subprocess.run(_command(straight, Path(data), Path(vae)), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[train] step 8:" in r.stderr and "step/s" in r.stderr  # progress and metrics

    resumed = tmp_path / "resumed"
    cmd = _command(resumed, Path(data), Path(vae))
    when = _kill_during_save(cmd, env, resumed / "checkpoints")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"resuming from .* at step (\d+)", r.stderr)
    assert m, r.stderr[-3000:]
    assert 2 <= int(m.group(1)) < STEPS, (when, m.group(0))
    assert not [n for n in os.listdir(resumed / "checkpoints") if "tmp" in n]

    a, b = _final_state(straight), _final_state(resumed)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), f"killed {when}: parameters differ"
    # Training moved the parameters: the last two checkpoints differ.
    ckpts = str(resumed / "checkpoints")
    assert checkpoint.latest_step(ckpts) == STEPS
    before = jax.tree.leaves(checkpoint.load_params(ckpts, step=STEPS - 2)[0]["denoiser"])
    after = jax.tree.leaves(checkpoint.load_params(ckpts, step=STEPS)[0]["denoiser"])
    assert any(not np.array_equal(x, y) for x, y in zip(before, after, strict=True))
