"""The CONTRACT's import + evaluate commands, run as subprocesses on the parity fixture."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _evaluate_args(ckpt, workdir, png_root, steps=10):
    return ("madad_jax.main", "--config=configs/reference.py", f"--workdir={workdir}",
            "--config.mode=evaluate", f"--config.checkpoint={ckpt}",
            f"--config.data.png_root={png_root}", "--config.data.split=test",
            "--config.data.modality=T2", f"--config.sample.ddim_steps={steps}",
            "--config.sample.eta=0.0")


@pytest.fixture(scope="module")
def imported(case_dir, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("import") / "ckpt"
    _run("madad_jax.import_reference", f"--arch={case_dir / 'case.json'}",
         f"--unet={case_dir / 'unet_official.pt'}", f"--vae={case_dir / 'vae_official.pt'}",
         f"--out={ckpt}")
    return ckpt


def test_evaluate_matches_reference(case_dir, imported, tmp_path):
    workdir = tmp_path / "run"
    _run(*_evaluate_args(imported, workdir, case_dir / "slices"))
    out = workdir / "evaluate"
    res = json.loads((out / "metrics.json").read_text())
    want = json.loads((case_dir / "case.json").read_text())["metrics"]["ddim10"]
    for k in ("max_dice", "f1_max", "auroc", "ap"):
        assert abs(res[k] - want[k]) <= 2e-3, (k, res[k], want[k])
    assert res["n_slices"] == 6 and res["ddim_steps"] == 10
    assert res["eta"] == 0.0 and res["map_source"] == "image"

    pipe = np.load(case_dir / "pipeline.npz")
    with np.load(out / "anomaly_maps.npz") as z:
        assert set(z.files) == {"anomaly_maps", "names"}
        maps, names = z["anomaly_maps"], z["names"]
    assert maps.dtype == np.float32 and maps.shape == (6, 64, 64)
    assert names.dtype.kind == "U" and list(names) == sorted(names)
    stems = sorted(p.name[: -len("-T2.png")] for p in (case_dir / "slices/test").glob("*-T2.png"))
    assert list(names) == stems
    err = np.abs(maps - pipe["anomaly_map_ddim10"])
    assert err.mean() <= 5e-4 and (err <= 1e-2).mean() >= 0.995
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_evaluate_bad_input_is_one_line(imported, tmp_path):
    workdir = tmp_path / "run"
    missing = tmp_path / "no_such_root"
    proc = _run(*_evaluate_args(imported, workdir, missing), check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(missing) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "evaluate").exists()


def test_evaluate_run_volume_protocol_unseen_steps(case_dir, imported, tmp_path):
    # In process, on the 4 test devices: 3 DDIM steps, eta > 0, the "mask" map, a batch that
    # divides neither the slices nor the devices, and the per-volume protocol.
    import importlib.util

    from madad_jax.evaluation import evaluate

    spec = importlib.util.spec_from_file_location("reference_config", REPO / "configs/reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.checkpoint = str(imported)
    cfg.data.png_root = str(case_dir / "slices")
    cfg.sample.update(ddim_steps=3, eta=0.5, map_source="mask")
    cfg.evaluate.update(protocols=("slice", "volume"), volume_threshold=0.5, max_examples=4,
                        batch_size=3, baseline=False)
    res = evaluate.run(cfg, str(tmp_path))
    out = tmp_path / "evaluate"
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL_CARD.md", "anomaly_maps.npz", "metrics.json", "model_card.json", "panels.png",
        "report.html", "slices.csv", "volumes.csv"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_slices"] == 4 and saved["ddim_steps"] == 3 and saved["map_source"] == "mask"
    assert saved["volume"]["num_volumes"] == 4 and saved["volume"]["threshold"] == 0.5
    assert "baseline" not in saved and saved["max_dice"] == res["max_dice"]
    with np.load(out / "anomaly_maps.npz") as z:
        maps, names = z["anomaly_maps"], list(z["names"])
    assert names == [f"case00{i}-slice_6{i}" for i in range(4)]
    assert maps.shape == (4, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0 + 1e-6
