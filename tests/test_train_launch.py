"""Launch scripts parse; training configs load with the contract's keys; CLI errors are one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p for p in (REPO / "launch").rglob("*") if p.suffix in (".sh", ".sbatch")
)
TRAINING_CONFIGS = ["brats.py:FLAIR", "brats.py:T1CE", "brats.py:T2", "brats.py:T1",
                    "ixi_atlas.py", "vae.py", "tpu_pod.py:FLAIR", "gpu8.py:T2"]


def test_launch_scripts_exist_and_parse():
    names = {p.relative_to(REPO / "launch").as_posix() for p in SCRIPTS}
    assert {"tpu/create.sh", "tpu/copy.sh", "tpu/run.sh", "tpu/resume_loop.sh",
            "gpu_single_node.sh", "slurm_multinode.sbatch"} <= names
    for script in SCRIPTS:
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"
    assert "--worker=all" in (REPO / "launch/tpu/common.sh").read_text()
    assert "srun" in (REPO / "launch/slurm_multinode.sbatch").read_text()
    readme = (REPO / "launch/README.md").read_text()
    for script in names:
        assert script in readme, f"launch/README.md does not describe {script}"


def test_run_script_rejects_missing_arguments():
    r = subprocess.run(["bash", str(REPO / "launch/gpu_single_node.sh")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


def _load(spec: str):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv)
    fv(["prog", f"--config={REPO / 'configs' / spec}"])
    return fv.config


@pytest.mark.parametrize("spec", TRAINING_CONFIGS)
def test_training_configs_load_with_required_keys(spec):
    c = _load(spec)
    for key in ("num_steps", "batch_size", "seed", "checkpoint_every_steps"):
        assert key in c.train, key
    assert c.mesh.param_sharding in ("replicated", "fsdp")
    doc = (REPO / "configs" / spec.split(":")[0]).read_text().split('"""')[1]
    assert "python -m madad_jax.main" in doc or "launch/" in doc  # the run command


def test_brats_is_the_reference_recipe():
    c = _load("brats.py:T2")
    assert c.data.modality == "T2"
    assert (c.model.unet.model_channels, c.model.unet.num_heads) == (256, 8)  # UNet_L
    assert (c.train.lr, c.train.weight_decay, c.train.batch_size) == (4e-5, 1e-4, 96)
    assert (c.train.num_epochs, c.train.warmup_epochs, c.train.schedule) == (200, 10, "cosine")
    assert not c.train.ema and c.train.grad_clip == 0
    with pytest.raises(Exception, match="modality must be one of"):
        _load("brats.py:PD")


def test_hardware_variants():
    tpu = _load("tpu_pod.py:FLAIR")
    assert (tpu.model.name, tpu.model.dtype, tpu.mesh.param_sharding) == (
        "dit", "bfloat16", "fsdp")
    assert tpu.distributed.initialize == "on"
    gpu = _load("gpu8.py:FLAIR")
    assert gpu.train.batch_size % 8 == 0 and gpu.model.dtype == "bfloat16"
    assert _load("vae.py").mode == "train_vae"


def _main(*args, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "madad_jax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line(tmp_path):
    r = _main("--config=configs/nope.py", f"--workdir={tmp_path / 'a'}")
    assert r.returncode == 1 and r.stderr.strip() == "error: configs/nope.py: no such config file"

    r = _main("--config=configs/brats.py:PD", f"--workdir={tmp_path / 'a'}")
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: configs/brats.py: ValueError: modality must be one of "
        "('FLAIR', 'T1CE', 'T2', 'T1'), not 'PD'")

    r = _main("--config=tests/tiny_train_config.py", f"--workdir={tmp_path / 'b'}",
              "--config.mode=sing")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "config.mode" in r.stderr and "Traceback" not in r.stderr

    missing = tmp_path / "no_such_shards"
    r = _main("--config=tests/tiny_train_config.py", f"--workdir={tmp_path / 'c'}",
              f"--config.data.train_path={missing}",
              f"--config.vae_train.checkpoint={tmp_path / 'no_vae'}")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "no_vae") in lines[0], r.stderr
    assert not (tmp_path / "no_vae").exists()  # reading a checkpoint creates nothing

    r = _main("--config=tests/tiny_train_config.py", f"--workdir={tmp_path / 'd'}",
              f"--config.data.train_path={missing}", "--config.train.num_epochs=2")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and str(missing) in lines[0], r.stderr

    r = _main("--config=tests/tiny_train_config.py", f"--workdir={tmp_path / 'e'}",
              f"--config.data.train_path={missing}", "--config.train.num_epochs=2", "--verbose")
    assert r.returncode != 0 and "Traceback" in r.stderr
