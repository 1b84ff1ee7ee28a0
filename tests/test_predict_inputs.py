"""Inputs are checked, or converted, before the model runs: a NIfTI with trailing singleton
axes, weights holding NaN/Inf, and PNG slices that are not 8-bit grayscale."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from madad_jax import analysis
from madad_jax.config import default_config
from madad_jax.core import checkpoint
from madad_jax.data.errors import BadInputError
from madad_jax.data.png import read_reference_split
from madad_jax.evaluation import predict
from madad_jax.interop import import_reference

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 28, 20)


def _scan(path: Path, shape=SHAPE) -> str:
    g = np.indices(SHAPE).astype(np.float32)
    brain = ((g - (np.array(SHAPE) / 2)[:, None, None, None]) ** 2).sum(0) < 70
    img = np.where(brain, 100 + 20 * np.sin(g[0] / 3) * np.cos(g[1] / 4), 0)
    affine = np.array([[0, -1.2, 0, 20], [1.0, 0, 0, -30], [0, 0, 1.5, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(img.astype(np.float32).reshape(shape), affine), path)
    return str(path)


def _config(ckpt: str, scan: str, out: Path):
    c = default_config()
    c.mode = "predict"
    c.image_size = 64
    c.checkpoint = ckpt
    c.sample.update(ddim_steps=2, batch_size=16)
    c.predict.update(input=scan, output=str(out))
    return c


def test_trailing_singleton_axes_are_kept_in_the_output(tmp_path, fixture_ckpt):
    scan = _scan(tmp_path / "scan4d.nii.gz", (*SHAPE, 1))
    paths = predict.run(_config(fixture_ckpt, scan, tmp_path / "out"), str(tmp_path / "wd"))
    amap, src = nib.load(paths["anomaly"]), nib.load(scan)
    assert amap.shape == (*SHAPE, 1)
    np.testing.assert_allclose(amap.affine, src.affine, atol=1e-6)
    data = np.asarray(amap.dataobj)
    assert np.isfinite(data).all() and data.max() > 0
    for kind in ("panels", "overlay"):
        assert Path(paths[kind]).read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------- NaN / Inf weights


def test_import_refuses_nan_weights_by_name(case_dir, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(case_dir / "unet.safetensors"))
    name = sorted(k for k in sd if k.endswith(".weight"))[3]
    sd[name] = sd[name].copy()
    sd[name].flat[0] = np.nan
    bad = tmp_path / "nan_unet.safetensors"
    save_file(sd, str(bad))
    out = tmp_path / "ck"
    code = import_reference.main([f"--arch={case_dir / 'case.json'}", f"--unet={bad}",
                                  f"--vae={case_dir / 'vae.safetensors'}", f"--out={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert str(bad) in err[0] and name in err[0] and "NaN/Inf" in err[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def nan_ckpt(fixture_ckpt, tmp_path_factory):
    params, arch = checkpoint.load_params(fixture_ckpt)
    kernel = params["denoiser"]["out_2"]["kernel"]
    kernel = np.array(kernel)
    kernel.flat[1] = np.inf
    params["denoiser"]["out_2"]["kernel"] = kernel
    out = tmp_path_factory.mktemp("nan") / "ckpt"
    checkpoint.save_params(str(out), params, arch)
    return out


def test_load_refuses_nan_weights_by_name(nan_ckpt):
    with pytest.raises(BadInputError) as err:
        analysis.load(nan_ckpt)
    assert str(nan_ckpt) in str(err.value) and "denoiser/out_2/kernel" in str(err.value)


def test_predict_refuses_nan_weights_in_one_line(nan_ckpt, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "madad_jax.main", "--config=configs/demo.py",
           f"--workdir={tmp_path / 'wd'}", "--config.mode=predict",
           f"--config.checkpoint={nan_ckpt}", f"--config.predict.input={_scan(tmp_path / 's.nii')}",
           f"--config.predict.output={out}"]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert str(nan_ckpt) in lines[0] and "denoiser/out_2/kernel" in lines[0]
    assert "NaN/Inf" in lines[0] and not out.exists()


# -------------------------------------------------------------------------- PNG slices


def _split(tmp_path: Path, name: str, image: Image.Image, mask: Image.Image) -> Path:
    d = tmp_path / name / "test"
    d.mkdir(parents=True)
    image.save(d / "a-slice_1-T2.png")
    mask.save(d / "a-slice_1-brainmask.png")
    return tmp_path / name


def _gray(size=(40, 36)):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size, dtype=np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[4:-4, 5:-5] = 255
    return img, mask


def test_sixteen_bit_slices_are_scaled_not_clipped(tmp_path):
    img, mask = _gray()
    want = read_reference_split(_split(tmp_path, "u8", Image.fromarray(img),
                                       Image.fromarray(mask)), "test", "T2", 32)
    wide = Image.fromarray(img.astype(np.uint16) * 257)  # the same intensities in 16 bits
    wide_mask = Image.fromarray((mask > 0).astype(np.uint16))  # a 0/1 mask in 16 bits
    assert wide.mode.startswith("I")
    got = read_reference_split(_split(tmp_path, "u16", wide, wide_mask), "test", "T2", 32)
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["brainmasks"], want["brainmasks"])
    assert len(np.unique(got["images"])) > 10  # not clipped to {0, 255}


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_and_palette_slices_read_as_the_reference(tmp_path, mode):
    img, mask = _gray()
    gray = Image.fromarray(img)
    want = read_reference_split(_split(tmp_path, "l", gray, Image.fromarray(mask)),
                                "test", "T2", 32)
    got = read_reference_split(_split(tmp_path, mode, gray.convert(mode),
                                      Image.fromarray(mask).convert(mode)), "test", "T2", 32)
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["brainmasks"], want["brainmasks"])

