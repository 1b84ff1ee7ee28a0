"""The JAX Gaussian filter reproduces scipy.ndimage.gaussian_filter (reflect, truncate 4)."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from madad_jax.sampling.smoothing import gaussian_filter_2d


@pytest.mark.parametrize(
    "shape,sigma", [((2, 64, 64), 5.0), ((1, 17, 9), 5.0), ((3, 40, 23), 2.5), ((1, 256, 256), 5.0)]
)
def test_matches_scipy(shape, sigma):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    want = np.stack([ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=4.0) for a in x])
    got = np.asarray(jax.jit(lambda a: gaussian_filter_2d(a, sigma))(x))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_reflect_not_other_modes():
    # A step at the border: reflect and zero padding give clearly different results.
    x = np.zeros((1, 32, 32), np.float32)
    x[:, :4] = 1.0
    got = np.asarray(gaussian_filter_2d(x, 5.0))
    zero = ndimage.gaussian_filter(x[0], 5.0, mode="constant")
    assert np.abs(got[0] - zero).max() > 1e-2
    np.testing.assert_allclose(got[0], ndimage.gaussian_filter(x[0], 5.0), atol=1e-6)
