"""`evaluation.selection`: the grid, the choice of the best, the ablations' candidates, and
the sweep sampler against the evaluate path's one-jit inference (the reference's weights from
the inference fixture); the demo's `latent_swap` noise and the "input" map source."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from madad_jax.core import checkpoint
from madad_jax.diffusion import loss
from madad_jax.evaluation import metrics, selection
from madad_jax.evaluation.selection import FLAG_ALL, Setting
from madad_jax.sampling import anomaly, loading

SELECT = types.SimpleNamespace(ddim_steps=(2, 5), flag_thresholds=(0.5, 0.9), etas=(0.0, 0.5),
                               sigmas=(1.0, 2.0), map_sources=("image", "mask"))


def test_grid_is_every_combination_in_the_configs_order():
    g = selection.grid(SELECT)
    assert len(g) == 2 * 2 * 2 * 2 * 2 and len(set(g)) == len(g)
    assert g[0] == Setting(2, 0.5, 0.0, "image", 1.0)
    assert g[1] == Setting(2, 0.5, 0.0, "image", 2.0)  # sigma varies fastest
    assert g[-1] == Setting(5, 0.9, 0.5, "mask", 2.0)


class _FakeSampler:
    """Maps chosen per setting: a disc for the ground truth, shifted by a setting's offset."""

    def __init__(self, offsets: dict[Setting, int]):
        self.offsets = offsets
        yy, xx = np.mgrid[:32, :32]
        self.segs = ((yy - 16) ** 2 + (xx - 16) ** 2 < 36)[None].repeat(2, 0)

    def maps(self, s: Setting) -> np.ndarray:
        return np.roll(self.segs.astype(np.float32), self.offsets[s], axis=2)


def test_best_takes_the_highest_max_dice_and_the_first_of_ties():
    a, b, c = (Setting(2, t, 0.0, "image", 1.0) for t in (0.5, 0.7, 0.9))
    fake = _FakeSampler({a: 4, b: 0, c: 0})
    chosen, score, table = selection.best(fake, [a, b, c], fake.segs)
    assert chosen == b and score == pytest.approx(1.0)
    assert [row["flag_threshold"] for row in table] == [0.5, 0.7, 0.9]
    assert table[0]["max_dice"] < 1.0 and table[2]["max_dice"] == pytest.approx(1.0)


def test_ablation_candidates():
    chosen = Setting(5, 0.9, 0.0, "image", 2.0)
    grids = selection.ablation_grids(SELECT, chosen)
    assert set(grids) == set(selection.ABLATIONS)
    assert all(s.flag_threshold == FLAG_ALL and s.map_source != "mask"
               for s in grids["unmasked"])
    assert len(grids["unmasked"]) == 2 * 2 * 3 * 2
    assert {(s.ddim_steps, s.flag_threshold, s.eta, s.map_source)
            for s in grids["reference_sampling"]} == {(10, 0.5, 0.5, "image")}
    assert all(s.map_source == "mask" for s in grids["mask_map"])
    assert len(grids["mask_map"]) == 2 * 2 * 2 * 2
    assert [s.sigma for s in grids["autoencoder"]] == [1.0, 2.0]


@pytest.fixture(scope="module")
def ref(fixture_ckpt, case_dir):
    """The inference fixture's reference weights (imported as a checkpoint) and 4 images."""
    cfg, models, params = loading.load(fixture_ckpt)
    with cfg.unlocked():
        cfg.sample.sigma = 2.0
    images = np.moveaxis(np.load(case_dir / "pipeline.npz")["image"][:4], 1, -1)  # NCHW
    return cfg, models, params, images.astype(np.float32)


@pytest.mark.parametrize("setting", [Setting(2, 0.5, 0.0, "image", 2.0),
                                     Setting(2, 0.9, 0.0, "input", 1.0),
                                     Setting(5, 0.5, 0.0, "latent", 2.0),
                                     Setting(2, 0.5, 0.0, "mask", 3.0)])
def test_sweep_maps_equal_the_evaluate_paths(ref, setting):
    cfg, models, params, images = ref
    sweep = selection.Sampler(cfg, models, params, images)
    infer = anomaly.make_infer_fn(models.vae, models.denoiser, setting.apply(cfg))
    want = np.asarray(infer(params, jnp.asarray(images), jax.random.key(0))["anomaly_map"])
    got = sweep.maps(setting)
    assert got.shape == want.shape == images.shape[:3]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert float(np.abs(want).max()) > 1e-3  # a map, not zeros


