"""The HTML reports render in headless Chromium: not blank, the plots present, no script
errors. Skipped without Chromium, except under CI=true (where .ci/run installs it)."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from madad_jax.evaluation import calibration, report, results

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but no headless Chromium on PATH (.ci/run installs chromium)")
    pytest.skip("no Chromium on PATH (apt-get install chromium) to render the report")


def _render(browser: str, page, tmp_path):
    shot = tmp_path / "shot.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
              "--virtual-time-budget=3000"]
    url = page.resolve().as_uri()
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180).stdout
    return shot, dom


def _not_blank(png) -> bool:
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))
    return img.ndim == 3 and float(img[..., :3].std()) > 0.02


def _evaluate_page(tmp_path):
    rng = np.random.default_rng(0)
    n, s = 8, 32
    maps = rng.uniform(0, 0.5, (n, s, s)).astype(np.float32)
    brain = np.ones((n, s, s), bool)
    segs = np.zeros_like(brain)
    segs[:4, 10:16, 10:16] = True
    maps[segs] += 0.4
    data = {"brainmasks": brain, "segmentations": segs,
            "names": [f"s{i}-slice_1" for i in range(n)]}
    rec = calibration.calibrate("healthy_fpr", maps, brain, segs, target_fpr=0.02)
    cal, _ = calibration.calibrated_metrics(data, maps, rec)
    cal["calibration"] = rec
    res = {"max_dice": 0.6, "f1_max": 0.6, "auroc": 0.9, "ap": 0.5, "max_dice_threshold": 0.45,
           "calibrated": cal, "detection": results.detection(data, maps, 0.99),
           "intervals": {"max_dice": {"low": 0.5, "high": 0.7}},
           "by_lesion_size": {"small": {"n": 2, "max_dice": 0.4}}}
    return report.evaluate_report(str(tmp_path / "report.html"), res, maps, segs)


def test_evaluate_report_is_self_contained(tmp_path):
    text = open(_evaluate_page(tmp_path)).read()
    assert text.count("<svg") == 3 and "calibrated" in text
    assert not re.search(r"""(src|href)=['"]https?://""", text)  # nothing fetched


def test_reports_render_in_headless_chromium(tmp_path):
    browser = _browser()
    page = tmp_path / "report.html"
    _evaluate_page(tmp_path)
    shot, dom = _render(browser, page, tmp_path)
    assert shot.is_file() and _not_blank(shot)
    assert 'data-rendered="1"' in dom and 'data-plots="3"' in dom
    assert "data-errors" not in dom
    scan = tmp_path / "scan_report.html"
    report.scan_report(str(scan), "sub-01", {"warnings": ["voxel size 3 mm"], "num_slices": 4,
                                             "lesions": {"threshold": 0.3, "num_lesions": 0}},
                       [], {})
    shot2, dom2 = _render(browser, scan, tmp_path)
    assert _not_blank(shot2) and 'data-rendered="1"' in dom2 and "voxel size 3 mm" in dom2
