"""PNG figures: slice panels (input | healthy counterpart | anomaly map | ground truth) and an
anomaly overlay on the anatomy (nilearn). Every file is written to a temporary name first,
then renamed, so a reader never sees a half-written PNG.

Matplotlib renders with the Agg backend through `Figure` objects, so nothing here needs a
display or changes pyplot's global backend once pyplot is in use (e.g. in a notebook).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from madad_jax.core import files


def _squeeze(x: np.ndarray | None) -> np.ndarray | None:
    if x is None:
        return None
    x = np.asarray(x, np.float32)
    return x[..., 0] if x.ndim == 4 else x


def slice_panels(
    path: str | os.PathLike,
    images: np.ndarray,
    samples: np.ndarray | None,
    maps: np.ndarray,
    segmentations: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    map_max: float | None = None,
    mask_maps: np.ndarray | None = None,
    dpi: int = 100,
) -> str:
    """One row per slice: input | healthy counterpart | anomaly map | [ground truth]
    | [mask head]. Images and samples are in [-1, 1]; maps share one colour scale
    (0 .. `map_max`, default max(1, largest value))."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, samples, maps = _squeeze(images), _squeeze(samples), _squeeze(maps)
    segmentations, mask_maps = _squeeze(segmentations), _squeeze(mask_maps)
    n = len(images)
    columns = [("input", images, "gray", (-1.0, 1.0))]
    if samples is not None:
        columns.append(("healthy counterpart", samples, "gray", (-1.0, 1.0)))
    vmax = float(map_max) if map_max else max(1.0, float(np.max(maps)) if maps.size else 1.0)
    columns.append(("anomaly map", maps, "inferno", (0.0, vmax)))
    if segmentations is not None:
        columns.append(("ground truth", segmentations, "gray", (0.0, 1.0)))
    if mask_maps is not None:
        columns.append(("mask head P(anomalous)", mask_maps, "viridis", (0.0, 1.0)))

    fig = Figure(figsize=(2.4 * len(columns), 2.4 * n + 0.3), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, len(columns), squeeze=False)
    for r in range(n):
        for c, (name, arr, cmap, (lo, hi)) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(arr[r], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0 and titles is not None:
                ax.set_ylabel(titles[r], fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return os.fspath(path)


def _as_3d(img):
    """A (X, Y, Z, 1, ...) image with its trailing singleton axes dropped."""
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if shape == tuple(img.shape):
        return img
    import nibabel as nib

    return nib.Nifti1Image(np.asarray(img.dataobj).reshape(shape), img.affine)


def overlay(
    path: str | os.PathLike,
    anatomy,
    anomaly,
    cut_coords: Sequence[float] | None = None,
    threshold: float | None = None,
    title: str | None = None,
) -> str:
    """The anomaly map over the anatomy (nilearn `plot_stat_map`, three orthogonal cuts).

    `anatomy` and `anomaly` are nibabel images (or paths) on the same grid. `cut_coords`
    (world mm) defaults to the map's peak.
    """
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from nilearn import plotting
    from nilearn.image import load_img

    anatomy, anomaly = _as_3d(load_img(anatomy)), _as_3d(load_img(anomaly))
    data = np.asarray(anomaly.dataobj, np.float32)
    peak = float(data.max()) if data.size else 0.0
    if cut_coords is None:
        ijk = np.unravel_index(int(np.argmax(data)), data.shape)
        cut_coords = (anomaly.affine @ np.array([*ijk, 1.0]))[:3].tolist()
    if threshold is None:
        threshold = 0.1 * peak if peak > 0 else 1e-6

    fig = plt.figure(figsize=(9, 3.2))
    try:
        plotting.plot_stat_map(
            anomaly, bg_img=anatomy, cut_coords=cut_coords, display_mode="ortho",
            threshold=threshold, vmax=max(peak, threshold * 1.01), cmap="inferno",
            colorbar=True, title=title, figure=fig, draw_cross=False, transparency=0.8,
            black_bg=True, symmetric_cbar=False,
        )
        with files.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", facecolor="black")
    finally:
        plt.close(fig)
    return os.fspath(path)


def viewer(path: str | os.PathLike, anatomy, anomaly, threshold: float | None = None) -> str:
    """An interactive three-cut viewer of the map over the anatomy (nilearn `view_img`): one
    self-contained HTML file that opens offline; voxels under `threshold` stay clear."""
    from nilearn import plotting
    from nilearn.image import load_img

    anatomy, anomaly = _as_3d(load_img(anatomy)), _as_3d(load_img(anomaly))
    peak = float(np.max(anomaly.dataobj)) if np.size(anomaly.dataobj) else 0.0
    if threshold is None:
        threshold = 0.1 * peak if peak > 0 else 1e-6
    view = plotting.view_img(anomaly, bg_img=anatomy, threshold=float(threshold),
                             vmax=max(peak, float(threshold) * 1.01), symmetric_cmap=False,
                             cmap="hot", black_bg=True, title="anomaly map")
    view.save_as_html(str(path))
    return str(path)

