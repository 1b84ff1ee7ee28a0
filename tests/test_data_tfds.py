"""The TFDS builder: array_record files, read back without TensorFlow, same slices."""

import sys

import numpy as np
import tensorflow_datasets as tfds
from data_helpers import write_set

from madad_jax.data import pipeline
from madad_jax.data.png import read_reference_split
from madad_jax.data.tfds_builders import MadadSlices, SlicesConfig


def test_png_builder_round_trip(case_dir, tmp_path):
    config = SlicesConfig(name="fixture_t2_64", source="png", input_dir=str(case_dir / "slices"),
                          modality="T2", image_size=64)
    builder = MadadSlices(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.file_format.value == "array_record"
    source = builder.as_data_source("test")
    assert len(source) == 6
    ref = read_reference_split(case_dir / "slices", "test", "T2", 64)
    got = pipeline.load_eval_split(builder.data_dir, "test")
    for k in ("images", "brainmasks", "segmentations"):
        np.testing.assert_array_equal(got[k], ref[k])
    assert got["names"] == ref["names"] and got["slice_indices"].tolist() == list(range(60, 66))
    # By name through tfds, and batched through the training pipeline.
    named = tfds.data_source("madad_slices/fixture_t2_64", data_dir=str(tmp_path), split="test",
                             download=False)
    assert len(named) == 6
    batch = next(iter(pipeline.make_dataset(builder.data_dir, 3, split="test", augment=False)))
    assert batch["image"].shape == (3, 64, 64, 1)
    assert "tensorflow" not in sys.modules


def test_nifti_builder(tmp_path):
    write_set(tmp_path / "in", 4, seed=0)
    config = SlicesConfig(name="tiny", source="nifti", input_dir=str(tmp_path / "in"),
                          modality="T2", image_size=16, fractions="train=0.5,test=0.5",
                          policies="train=healthy,test=largest_lesion")
    builder = MadadSlices(config=config, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    test = pipeline.load_eval_split(builder.data_dir, "test")
    train = pipeline.load_eval_split(builder.data_dir, "train")
    assert len(test["names"]) == 2 and test["segmentations"].any(axis=(1, 2)).all()
    assert train["segmentations"].sum() == 0
    assert not set(test["subjects"]) & set(train["subjects"])
    assert (tmp_path / "tfds" / "tiny_splits.json").exists()
