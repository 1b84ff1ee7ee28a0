"""SIGTERM (a preemption notice) during training, through `python -m madad_jax.main`.

The run saves the step it reached (data iterator included), says so in one line and exits
with `PREEMPTED_EXIT`; a second SIGTERM during that save changes nothing; the same command
then resumes and ends bit-equal to an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fault_helpers as fh
import jax
import numpy as np
import pytest

from madad_jax.core import checkpoint
from madad_jax.core.errors import LOST_PEER_EXIT, PREEMPTED_EXIT

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


def _sigterm_after(cmd, environ, step: int | None = None,
                   line: str = "") -> subprocess.CompletedProcess:
    """Run `cmd`; once it logged `step` (or a line starting with `line`), send SIGTERM
    twice (the second during the save)."""
    line = line or f"[train] step {step}:"
    proc = subprocess.Popen(cmd, cwd=fh.REPO, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for text in proc.stderr:
            lines.append(text)
            if text.startswith(line):
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


@pytest.fixture(scope="module")
def straight(ctx) -> Path:
    """The uninterrupted run (32x32 slices)."""
    workdir = ctx["root"] / "straight"
    r = fh.run(fh.main_cmd(workdir, ctx["data"], ctx["vae"], *ARGS), ctx["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


def test_sigterm_saves_the_step_reached_and_the_rerun_is_bit_equal(ctx, straight):

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


def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(ctx):
    workdir = ctx["root"] / "diverged"
    ckpts = workdir / "checkpoints"
    cmd = fh.main_cmd(workdir, ctx["data"], ctx["vae"], "--config.train.lr=1e3",
                      "--config.train.num_steps=12", "--config.train.checkpoint_every_steps=2",
                      "--config.train.log_every_steps=1")
    r = fh.run(cmd, ctx["env"])
    assert r.returncode == 1, r.stderr[-3000:]
    line = fh.error_line(r, "non-finite", str(ckpts), "Lower the learning rate")
    bad = int(re.search(r"at step (\d+)", line).group(1))
    good = checkpoint.latest_step(str(ckpts))
    assert good is not None and good < bad, line
    assert f"last good checkpoint is step {good}" in line
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert steps[-1] == good and not fh.tmp_files(workdir)
    for step in steps:  # no saved step holds a NaN
        params = checkpoint.load_params(str(ckpts), step=step)[0]
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params)), step


# the autoencoder's loop and the latent cache under SIGTERM ------------------------------

VAE_STEPS = 12
VAE_ARGS = ("--config.mode=train_vae", f"--config.vae_train.num_steps={VAE_STEPS}",
            "--config.vae_train.checkpoint_every_steps=1000",
            "--config.vae_train.log_every_steps=1")


@pytest.fixture(scope="module")
def vae_straight(ctx) -> Path:
    """The uninterrupted `mode=train_vae` run."""
    workdir = ctx["root"] / "vae_straight"
    r = fh.run(fh.main_cmd(workdir, ctx["data"], None, *VAE_ARGS), ctx["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


def test_sigterm_during_autoencoder_training_saves_and_the_rerun_is_bit_equal(ctx,
                                                                               vae_straight):
    workdir = ctx["root"] / "vae_preempted"
    ckpts = workdir / "vae_checkpoints"
    cmd = fh.main_cmd(workdir, ctx["data"], None, *VAE_ARGS)
    stopped = _sigterm_after(cmd, ctx["env"], line="[vae] step 3:")
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr[-3000:]
    line = fh.error_line(stopped, "SIGTERM", str(ckpts))
    at = int(re.search(r"after step (\d+)", line).group(1))
    assert 3 <= at < VAE_STEPS, line
    assert checkpoint.latest_step(str(ckpts)) == at
    assert not fh.tmp_files(workdir) and not (workdir / ".lock").exists()

    r = fh.run(cmd, ctx["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {at}" in r.stderr, r.stderr[-3000:]
    a = jax.tree.leaves(checkpoint.load_params(str(vae_straight / "vae_checkpoints"))[0])
    b = jax.tree.leaves(checkpoint.load_params(str(ckpts))[0])
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), "the resumed run differs"


def test_sigterm_during_the_latent_cache_build_stops_in_one_line_and_keeps_no_cache(ctx):
    """The cache build and the first step's compile show their progress; SIGTERM during
    the build ends in one line with PREEMPTED_EXIT, no manifest (what a later run trusts)
    and no partial shard; the rerun builds it and trains."""
    workdir = ctx["root"] / "cache_preempted"
    cache = workdir / "latent_cache"
    cmd = fh.main_cmd(workdir, ctx["data"], ctx["vae"], "--config.data.cache_latents=True",
                      "--config.train.num_steps=1")
    stopped = _sigterm_after(cmd, ctx["env"], line="[train] latent cache: encoding")
    assert stopped.returncode == PREEMPTED_EXIT, stopped.stderr[-3000:]
    assert f"[train] latent cache: encoding the training slices into {cache}" in stopped.stderr
    fh.error_line(stopped, "stopped by SIGTERM before its work was done")
    assert not (cache / "train.manifest.json").exists(), os.listdir(cache)
    assert not fh.tmp_files(workdir) and not (workdir / "checkpoints").exists()

    r = fh.run(cmd, ctx["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compiling the train step" in r.stderr  # on the progress bar, before step 1
    assert (cache / "train.manifest.json").exists() and checkpoint.latest_step(
        str(workdir / "checkpoints")) == 1


# a checkpoint that does not match the config ---------------------------------------------

def _evaluate_demo(workdir: Path, checkpoint_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "madad_jax.main", "--config=configs/demo.py",
            f"--workdir={workdir}", "--config.mode=evaluate",
            f"--config.checkpoint={checkpoint_dir}", *extra]


def test_a_checkpoint_whose_slices_the_data_cannot_fit_is_refused_in_one_line(ctx, straight,
                                                                             tmp_path):
    """The issue's case: the demo config (64x64 slices) given a checkpoint of another
    image size; refused before any data is made."""
    r = fh.run(_evaluate_demo(tmp_path / "ev", straight / "checkpoints"), ctx["env"],
               timeout=120)
    fh.error_line(r, str(straight / "checkpoints"), "32x32", "64x64", "--config.image_size=32")
    assert not (tmp_path / "ev").exists()


def test_a_differing_architecture_is_named_before_work_and_sigterm_stops_it(ctx, straight,
                                                                          tmp_path):
    """Same image size, other autoencoder keys: one warning line naming them and which is
    used; then SIGTERM outside a step loop ends in one line with PREEMPTED_EXIT."""
    cmd = _evaluate_demo(tmp_path / "ev", straight / "checkpoints", "--config.image_size=32")
    r = _sigterm_after(cmd, ctx["env"], line="warning: ")
    assert r.returncode == PREEMPTED_EXIT, r.stderr[-3000:]
    warning = r.stderr.splitlines()[0]
    assert warning.startswith(f"warning: {straight / 'checkpoints'} holds a model with "), (
        r.stderr[-3000:])
    assert "vae.ch_mult=[1, 2] (config: [1, 1, 2])" in warning
    assert "the checkpoint's architecture is used" in warning
    rest = "\n".join(r.stderr.splitlines()[1:])
    assert rest.startswith("error: stopped by SIGTERM") and "Traceback" not in rest, rest


# resuming into a workdir that holds another model ---------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _resume_into_copy(ctx, trained: Path, tmp_path: Path, vae: Path | None, *args: str):
    """Run `args` in a copy of the `trained` workdir; (result, checkpoints dir, before)."""
    workdir = tmp_path / "copy"
    shutil.copytree(trained, workdir)
    ckpts = workdir / ("vae_checkpoints" if "--config.mode=train_vae" in args else "checkpoints")
    before = _files(ckpts)
    r = fh.run(fh.main_cmd(workdir, ctx["data"], vae, *args), ctx["env"])
    return r, ckpts, before


def test_resuming_another_denoiser_architecture_is_refused_in_one_line(ctx, straight, tmp_path):
    r, ckpts, before = _resume_into_copy(ctx, straight, tmp_path, ctx["vae"], *ARGS,
                                         "--config.model.unet.model_channels=64")
    assert r.returncode == 1, r.stderr[-3000:]
    assert fh.error_line(r) == (
        f"error: {ckpts} holds a model with model.unet.model_channels=32 (config: 64): its "
        "saved denoiser parameters cannot be restored into the config's model; train in a "
        "new --workdir, or resume with the checkpoint's keys "
        "(--config.model.unet.model_channels=32)")
    assert "compiling" not in r.stderr and _files(ckpts) == before


def test_resuming_with_another_latent_scale_warns_in_one_line_and_uses_the_config(ctx, straight,
                                                                               tmp_path):
    r, ckpts, before = _resume_into_copy(ctx, straight, tmp_path, ctx["vae"], *ARGS,
                                         "--config.latent_scale=0.5")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert warnings == [f"warning: {ckpts} holds a model with latent_scale=0.18215 (config: "
                        "0.5); resuming with the config's values"], r.stderr[-3000:]
    assert _files(ckpts) == before  # the run had all its steps already


def test_resuming_another_autoencoder_architecture_is_refused_in_one_line(ctx, vae_straight,
                                                                       tmp_path):
    r, ckpts, before = _resume_into_copy(ctx, vae_straight, tmp_path, None, *VAE_ARGS,
                                         "--config.vae.ch=64")
    assert r.returncode == 1, r.stderr[-3000:]
    assert fh.error_line(r) == (
        f"error: {ckpts} holds a model with vae.ch=32 (config: 64): its saved autoencoder "
        "parameters cannot be restored into the config's model; train in a new --workdir, "
        "or resume with the checkpoint's keys (--config.vae.ch=32)")
    assert _files(ckpts) == before


# the launch scripts retry on PREEMPTED_EXIT ----------------------------------------------

def test_resume_loop_resumes_a_run_that_exited_preempted(tmp_path):
    """`launch/tpu/resume_loop.sh` with a stub slice: a run exiting PREEMPTED_EXIT is run
    again (a run failing with 1 on a healthy slice is not)."""
    shutil.copy(fh.REPO / "launch/tpu/resume_loop.sh", tmp_path / "resume_loop.sh")
    (tmp_path / "common.sh").write_text("tpu_state() { echo READY; }\nTPU_NAME=stub\n")
    runs = tmp_path / "runs"
    (tmp_path / "run.sh").write_text(
        f'echo x >> {runs}\n[[ $(wc -l < {runs}) -ge 2 ]] && exit 0\nexit "$FIRST"\n')
    for first, want_runs, want_rc in ((PREEMPTED_EXIT, 2, 0), (LOST_PEER_EXIT, 2, 0),
                                      (1, 1, 1)):
        runs.unlink(missing_ok=True)
        r = subprocess.run(["bash", str(tmp_path / "resume_loop.sh"), "cfg", "wd"],
                           env=dict(os.environ, FIRST=str(first), MAX_ATTEMPTS="3"),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == want_rc, r.stdout + r.stderr
        assert len(runs.read_text().splitlines()) == want_runs, r.stdout + r.stderr
    slurm = (fh.REPO / "launch/slurm_multinode.sbatch").read_text()
    assert f"rc -eq {PREEMPTED_EXIT} ]]" in slurm and "scontrol requeue" in slurm
    assert f"rc -eq {LOST_PEER_EXIT} ]]" in slurm
