"""Running the public commands as a user would, for the lock and fault-injection tests.

Tiny inputs (32x32 slices, a random frozen VAE, a few NIfTI subjects), the commands as
argument lists, and the check of the error contract (CONTRACT.md, "Errors"): one stderr
line naming the file or key, a non-zero exit, no traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tqdm's bars (when a command shows them) are progress, not messages.
# tqdm bars and the training loop's own log lines ("[train] step 2: ...", "[vae] ...").
_PROGRESS = re.compile(r"^\S*.*\d+%\|.*\||^\[(train|vae)[a-z_]*\] ")


def env(cache: Path) -> dict[str, str]:
    """The test's CPU devices, and one compilation cache for every run in a module."""
    out = dict(os.environ)
    out.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    return out


def shared_cache(tmp_path_factory) -> Path:
    """One compilation cache for the whole session: the lock and fault tests run the same
    tiny programs (the suite's own with MADAD_TEST_COMPILE_CACHE, see conftest.py)."""
    suite = os.path.expanduser(os.environ.get("MADAD_TEST_COMPILE_CACHE", ""))
    return Path(suite) if suite else tmp_path_factory.getbasetemp() / "fault_jax_cache"


# The tiny training every row runs: two checkpoints, so a kill can land between them.
STEPS = 2
TRAIN = (f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every_steps=1")


def train_inputs(root: Path) -> tuple[Path, Path]:
    """A training shard of 24 slices and a random VAE checkpoint under `root`."""
    from train_helpers import make_slices, save_vae, tiny_config, write_shards

    root.mkdir(parents=True, exist_ok=True)
    shard = str(root / "train.array_record-00000-of-00001")
    data = write_shards(make_slices(24, 32, seed=2), shard)
    vae = save_vae(tiny_config(), str(root / "vae"))
    return Path(data), Path(vae)


def main_cmd(workdir: Path, data: Path, vae: Path | None = None, *extra: str) -> list[str]:
    """`python -m madad_jax.main` on the tiny training config."""
    cmd = [sys.executable, "-m", "madad_jax.main", "--config=tests/tiny_train_config.py",
           f"--workdir={workdir}", f"--config.data.train_path={data}"]
    if vae is not None:
        cmd.append(f"--config.vae_train.checkpoint={vae}")
    return cmd + list(extra)


def convert_cmd(input_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "madad_jax.data.convert", "nifti", str(input_dir), str(out),
            "--modality", "T2", "--image-size", "16", "--split", "train", "--policy", "all",
            "--subjects-per-shard", "1", "--no-progress", *extra]


def run(cmd: list[str], environ: dict[str, str],
        timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def start(cmd: list[str], environ: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 300.0, what: str = "") -> None:
    """Poll until `ready()` while `proc` runs; fail if it ends first."""
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before {what}:\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def outputs(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each process's stdout once all have ended; any still running when one fails or
    times out is killed."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Check the error contract and return the one `error:` line; it must name `names`."""
    assert proc.returncode not in (0, None), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _PROGRESS.match(ln)]
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, (name, line)
    return line


def tmp_files(root: Path) -> list[str]:
    """Temporary files or directories left anywhere under `root`."""
    return [str(p) for p in root.rglob("*") if "tmp" in p.name]
