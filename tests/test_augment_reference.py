"""Reference-mode augmentations against albumentations' own outputs (train_step fixture)."""

import numpy as np
import pytest
from conftest import FIXTURES, require_fixture

from madad_jax.data import augment, pipeline
from madad_jax.data.augment import AugmentOptions, augment_slice

AUGMENT = FIXTURES / "train_step_mc32_img64" / "augment.npz"


@pytest.fixture(scope="module")
def rec():
    require_fixture(AUGMENT)
    return dict(np.load(AUGMENT))


def _warp(rec, matrix):
    out = []
    for img, mask in zip(rec["image_u8"], rec["brainmask"], strict=True):
        m = augment.warp_nearest(mask, matrix)
        out.append((augment.warp_bilinear_u8(img, matrix) * (m > 0), m))
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def _close(got, want):
    """README tolerance: equal on >= 95 %, within 1 grey level on >= 99 %, never more than 4."""
    d = np.abs(got.astype(np.int64) - want.astype(np.int64))
    return (d == 0).mean() >= 0.95 and (d <= 1).mean() >= 0.99 and d.max() <= 4


@pytest.mark.parametrize("kind", ["rotate", "translate"])
def test_reference_warps_match_albumentations(rec, kind):
    size = rec["image_u8"].shape[-1]
    shape = rec["image_u8"].shape[1:]
    if kind == "rotate":
        matrix = augment.affine_matrix(shape, 5.0)
        wrong = augment.affine_matrix(shape, -5.0)
    else:
        matrix = augment.affine_matrix(shape, 0.0, (size // 32, size // 32))
        wrong = augment.affine_matrix(shape, 0.0, (-(size // 32), -(size // 32)))
    img, mask = _warp(rec, matrix)
    assert _close(img, rec[f"{kind}_image_u8"])
    assert (mask == rec[f"{kind}_brainmask"]).mean() >= 0.995
    # The check can fail: the opposite direction is clearly different.
    assert not _close(_warp(rec, wrong)[0], rec[f"{kind}_image_u8"])


def test_reference_brightness_contrast_is_exact(rec):
    js = sorted({k.split("_")[1] for k in rec if k.startswith("brightness_contrast")})
    assert len(js) >= 2
    for j in js:
        alpha, beta = rec[f"brightness_{j}_alpha_beta"]
        got = augment.brightness_contrast_u8(rec["image_u8"], alpha, beta)
        np.testing.assert_array_equal(got, rec[f"brightness_{j}_image_u8"])


def test_reference_mode_in_augment_slice(rec):
    img_u8, mask = rec["image_u8"][0], rec["brainmask"][0]
    image = augment.from_u8(img_u8)
    np.testing.assert_array_equal(augment.to_u8(image), img_u8)
    size = img_u8.shape[-1]
    # Rotation and translation only: the two warps in order, then re-masking.
    opts = AugmentOptions(p=1.0, brightness=0.0, contrast=0.0, mode="reference")
    out, m = augment_slice(image, mask, np.random.default_rng(0), opts)
    r = augment.affine_matrix(img_u8.shape, 5.0)
    t = augment.affine_matrix(img_u8.shape, 0.0, (size // 32, size // 32))
    want_m = augment.warp_nearest(augment.warp_nearest(mask, r), t)
    want = augment.warp_bilinear_u8(augment.warp_bilinear_u8(img_u8, r), t)
    np.testing.assert_array_equal(m, want_m)
    np.testing.assert_array_equal(out, np.where(want_m > 0, augment.from_u8(want), -1.0))
    # p = 0: untouched.
    same, m0 = augment_slice(image, mask, np.random.default_rng(0),
                             AugmentOptions(p=0.0, mode="reference"))
    np.testing.assert_array_equal(same, np.where(mask > 0, image, -1.0))
    np.testing.assert_array_equal(m0, mask)
    # Jitter only: alpha in [0.9, 1.1], beta in [-0.1, 0.1] of 255, on the uint8 slice.
    opts = AugmentOptions(p=1.0, rotate_degrees=0.0, translate_px=0, mode="reference")
    out, _ = augment_slice(image, mask, np.random.default_rng(3), opts)
    rng = np.random.default_rng(3)
    rng.random(3)
    alpha, beta = 1.0 + rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)
    want = augment.brightness_contrast_u8(img_u8, alpha, beta)
    np.testing.assert_array_equal(out, np.where(mask > 0, augment.from_u8(want), -1.0))


def test_augment_mode_option_and_config():
    from madad_jax.config import default_config

    c = default_config()
    assert c.data.augment_mode == "symmetric"
    assert pipeline.augment_options(c.data).mode == "symmetric"
    c.data.augment_mode = "reference"
    assert pipeline.augment_options(c.data).mode == "reference"
    with pytest.raises(ValueError, match="augment mode"):
        AugmentOptions(mode="albumentations")
