"""Every OS error (a full disk, a read-only file system, a workdir that is a file) is one
stderr line naming the path, with no partial output and no temporary directory left.

Tests run as root, so a chmod-read-only directory stops nothing: the faults are injected
into the real command (`python -m madad_jax.main`) by a small wrapper script.
"""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from madad_jax.core import damage, files

REPO = Path(__file__).resolve().parents[1]

WRAPPER = r'''
import errno, os, runpy, sys

kind = os.environ["MADAD_INJECT"]
if kind == "savefig":  # the disk fills while the last file of a result set is written
    from matplotlib.figure import Figure

    def savefig(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    Figure.savefig = savefig
elif kind == "rename_evaluate":  # a read-only file system at the final rename
    real = os.replace

    def replace(src, dst, *a, **k):
        if os.fspath(dst).endswith(os.sep + "evaluate") and ".tmp-" in os.fspath(src):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(dst))
        return real(src, dst, *a, **k)
    os.replace = replace
elif kind == "readonly_out":  # predict.output on a read-only mount
    import tempfile
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir and "readonly" in os.fspath(dir):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(dir))
        return real_mkstemp(*a, dir=dir, **k)
    tempfile.mkstemp = mkstemp
elif kind == "nib_save":  # the disk fills while predict writes its NIfTI map
    import nibabel

    def save(img, filename, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(filename))
    nibabel.save = save
elif kind == "ckpt_rename":  # the disk fills as the step-4 checkpoint is committed
    from orbax.checkpoint._src.path import async_path

    real_rename = async_path.rename

    async def rename(src, dst):
        if os.path.basename(os.fspath(dst)) == "4":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_rename(src, dst)
    async_path.rename = rename
sys.argv = ["madad_jax.main", *sys.argv[1:]]
runpy.run_module("madad_jax.main", run_name="__main__")
'''


def _main(tmp_path: Path, inject: str, *args: str) -> subprocess.CompletedProcess:
    wrapper = tmp_path / "inject.py"
    wrapper.write_text(WRAPPER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", MADAD_INJECT=inject,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(wrapper), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line(r: subprocess.CompletedProcess) -> str:
    # The inference's progress bar (tqdm) and predict's out-of-distribution warnings may
    # come first; nothing else may.
    lines = [ln for ln in r.stderr.splitlines()
             if ln.strip() and not re.search(r"\d+%\|", ln) and not ln.startswith("warning: ")]
    assert r.returncode != 0, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    """Temporary or set-aside entries in `folder` (none when it is not there at all: the
    lock removes a workdir it created when the run left it empty)."""
    if not folder.exists():
        return []
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n or ".old-" in n)


def _evaluate(tmp_path, ckpt, case_dir, workdir, inject):
    return _main(tmp_path, inject, "--config=configs/reference.py", f"--workdir={workdir}",
                 "--config.mode=evaluate", f"--config.checkpoint={ckpt}",
                 f"--config.data.png_root={case_dir / 'slices'}", "--config.data.split=test",
                 "--config.data.modality=T2", "--config.sample.ddim_steps=2",
                 "--config.sample.eta=0.0")


# ------------------------------------------------------------------------- unit level


def test_atomic_dir_replaces_a_result_set_whole(tmp_path):
    out = tmp_path / "evaluate"
    with files.atomic_dir(out) as tmp:
        Path(tmp, "a.txt").write_text("old")
    with files.atomic_dir(out) as tmp:
        Path(tmp, "b.txt").write_text("new")
    assert sorted(os.listdir(out)) == ["b.txt"]
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_keeps_the_old_set_and_names_the_path(tmp_path, monkeypatch):
    out = tmp_path / "evaluate"
    with files.atomic_dir(out) as tmp:
        Path(tmp, "a.txt").write_text("old")
    real = os.replace

    def replace(src, dst, *a, **k):
        if os.fspath(dst) == str(out) and ".tmp-" in os.fspath(src):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as err, files.atomic_dir(out) as tmp:
        Path(tmp, "b.txt").write_text("new")
    assert err.value.errno == errno.EROFS and err.value.filename == str(out)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["a.txt"] and _leftovers(tmp_path) == []


def test_atomic_write_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_fsync", full)
    with pytest.raises(OSError) as err:
        files.atomic_write(tmp_path / "x.json", "{}")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "x.json")
    assert os.listdir(tmp_path) == []


def test_check_writable(tmp_path, monkeypatch):
    assert files.check_writable(tmp_path / "new" / "deeper")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match=str(tmp_path / "f")):
        files.check_writable(tmp_path / "f" / "sub")


