"""Slices with an empty brain mask: refused by default, kept as the reference keeps them."""

import numpy as np
import pytest
from PIL import Image

from madad_jax.config import default_config
from madad_jax.data import convert, pipeline, sources
from madad_jax.data.errors import BadInputError
from madad_jax.data.png import read_reference_split

SIZE = 32
EMPTY = "s1-slice_1"


def _write_slice(folder, stem, empty=False, seg=True):
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(1, 256, (40, 40), dtype=np.uint8)).save(folder / f"{stem}-T2.png")
    mask = np.zeros((40, 40), np.uint8)
    if not empty:
        mask[5:-5, 5:-5] = 255
    Image.fromarray(mask).save(folder / f"{stem}-brainmask.png")
    if seg:
        s = np.zeros((40, 40), np.uint8)
        s[10:15, 10:15] = 255
        Image.fromarray(s).save(folder / f"{stem}-segmentation.png")


@pytest.fixture
def root(tmp_path):
    """A `test/` and a `train/` split of three slices each; the middle one has no brain."""
    for split in ("test", "train"):
        d = tmp_path / "png" / split
        d.mkdir(parents=True)
        for i in range(3):
            _write_slice(d, f"s{i}-slice_{i}", empty=f"s{i}-slice_{i}" == EMPTY,
                         seg=split == "test")
    return tmp_path / "png"


def _check_kept(out, n=3):
    assert len(out["names"]) == n and EMPTY in out["names"]
    k = out["names"].index(EMPTY)
    assert np.all(out["images"][k] == -1.0)
    assert np.all(out["brainmasks"][k] == 0.0)
    others = [i for i in range(n) if i != k]
    assert all(out["brainmasks"][i].any() for i in others)


def test_read_reference_split(root):
    with pytest.raises(BadInputError, match="empty brain mask"):
        read_reference_split(root, "test", "T2", SIZE)
    skipped = read_reference_split(root, "test", "T2", SIZE, bad_input="skip")
    assert EMPTY not in skipped["names"] and len(skipped["names"]) == 2
    kept = read_reference_split(root, "test", "T2", SIZE, keep_empty_brainmask=True)
    _check_kept(kept)
    assert kept["segmentations"].shape == (3, SIZE, SIZE)
    # The other slices are read exactly as without the option.
    for i, name in enumerate(skipped["names"]):
        k = kept["names"].index(name)
        np.testing.assert_array_equal(kept["images"][k], skipped["images"][i])
        np.testing.assert_array_equal(kept["brainmasks"][k], skipped["brainmasks"][i])


def test_convert_png(root, tmp_path):
    with pytest.raises(BadInputError, match="empty brain mask"):
        convert.convert_png(root, tmp_path / "stop", modality="T2", image_size=SIZE,
                            bad_input="stop", progress=False)
    m = convert.convert_png(root, tmp_path / "skip", modality="T2", image_size=SIZE,
                            progress=False)
    assert m["test"]["num_records"] == 2 and len(m["test"]["skipped"]) == 1
    assert "keep_empty_brainmask" not in m["test"]["settings"]
    m = convert.convert_png(root, tmp_path / "keep", modality="T2", image_size=SIZE,
                            progress=False, keep_empty_brainmask=True)
    assert m["test"]["num_records"] == m["train"]["num_records"] == 3
    assert m["test"]["settings"]["keep_empty_brainmask"] is True
    got = pipeline.load_eval_split(tmp_path / "keep", "test")
    _check_kept(got)
    np.testing.assert_array_equal(
        got["images"], read_reference_split(root, "test", "T2", SIZE,
                                            keep_empty_brainmask=True)["images"])


def test_cli_flag(root, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["png", str(root), str(out), "--modality", "T2", "--image-size", str(SIZE),
            "--no-progress", "--splits", "test"]
    assert convert.main(args + ["--keep-empty-brainmask"]) == 0
    assert "test: 3 slices" in capsys.readouterr().out
    _check_kept(pipeline.load_eval_split(out, "test"))


def _config(root, keep=None):
    c = default_config()
    c.image_size = SIZE
    c.data.kind = "png"
    c.data.png_root = str(root)
    c.data.modality = "T2"
    c.data.bad_input = "stop"
    if keep is not None:
        with c.unlocked():
            c.data.keep_empty_brainmask = keep
    return c


def test_sources_follow_config(root, tmp_path):
    with pytest.raises(BadInputError, match="empty brain mask"):
        sources.eval_slices(_config(root), "test")
    with pytest.raises(BadInputError, match="empty brain mask"):
        sources.eval_slices(_config(root, keep=False), "test")
    _check_kept(sources.eval_slices(_config(root, keep=True), "test"))
    shards = sources.png_shards(_config(root, keep=True), str(tmp_path / "work"))
    _check_kept(pipeline.load_eval_split(shards, "train"))
