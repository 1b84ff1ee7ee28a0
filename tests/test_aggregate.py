"""`python -m madad_jax.aggregate`: two runs' metrics merged; bad input in one line."""

import json
import subprocess
import sys
from pathlib import Path

from madad_jax.tools import aggregate

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, dice: float) -> Path:
    (folder / "evaluate").mkdir(parents=True)
    (folder / "evaluate" / "metrics.json").write_text(json.dumps({
        "max_dice": dice, "auroc": 0.9, "seconds": 3.0, "model": "unet",
        "calibrated": {"dice": dice / 2, "calibration": {"threshold": 0.1},
                       "per_volume": {"hd95": 4.0}},
        "intervals": {"max_dice": {"low": 0.1}}}))
    return folder


def test_two_runs_merge(tmp_path):
    a, b = _run(tmp_path / "a", 0.4), _run(tmp_path / "b", 0.6)
    out = tmp_path / "agg"
    proc = subprocess.run([sys.executable, "-m", "madad_jax.aggregate", str(a), str(b),
                           f"--out={out}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "aggregate.json").read_text())["figures"]
    assert set(doc) == {"max_dice", "auroc", "calibrated.dice", "calibrated.per_volume.hd95"}
    assert abs(doc["max_dice"]["mean"] - 0.5) < 1e-9 and doc["max_dice"]["n"] == 2
    assert doc["max_dice"]["low"] < 0.4 and doc["max_dice"]["high"] > 0.6
    assert "| max_dice | 0.5000 ± 0.1414 |" in (out / "aggregate.md").read_text()


def test_missing_run_is_one_line(tmp_path):
    code = aggregate.main([str(tmp_path / "nope"), f"--out={tmp_path / 'o'}"])
    assert code == 1 and not (tmp_path / "o").exists()
