"""A tensorflow-datasets builder for the same slices, in the ArrayRecord file format.

    builder = MadadSlices(config=SlicesConfig(name="brats_t2_256", source="nifti",
                          input_dir=..., modality="T2", image_size=256, layout="brats",
                          fractions="train=0.8,val=0.1,test=0.1"), data_dir=DATA_DIR)
    builder.download_and_prepare()
    train = builder.as_data_source("train")     # random access, no TensorFlow needed

The prepared directory reads back with `tfds.builder_from_directory(path)` (or
`data_source_from_directory`) without this config, and `madad_jax.data.pipeline` accepts
it as a data path. Nothing is downloaded: inputs come from `input_dir`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from madad_jax.data import convert, png, preprocess
from madad_jax.data.errors import BadInputError, check_policy
from madad_jax.data.splits import parse_fractions

log = logging.getLogger("madad_jax.data")

TEXT_KEYS = ("source", "subject", "name", "modality", "geometry")
INT_KEYS = ("slice_index", "axis", "lesion_area")


@dataclasses.dataclass(eq=False)
class SlicesConfig(tfds.core.BuilderConfig):
    """What to convert; the NIfTI options mean what `convert.convert_nifti`'s do."""

    source: str = "png"  # png | nifti
    input_dir: str = ""
    modality: str = "T2"
    image_size: int = 256
    splits: str = "train,val,test"  # png: split folders to read
    layout: str = "flat"
    split: str = ""  # nifti: every subject in this split
    split_dirs: bool = False
    fractions: str = "train=0.8,val=0.1,test=0.1"
    split_file: str = ""  # default: {data_dir}/{name}_splits.json
    seed: int = 0
    policies: str = "train=healthy,val=healthy,test=all"
    axis: int = 2
    percentiles: tuple[float, float] = (0.5, 99.5)
    fit: str = "pad"
    min_brain_fraction: float = 0.1
    middle_fraction: float = 0.5
    bad_input: str = "skip"


class MadadSlices(tfds.core.GeneratorBasedBuilder):
    """Brain MRI slices with brain masks, segmentations and provenance."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS: list[SlicesConfig] = []

    def __init__(self, *, config: SlicesConfig, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Tensor(shape=(size, size), dtype=np.float32),
                "brainmask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
                "segmentation": tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
                "has_segmentation": tfds.features.Scalar(dtype=np.bool_),
                "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
                **{k: tfds.features.Text() for k in TEXT_KEYS},
                **{k: tfds.features.Scalar(dtype=np.int64) for k in INT_KEYS},
            }
        )
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        check_policy(c.bad_input)
        if c.source == "png":
            names = [s for s in c.splits.split(",") if s]
            present = [s for s in names if os.path.isdir(os.path.join(c.input_dir, s))]
            if not present:
                raise BadInputError(c.input_dir, f"none of the split folders {c.splits} exist")
            return {s: self._png_examples(s) for s in present}
        if c.source != "nifti":
            raise ValueError(f"SlicesConfig.source must be 'png' or 'nifti', got {c.source!r}")
        groups = convert.nifti_groups(
            c.input_dir, c.modality, convert.LAYOUTS[c.layout], split=c.split or None,
            split_dirs=c.split_dirs, fractions=parse_fractions(c.fractions),
            split_file=c.split_file or os.path.join(self._data_dir_root, f"{c.name}_splits.json"),
            seed=c.seed,
        )
        policies = convert.parse_policies(c.policies)
        return {
            name: self._nifti_examples(units, convert._policy_for(policies, name))
            for name, units in groups.items()
        }

    def _generate_examples(self):  # the split generators above yield directly
        raise NotImplementedError

    def _rows(self, units, make):
        for unit in units:
            try:
                rows = make(unit)
            except BadInputError as err:
                if self.builder_config.bad_input == "stop":
                    raise
                log.warning("skipped %s", err)
                continue
            for row in rows:
                yield row["name"], _example(row, self.builder_config.image_size)

    def _png_examples(self, split: str):
        c = self.builder_config
        units = [convert._png_unit(s, c.modality) for s in png.list_slices(c.input_dir, split,
                                                                             c.modality)]
        with_seg = any(role == "segmentation" for u in units for role, _ in u.inputs)
        return self._rows(units, lambda u: convert.png_records(u, c.modality, c.image_size,
                                                               with_seg))

    def _nifti_examples(self, units, policy: str):
        c = self.builder_config
        opts = preprocess.SliceOptions(
            image_size=c.image_size, axis=c.axis, policy=policy,
            percentiles=tuple(c.percentiles), min_brain_fraction=c.min_brain_fraction,
            middle_fraction=c.middle_fraction, fit=c.fit,
        )
        return self._rows(units, lambda u: convert.nifti_records(u, c.modality, opts))


def _example(row: dict[str, Any], size: int) -> dict[str, Any]:
    seg = row.get("segmentation")
    return {
        "image": row["image"],
        "brainmask": row["brainmask"],
        "segmentation": np.zeros((size, size), np.uint8) if seg is None else seg,
        "has_segmentation": seg is not None,
        "affine": np.asarray(row["affine"], np.float64),
        **{k: str(row.get(k, "")) for k in TEXT_KEYS},
        **{k: int(row.get(k, -1)) for k in INT_KEYS},
    }


def data_source_from_directory(path: str | os.PathLike, split: str):
    """A random-access source over a prepared builder directory (no TensorFlow)."""
    return tfds.builder_from_directory(os.fspath(path)).as_data_source(split)
