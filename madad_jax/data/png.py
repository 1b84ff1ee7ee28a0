"""Slices in the reference's PNG layout: `{root}/{split}/{id}-slice_{k}-{MODALITY}.png`.

Each image has a `-brainmask.png` next to it and, for test splits, a `-segmentation.png`.
They are read the way the reference's data loader reads them: converted to 8-bit grayscale,
resized to `image_size` with Pillow's default filter for that mode (bicubic for "L"),
zeroed where the resized brain mask is 0, divided by 255 and mapped to [-1, 1]. Masks are
binarized with `> 0` after resizing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from madad_jax.data.errors import BadInputError, apply_policy, check_policy

Image.MAX_IMAGE_PIXELS = None


WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # more than 8 bits per pixel


def _to_gray(im: Image.Image, path: Path, mask: bool) -> Image.Image:
    """8-bit grayscale ("L"), as the reference's `.convert('L')` for 8-bit, RGB, RGBA, LA and
    palette images. Pillow would clip a 16-bit image to 0..255, so those are scaled instead
    (v * 255 / 65535, rounded); masks are clipped as Pillow does, which keeps `> 0`."""
    if im.mode not in WIDE_MODES:
        return im.convert("L")
    arr = np.asarray(im)
    if mask:
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    if im.mode == "F" or arr.min() < 0 or arr.max() > 65535:
        raise BadInputError(path, f"{im.mode} image with values in [{arr.min()}, {arr.max()}]"
                                  ": expected 8-bit or 16-bit grayscale")
    scaled = np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _read_gray(path: Path, image_size: int,
               mask: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a PNG as 8-bit grayscale resized to image_size; also return its original size."""
    try:
        with Image.open(path) as im:
            im.load()
            size = im.size
            gray = _to_gray(im, path, mask)
            arr = np.asarray(gray.resize((image_size, image_size)), dtype=np.uint8)
    except BadInputError:
        raise
    except FileNotFoundError as err:
        raise BadInputError(path, "file not found") from err
    except UnidentifiedImageError as err:
        raise BadInputError(path, "not a readable image (corrupt or wrong format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadInputError(path, f"cannot decode image ({err})") from err
    return arr, size


def slice_paths(stem: Path, modality: str) -> dict[str, Path]:
    """The image / brainmask / segmentation paths of one slice, given its stem."""
    return {
        "image": stem.parent / f"{stem.name}-{modality}.png",
        "brainmask": stem.parent / f"{stem.name}-brainmask.png",
        "segmentation": stem.parent / f"{stem.name}-segmentation.png",
    }


def list_slices(root: str | os.PathLike, split: str, modality: str) -> list[Path]:
    """Sorted slice stems (paths without `-{MODALITY}.png`) in `{root}/{split}`."""
    folder = Path(root) / split
    suffix = f"-{modality}.png"
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError as err:
        raise BadInputError(folder, "directory not found") from err
    except NotADirectoryError as err:
        raise BadInputError(folder, "not a directory") from err
    except PermissionError as err:
        raise BadInputError(folder, "directory is not readable (permission denied)") from err
    stems = [folder / n[: -len(suffix)] for n in names if n.endswith(suffix)]
    if not stems:
        present = sorted({n.rsplit("-", 1)[-1][:-4] for n in names if n.endswith(".png")})
        hint = f"; modalities present: {', '.join(present)}" if present else ""
        raise BadInputError(folder, f"no '*{suffix}' slices for modality {modality}{hint}")
    return stems


def read_slice(
    stem: Path, modality: str, image_size: int, with_segmentation: bool,
    *, keep_empty_brainmask: bool = False,
) -> dict[str, np.ndarray]:
    """One slice as the reference's test loader yields it (before batching).

    A slice whose resized brain mask is empty is refused unless `keep_empty_brainmask`; then
    it is kept as the reference keeps it: image -1 everywhere, brain mask all 0.
    """
    paths = slice_paths(stem, modality)
    img, size = _read_gray(paths["image"], image_size)
    mask, mask_size = _read_gray(paths["brainmask"], image_size, mask=True)
    if mask_size != size:
        raise BadInputError(
            paths["brainmask"], f"brain mask is {mask_size[::-1]} but the image is {size[::-1]}"
        )
    img = img.copy()
    img[mask == 0] = 0
    if not mask.any() and not keep_empty_brainmask:
        raise BadInputError(paths["brainmask"], "empty brain mask")
    out = {
        # Same float32 operations, in the same order, as the reference's loader.
        "image": (img.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5),
        "brainmask": (mask > 0).astype(np.float32),
    }
    if with_segmentation:
        seg, seg_size = _read_gray(paths["segmentation"], image_size, mask=True)
        if seg_size != size:
            raise BadInputError(
                paths["segmentation"],
                f"segmentation is {seg_size[::-1]} but the image is {size[::-1]}",
            )
        out["segmentation"] = (seg > 0).astype(np.int32)
    return out


def read_reference_split(
    root: str | os.PathLike,
    split: str,
    modality: str,
    image_size: int,
    *,
    bad_input: str = "stop",
    keep_empty_brainmask: bool = False,
) -> dict:
    """Read every slice of one split of the reference's PNG layout.

    Returns images (N,H,W,1) float32 in [-1,1], brainmasks (N,H,W) float32 in {0,1},
    segmentations (N,H,W) int32 in {0,1} (None when the split has no segmentation files) and
    names (file names without `-{MODALITY}.png`, sorted). Bad files raise BadInputError, or
    with `bad_input="skip"` are logged and left out; a slice with an empty brain mask is
    bad unless `keep_empty_brainmask` (see `read_slice`).
    """
    check_policy(bad_input)
    stems = list_slices(root, split, modality)
    has_seg = [slice_paths(s, modality)["segmentation"].exists() for s in stems]
    with_seg = any(has_seg)
    rows, names = [], []
    for stem in stems:
        row = apply_policy(
            lambda s=stem: read_slice(s, modality, image_size, with_seg,
                                      keep_empty_brainmask=keep_empty_brainmask),
            bad_input,
        )
        if row is not None:
            rows.append(row)
            names.append(stem.name)
    if not rows:
        raise BadInputError(Path(root) / split, "no usable slices")
    return {
        "images": np.stack([r["image"] for r in rows])[..., None],
        "brainmasks": np.stack([r["brainmask"] for r in rows]),
        "segmentations": np.stack([r["segmentation"] for r in rows]) if with_seg else None,
        "names": names,
    }
