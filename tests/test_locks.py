"""A workdir and a conversion output take a lock: a second process refuses in one line.

The first process is paused (SIGSTOP) while it holds its lock, so the second always meets
it, then resumed: it must still finish. A lock left by a dead process is reclaimed; one
from another host is not.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import fault_helpers as fh
import pytest
from data_helpers import write_set

from madad_jax.core import locks


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def _paused_holder(cmd, environ, lock):
    """Start `cmd`, stop it as soon as it holds `lock`."""
    proc = fh.start(cmd, environ)
    fh.wait_for(proc, lock.exists, what=f"{lock} appeared")
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def test_second_training_in_a_held_workdir_refuses(tmp_path, tmp_path_factory):
    environ = fh.env(fh.shared_cache(tmp_path_factory))
    data, vae = fh.train_inputs(tmp_path / "in")
    workdir = tmp_path / "run"
    cmd = fh.main_cmd(workdir, data, vae, *fh.TRAIN)
    first = _paused_holder(cmd, environ, workdir / ".lock")
    try:
        before = sorted(os.listdir(workdir))
        second = fh.run(cmd, environ, timeout=300)
        owner = f"locked by pid {first.pid} on {socket.gethostname()}"
        line = fh.error_line(second, workdir, owner, "another training", workdir / ".lock")
        assert "wait for it or remove" in line
        assert sorted(os.listdir(workdir)) == before  # it wrote nothing
        for mode in ("evaluate", "train_vae"):  # every mode that writes the workdir
            # (evaluation needs a test split to pass validation: the training shards do)
            fh.error_line(fh.run([*cmd, f"--config.mode={mode}",
                                  f"--config.data.test_path={data}"], environ, timeout=300),
                          "locked by pid")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert (workdir / "checkpoints" / str(fh.STEPS)).is_dir()
    assert not (workdir / ".lock").exists()


def test_second_converter_into_one_output_refuses(tmp_path):
    environ = fh.env(tmp_path / "jax_cache")
    write_set(tmp_path / "in", 6, seed=3)
    out = tmp_path / "out"
    first = _paused_holder(fh.convert_cmd(tmp_path / "in", out), environ, out / ".lock")
    try:
        second = fh.run(fh.convert_cmd(tmp_path / "in", out), environ, timeout=120)
        fh.error_line(second, out, f"locked by pid {first.pid}", "another conversion")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert "train: " in stdout and (out / "train.manifest.json").is_file()
    assert not (out / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_reclaimed(tmp_path):
    write_set(tmp_path / "in", 2, seed=3)
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    (out / ".lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "what": "conversion"}))
    proc = fh.run(fh.convert_cmd(tmp_path / "in", out), fh.env(tmp_path / "cache"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "train.manifest.json").is_file() and not (out / ".lock").exists()


def test_lock_from_another_host_is_not_reclaimed(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere",
                                                "what": "training"}))
    with pytest.raises(locks.DirectoryLocked, match="on elsewhere .*another host"):
        with locks.hold(tmp_path, "training"):
            pass
    assert (tmp_path / ".lock").exists()


def test_hold_is_released_on_exceptions_nests_and_leaves_no_new_directory(tmp_path):
    d = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with locks.hold(d, "training"):
            with locks.hold(d, "evaluation"):  # the same process: shared, not refused
                assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
            assert (d / ".lock").exists()
            raise RuntimeError("boom")
    assert not d.exists()  # created for the lock, left empty: removed
    with locks.hold(tmp_path, "training", enabled=False):  # not process 0: no lock
        assert not (tmp_path / ".lock").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        with locks.hold(tmp_path / "file", "training"):
            pass


def test_sigterm_releases_the_lock(tmp_path):
    code = ("import sys, time\nfrom madad_jax.core import locks\n"
            f"with locks.hold({str(tmp_path)!r}, 'training'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=fh.REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    assert (tmp_path / ".lock").exists()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("links", [True, False])
def test_the_lock_appears_whole_and_refuses_a_second_holder(tmp_path, monkeypatch, links):
    """Hard-linked from a written file (so never seen empty), or, where the file system has
    no hard links, created and then written; either way a second acquire is refused."""
    real_link, linked = os.link, []

    def link(src, dst):
        if not links:
            raise OSError(errno.EPERM, "no hard links here")
        linked.append(json.loads(open(src).read()))  # whole before it has the lock's name
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    with locks.hold(tmp_path, "training"):
        record = json.loads((tmp_path / ".lock").read_text())
        assert record["pid"] == os.getpid() and linked in ([record], [])
        assert bool(linked) == links
        assert os.listdir(tmp_path) == [".lock"]  # no private file left beside it
        with pytest.raises(locks.DirectoryLocked, match=f"locked by pid {os.getpid()} "):
            locks._acquire(str(tmp_path), "training")
        assert os.listdir(tmp_path) == [".lock"]
    assert os.listdir(tmp_path) == []
