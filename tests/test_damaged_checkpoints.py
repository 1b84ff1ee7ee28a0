"""A damaged checkpoint step is one stderr line naming it; resuming past it needs
`train.resume_from_damaged=previous`, which never deletes the damaged step."""

import subprocess
import sys
from pathlib import Path

import fault_helpers
import jax
import numpy as np
import pytest
from train_helpers import make_slices, save_vae, write_shards

from madad_jax.core import checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from train_helpers import tiny_config

    root = tmp_path_factory.mktemp("damaged")
    data = write_shards(make_slices(32, 32), str(root / "train.array_record"))
    vae = save_vae(tiny_config("dit"), str(root / "vae"))
    return root, data, vae


def _train(setup, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    root, data, vae = setup
    cmd = [sys.executable, "-m", "madad_jax.main", "--config=tests/tiny_train_config.py:dit",
           f"--workdir={workdir}", f"--config.data.train_path={data}",
           f"--config.vae_train.checkpoint={vae}", f"--config.train.num_steps={STEPS}",
           "--config.train.checkpoint_every_steps=2", "--config.train.log_every_steps=1",
           "--config.train.keep_checkpoints=3", *extra]
    return subprocess.run(cmd, cwd=REPO, env=fault_helpers.env(root / "cache"),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(setup):
    """An uninterrupted run: its checkpoints are copied and damaged by the tests."""
    wd = setup[0] / "full"
    r = _train(setup, wd)
    assert r.returncode == 0, r.stderr
    return wd


def _copy(trained: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(trained, dest)
    return dest


def _params(directory: Path, step: int | None = None):
    return jax.tree.leaves(checkpoint.load_params(str(directory), step)[0])


def _damage(step_dir: Path, what: str) -> Path:
    if what == "params":
        files = sorted((step_dir / "params").rglob("d/*"), key=lambda p: -p.stat().st_size)
        target = files[0]
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    elif what == "arch":
        target = step_dir / "arch" / "metadata"
        target.write_text("{not json")
    else:
        target = next((step_dir / "data_iter").glob("*.json"))
        target.write_text("")
    return target


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0
    assert len(lines) == 1, r.stderr[-4000:]
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("what", ["params", "arch", "data_iter"])
def test_damaged_newest_step_stops_in_one_line(setup, trained, tmp_path, what):
    wd = _copy(trained, tmp_path / "wd")
    step_dir = wd / "checkpoints" / str(STEPS)
    _damage(step_dir, what)
    r = _train(setup, wd, f"--config.train.num_steps={STEPS + 2}")
    line = _one_error_line(r)
    assert f"{step_dir}: checkpoint step {STEPS} is damaged" in line
    assert f"'{what}'" in line
    assert step_dir.is_dir()


def test_resume_from_previous_good_step(setup, trained, tmp_path):
    wd = _copy(trained, tmp_path / "wd")
    step_dir = wd / "checkpoints" / str(STEPS)
    _damage(step_dir, "params")
    r = _train(setup, wd, "--config.train.resume_from_damaged=previous")
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and f"resuming from step {STEPS - 2}" in notes[0]
    kept = wd / "checkpoints" / f"{STEPS}.damaged"
    assert kept.is_dir() and (kept / "params").is_dir()  # never deleted
    for a, b in zip(_params(trained / "checkpoints"), _params(wd / "checkpoints"), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["predict", "evaluate"])
def test_inference_on_a_damaged_checkpoint_is_one_line(setup, trained, tmp_path, mode):
    wd = _copy(trained, tmp_path / "wd")
    step_dir = wd / "checkpoints" / str(STEPS)
    _damage(step_dir, "params")
    scan = tmp_path / "scan.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), scan)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "madad_jax.main", "--config=tests/tiny_train_config.py:dit",
           f"--workdir={tmp_path / 'run'}", f"--config.mode={mode}",
           f"--config.checkpoint={wd}", f"--config.predict.input={scan}",
           f"--config.predict.output={out}"]
    if mode == "evaluate":  # a test split, so that validation passes and the restore runs
        cmd.append(f"--config.data.test_path={setup[1]}")
    r = subprocess.run(cmd, cwd=REPO, env=fault_helpers.env(setup[0] / "cache"),
                       capture_output=True, text=True, timeout=600)
    line = _one_error_line(r)
    assert f"checkpoint step {STEPS} is damaged" in line and "'params'" in line
    assert not out.exists() and not (tmp_path / "run" / "evaluate").exists()
