"""The mask-guided DDIM sampler and anomaly maps against the reference's own outputs.

Tolerances are the fixture README's: one step (flags agree on >= 99.9 % of positions, output
within 1e-3 where they agree); whole eta = 0 pipeline (map mean abs error <= 5e-4, >= 99.5 %
of pixels within 1e-2, metrics within 2e-3).
"""

import json

import jax
import numpy as np
import pytest

from madad_jax.config import default_config
from madad_jax.diffusion import sampler
from madad_jax.evaluation import metrics
from madad_jax.interop import import_reference
from madad_jax.models import build_denoiser, build_vae
from madad_jax.models.arch import apply_arch
from madad_jax.sampling import anomaly

STEPS = (10, 5, 2)


@pytest.fixture(scope="module")
def ref(case_dir):
    case = json.loads((case_dir / "case.json").read_text())
    arch = import_reference.arch_from_reference(case)
    cfg = default_config()
    apply_arch(cfg, arch)
    sd_unet = import_reference.load_state_dict(str(case_dir / "unet.safetensors"))
    sd_vae = import_reference.load_state_dict(str(case_dir / "vae.safetensors"))
    params = {
        "vae": import_reference.convert_vae(sd_vae, arch["vae"]),
        "denoiser": import_reference.convert_unet(sd_unet, arch["model"]["unet"]),
    }
    return dict(case=case, cfg=cfg, params=params, pipe=np.load(case_dir / "pipeline.npz"))


def _cfg(ref, steps, eta=0.0, source="image"):
    cfg = ref["cfg"].copy_and_resolve_references()
    cfg.sample.ddim_steps = steps
    cfg.sample.eta = eta
    cfg.sample.map_source = source
    return cfg


def nhwc(x):
    return np.moveaxis(np.asarray(x), -3, -1)


@pytest.mark.parametrize("steps", STEPS)
def test_one_sampler_step(ref, steps):
    cfg = _cfg(ref, steps)
    pipe = ref["pipe"]
    z = nhwc(pipe[f"steps_ddim{steps}_z"])
    flags = pipe[f"steps_ddim{steps}_flagged"][:, :, 0]
    np.testing.assert_array_equal(
        np.asarray(sampler.ddim_tables(10, steps)["timestep_map"])[::-1],
        pipe[f"steps_ddim{steps}_t"],
    )
    step = sampler.make_step_fn(build_denoiser(cfg), cfg)
    agree, total = 0, 0
    for k, i in enumerate(range(steps - 1, -1, -1)):
        out = step(ref["params"]["denoiser"], z[k], i, jax.random.key(0))
        got_flags = np.asarray(out["flagged"])[..., 0]
        same = got_flags == flags[k]
        agree, total = agree + same.sum(), total + same.size
        np.testing.assert_allclose(
            np.asarray(out["x0_hat"]), nhwc(pipe[f"steps_ddim{steps}_x0_hat"][k]), atol=1e-4
        )
        err = np.abs(np.asarray(out["z"]) - z[k + 1]).max(axis=-1)
        assert err[same].max() <= 1e-3, (k, float(err[same].max()))
    assert agree / total >= 0.999


@pytest.mark.parametrize("steps", STEPS)
def test_whole_pipeline_eta0(ref, steps):
    cfg = _cfg(ref, steps)
    pipe = ref["pipe"]
    infer = anomaly.make_infer_fn(build_vae(cfg), build_denoiser(cfg), cfg)
    out = jax.tree.map(np.asarray, infer(ref["params"], nhwc(pipe["image"]), jax.random.key(0)))
    np.testing.assert_allclose(out["encoded"], nhwc(pipe["encoded_latent"]), atol=1e-4)
    np.testing.assert_allclose(out["reconstruction"], nhwc(pipe["reconstruction"]), atol=1e-4)
    amap, want = out["anomaly_map"], pipe[f"anomaly_map_ddim{steps}"]
    assert amap.shape == want.shape and amap.dtype == np.float32
    err = np.abs(amap - want)
    assert err.mean() <= 5e-4, float(err.mean())
    assert (err <= 1e-2).mean() >= 0.995
    got = metrics.slice_metrics(amap, pipe["segmentation"])
    for k, v in ref["case"]["metrics"][f"ddim{steps}"].items():
        assert abs(got[k] - v) <= 2e-3, (k, got[k], v)