def test_flag_all_flags_every_position_and_input_map_is_the_input_difference(ref):
    cfg, models, params, images = ref
    sweep = anomaly.make_sweep_fn(models.vae, models.denoiser, cfg, 2)
    enc = anomaly.make_encode_fn(models.vae, cfg)(params, jnp.asarray(images))
    out = sweep(params, enc["encoded"], jax.random.key(0), FLAG_ALL, 0.0)
    assert np.asarray(out["flagged_frac"]).min() == 1.0
    none = sweep(params, enc["encoded"], jax.random.key(0), 0.0, 0.0)
    assert np.asarray(none["flagged_frac"]).max() == 0.0
    # Nothing flagged: the corrected latent is the input latent.
    np.testing.assert_allclose(np.asarray(none["latent"]), np.asarray(none["encoded"]),
                               atol=1e-6, rtol=0)
    scfg = types.SimpleNamespace(clip=10.0, scale=1.0, latent_clip=1.0, sigma=0.0)
    m = anomaly.anomaly_map("input", scfg, out["sample"], enc["reconstruction"], out["latent"],
                            out["encoded"], out["mean_anomalous"], jnp.asarray(images))
    want = np.abs(np.asarray(out["sample"]) - images).max(axis=-1)
    np.testing.assert_allclose(np.asarray(m), want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs the input images"):
        anomaly.anomaly_map("input", scfg, out["sample"], enc["reconstruction"], out["latent"],
                            out["encoded"], out["mean_anomalous"])


def test_autoencoder_ablation_is_the_reconstruction_error(ref):
    cfg, models, params, images = ref
    sweep = selection.Sampler(cfg, models, params, images)
    got = sweep.autoencoder_maps(0.0)
    rec = sweep.encoded()["reconstruction"]
    # Every setting shares the one reconstruction, and it is the evaluate path's.
    assert sweep.raw(2, 0.5, 0.0)["reconstruction"] is rec
    infer = anomaly.make_infer_fn(models.vae, models.denoiser, cfg)
    want = infer(params, jnp.asarray(images), jax.random.key(0))["reconstruction"]
    np.testing.assert_allclose(rec, np.asarray(want), atol=1e-5, rtol=0)
    want = np.clip(np.abs(images - rec).max(-1), 0, cfg.sample.clip) * cfg.sample.scale
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    segs = (np.abs(images[..., 0]) > 0.5)
    assert 0.0 <= metrics.max_dice(got, segs) <= 1.0


def _dcfg(noise: str, swap_prob: float = 1.0):
    return types.SimpleNamespace(get=lambda k, d=None: {"noise": noise,
                                                        "swap_prob": swap_prob}.get(k, d))


def test_latent_swap_noise_is_other_samples_content():
    z0 = jax.random.normal(jax.random.key(3), (4, 8, 8, 4))
    key = jax.random.key(7)
    gauss = loss.draw_noise(key, z0, _dcfg("gaussian"))
    np.testing.assert_array_equal(np.asarray(gauss),
                                  np.asarray(jax.random.normal(key, z0.shape)))
    swapped = np.asarray(loss.draw_noise(key, z0, _dcfg("latent_swap", 1.0)))
    flat = np.asarray(z0).reshape(4, -1)
    for i in range(4):  # each sample's noise is another sample's latent, rolled in space
        rows = [j for j in range(4)
                if np.allclose(np.sort(swapped[i].ravel()), np.sort(flat[j]), atol=0)]
        assert rows and i not in rows
    kept = loss.draw_noise(key, z0, _dcfg("latent_swap", 0.0))
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(gauss))
    with pytest.raises(ValueError, match="unknown diffusion.noise"):
        loss.draw_noise(key, z0, _dcfg("uniform"))


def test_baseline_variant_is_chosen_on_the_val_slices():
    from madad_jax.evaluation import baseline

    rng = np.random.default_rng(0)
    masks = np.ones((3, 32, 32), bool)
    segs = np.zeros((3, 32, 32), bool)
    segs[:, 10:16, 10:16] = True
    noise = rng.normal(0, 0.05, (3, 32, 32))
    bright = np.where(segs, 0.6, 0.0) + noise  # val: bright lesions, test: dark ones
    dark = np.where(segs, -0.6, 0.0) + noise
    val = baseline.evaluate(dark, masks, segs, kinds=("bright", "dark"), sigmas=(0.0,),
                            per_slice=(False,), select_on=(bright, masks, segs))
    assert val["selected_on"] == "val" and val["variant"].startswith("bright")
    on_test = baseline.evaluate(dark, masks, segs, kinds=("bright", "dark"), sigmas=(0.0,),
                                per_slice=(False,))
    assert on_test["selected_on"] == "test" and on_test["variant"].startswith("dark")
    assert val["max_dice"] < on_test["max_dice"] - 0.5  # the val choice is scored honestly


def test_weights_tool_copies_parameters_only(tmp_path, fixture_ckpt, capsys):
    from madad_jax.tools import weights

    src = fixture_ckpt
    dst = tmp_path / "vae_only"
    assert weights.main([src, str(dst), "--only", "vae"]) == 0
    assert f"to {dst}" in capsys.readouterr().out
    params, arch = checkpoint.load_params(str(dst), checkpoint.latest_step(str(dst)))
    full, full_arch = checkpoint.load_params(src, checkpoint.latest_step(src))
    assert set(params) == {"vae"} and arch == full_arch
    for a, b in zip(jax.tree.leaves(params["vae"]), jax.tree.leaves(full["vae"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # An existing destination and a missing tree are one line each, nothing overwritten.
    assert weights.main([src, str(dst)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert weights.main([src, str(tmp_path / "x"), "--only", "encoder"]) == 1
    assert "no 'encoder' parameters" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