def test_save_errors_wrapped_by_orbax_become_os_errors(tmp_path):
    wrapped = RuntimeError("Error writing local file: [OS error: No space left on device]")
    err = damage.os_error_of(wrapped, str(tmp_path))
    assert err.errno == errno.ENOSPC and err.filename == str(tmp_path)
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/x/1")
        except OSError as inner:
            raise ValueError("save failed") from inner
    except ValueError as outer:
        err = damage.os_error_of(outer, str(tmp_path))
    assert err.errno == errno.EROFS and err.filename == "/x/1"
    assert damage.os_error_of(ValueError("bad shape"), str(tmp_path)) is None


def test_failed_save_tmp_dirs_are_removed(tmp_path):
    (tmp_path / "4.orbax-checkpoint-tmp-123").mkdir()
    (tmp_path / "2").mkdir()
    damage.remove_tmp_dirs(str(tmp_path))
    assert os.listdir(tmp_path) == ["2"]


# ---------------------------------------------------------------------- public commands


def test_evaluate_full_disk_leaves_no_partial_result_set(tmp_path, fixture_ckpt, case_dir):
    workdir = tmp_path / "run"
    line = _one_line(_evaluate(tmp_path, fixture_ckpt, case_dir, workdir, "savefig"))
    assert str(workdir / "evaluate") in line and "No space left on device" in line
    assert not (workdir / "evaluate").exists() and _leftovers(workdir) == []


def test_evaluate_read_only_rename_keeps_the_old_result_set(tmp_path, fixture_ckpt, case_dir):
    workdir = tmp_path / "run"
    old = workdir / "evaluate"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text('{"old": true}')
    line = _one_line(_evaluate(tmp_path, fixture_ckpt, case_dir, workdir, "rename_evaluate"))
    assert str(old) in line and "Read-only file system" in line
    assert os.listdir(old) == ["metrics.json"] and "old" in (old / "metrics.json").read_text()
    assert _leftovers(workdir) == []


def _scan(folder: Path) -> Path:
    import nibabel as nib

    g = np.indices((24, 28, 20)).astype(np.float32)
    brain = ((g - np.array([12, 14, 10])[:, None, None, None]) ** 2).sum(0) < 80
    img = np.where(brain, 100 + 10 * np.sin(g[0] / 3), 0).astype(np.float32)
    path = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.0, 1.5, 1.0])), path)
    return path


def _predict(tmp_path, ckpt, out, inject):
    return _main(tmp_path, inject, "--config=configs/demo.py", f"--workdir={tmp_path / 'wd'}",
                 "--config.mode=predict", f"--config.checkpoint={ckpt}",
                 f"--config.predict.input={_scan(tmp_path)}", f"--config.predict.output={out}",
                 "--config.sample.ddim_steps=2")


def test_predict_read_only_output_is_refused_before_inference(tmp_path, fixture_ckpt):
    out = tmp_path / "readonly" / "out"
    (tmp_path / "readonly").mkdir()
    r = _predict(tmp_path, fixture_ckpt, out, "readonly_out")
    line = _one_line(r)
    assert str(out) in line and "not writable" in line
    assert not out.exists() and "wrote" not in r.stdout


def test_predict_full_disk_writes_nothing(tmp_path, fixture_ckpt):
    out = tmp_path / "out"
    line = _one_line(_predict(tmp_path, fixture_ckpt, out, "nib_save"))
    assert str(out / "scan_anomaly.nii.gz") in line and "No space left" in line
    assert not out.exists()


def test_workdir_that_is_a_file_is_one_line(tmp_path, fixture_ckpt, case_dir):
    workdir = tmp_path / "file"
    workdir.write_text("not a directory")
    line = _one_line(_evaluate(tmp_path, fixture_ckpt, case_dir, workdir, "none"))
    assert str(workdir) in line


def test_training_full_disk_is_one_line_and_leaves_no_tmp_checkpoint(tmp_path):
    from train_helpers import make_slices, save_vae, tiny_config, write_shards

    data = write_shards(make_slices(32, 32), str(tmp_path / "train.array_record"))
    vae = save_vae(tiny_config("dit"), str(tmp_path / "vae"))
    workdir = tmp_path / "run"
    r = _main(tmp_path, "ckpt_rename", "--config=tests/tiny_train_config.py:dit",
              f"--workdir={workdir}", f"--config.data.train_path={data}",
              f"--config.vae_train.checkpoint={vae}", "--config.train.num_steps=6",
              "--config.train.checkpoint_every_steps=2", "--config.train.log_every_steps=1")
    # Training logs its progress on stderr; the error is the one last line, no traceback.
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], r.stderr[-3000:]
    line = lines[-1]
    assert str(workdir / "checkpoints") in line and "No space left on device" in line
    names = os.listdir(workdir / "checkpoints")
    assert "2" in names and not [n for n in names if "tmp" in n], names