def test_trajectory_eta_and_map_sources(ref):
    steps = 2
    x = nhwc(ref["pipe"]["image"])[:4]
    cfg = _cfg(ref, steps, eta=0.5)
    infer = anomaly.make_infer_fn(build_vae(cfg), build_denoiser(cfg), cfg, trajectory=True)
    a = jax.tree.map(np.asarray, infer(ref["params"], x, jax.random.key(1)))
    b = jax.tree.map(np.asarray, infer(ref["params"], x, jax.random.key(1)))
    c = jax.tree.map(np.asarray, infer(ref["params"], x, jax.random.key(2)))
    np.testing.assert_array_equal(a["anomaly_map"], b["anomaly_map"])  # explicit key: repeatable
    assert np.abs(a["latent"] - c["latent"]).max() > 1e-4  # eta > 0 draws noise
    assert a["steps_z"].shape == (steps + 1, 4, 8, 8, 4)
    assert a["steps_flagged"].shape == a["steps_p_clean"].shape == (steps, 4, 8, 8, 1)
    np.testing.assert_array_equal(a["steps_t"], [5, 0])
    np.testing.assert_array_equal(a["steps_flagged"], a["steps_p_clean"] < 0.5)
    # only flagged positions ever change, in every channel alike
    for k in range(steps):
        moved = np.abs(a["steps_z"][k + 1] - a["steps_z"][k]).max(axis=-1) > 0
        assert not (moved & ~a["steps_flagged"][k][..., 0]).any()
        assert moved[a["steps_flagged"][k][..., 0]].mean() > 0.99
    np.testing.assert_allclose(
        a["mean_anomalous"], 1.0 - a["steps_p_clean"][..., 0].mean(axis=0), atol=1e-6
    )
    # the three map sources on this batch
    args = [a[k] for k in ("sample", "reconstruction", "latent", "encoded", "mean_anomalous")]
    image = np.asarray(anomaly.anomaly_map("image", cfg.sample, *args))
    np.testing.assert_array_equal(image, a["anomaly_map"])
    for source in ("latent", "mask"):
        amap = np.asarray(anomaly.anomaly_map(source, cfg.sample, *args))
        assert amap.shape == (4, 64, 64)
        assert 0.0 <= amap.min() and amap.max() <= 1.0 + 1e-6 and amap.std() > 0
    # "mask" without smoothing is the bilinear upsampling of the per-step average
    flat = cfg.sample.copy_and_resolve_references()
    flat.sigma = 0.0
    up = np.asarray(anomaly.anomaly_map("mask", flat, *args))
    want = _bilinear(_bilinear(a["mean_anomalous"], 64, axis=1), 64, axis=2)
    np.testing.assert_allclose(up, want, atol=1e-5)
    with pytest.raises(ValueError):
        anomaly.make_infer_fn(build_vae(cfg), build_denoiser(cfg), _cfg(ref, steps, source="nope"))


def _bilinear(a, size, axis):
    """Half-pixel-centre linear interpolation along one axis, edges clamped."""
    n = a.shape[axis]
    src = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (src - i0).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def test_flag_threshold(ref):
    """`sample.flag_threshold`: 0 flags nothing (no change, zero map), > 1 flags every
    position; in between, the flags are P(clean) < threshold at each step."""
    x = nhwc(ref["pipe"]["image"])[:4]
    out = {}
    for thr in (0.0, 0.7, 1.01):
        cfg = _cfg(ref, 2)
        cfg.sample.flag_threshold = thr
        infer = anomaly.make_infer_fn(build_vae(cfg), build_denoiser(cfg), cfg, trajectory=True)
        out[thr] = jax.tree.map(np.asarray, infer(ref["params"], x, jax.random.key(0)))
    none, mid, every = out[0.0], out[0.7], out[1.01]
    np.testing.assert_array_equal(none["latent"], none["encoded"])
    # Nothing flagged: the second decode is skipped, the sample is the reconstruction.
    np.testing.assert_array_equal(none["sample"], none["reconstruction"])
    assert none["anomaly_map"].max() == 0.0 and none["flagged_frac"].max() == 0.0
    assert not np.array_equal(mid["sample"], mid["reconstruction"])  # decoded anew
    assert every["steps_flagged"].all() and every["flagged_frac"].min() == 1.0
    np.testing.assert_array_equal(mid["steps_flagged"], mid["steps_p_clean"] < 0.7)
    assert 0.0 < mid["flagged_frac"].mean() < 1.0
