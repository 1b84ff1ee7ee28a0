"""grain input pipelines over ArrayRecord shard sets, and global batches for a JAX mesh.

Training: source -> per-process slice -> shuffle (reshuffled every epoch) -> repeat ->
decode -> augment (numpy) -> batch -> optional multiprocess prefetch; or, with
`exact_epochs`, the reference's exact epochs (`epochs.ExactEpochBatches`). A training batch is
`{"image": (B,H,W,1) float32 in [-1,1], "brainmask": (B,H,W,1) float32}`, plus
`"latent_mean"` / `"latent_logvar"` (B,h,w,4) when reading a latent cache (which turns
augmentation off: the cached moments belong to the unaugmented slices).

This module imports no JAX at module level and its transforms never call JAX, so the
worker processes of `mp_prefetch` never touch the accelerator; their start-up pins JAX to
the CPU as well, in case a library imports it there.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import grain
import numpy as np

from madad_jax.core.errors import InputError
from madad_jax.data import epochs, records
from madad_jax.data.augment import AugmentOptions, augment_slice
from madad_jax.data.errors import BadInputError

LATENT_KEYS = ("latent_mean", "latent_logvar")
# In a cache built for diffusion.contrast_swap_prob: the contrast-changed slice's latent.
OPTIONAL_LATENT_KEY = "latent_contrast_mean"


def open_source(path: str | os.PathLike, split: str = "train"):
    """A grain random-access source for `path`, and its manifest (None if it has none).

    `path` is a conversion output directory, a manifest, a shard glob, or a TFDS
    dataset directory (one holding `dataset_info.json`) built by `tfds_builders`.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        from madad_jax.data.tfds_builders import data_source_from_directory

        return data_source_from_directory(path, split), None
    shards, manifest = records.resolve_shards(path, split)
    return grain.sources.ArrayRecordDataSource(shards), manifest


def _as_dict(element: Any) -> dict[str, Any]:
    if isinstance(element, bytes):
        return records.decode_record(element)
    return records.normalize_example(element)


@dataclasses.dataclass
class DecodeTrain(grain.transforms.Map):
    """Record -> training example: image and brainmask as (H,W,1) float32 (+ latents)."""

    with_latents: bool = False

    def map(self, element):
        r = _as_dict(element)
        out = {
            "image": np.asarray(r["image"], np.float32)[..., None],
            "brainmask": np.asarray(r["brainmask"], np.float32)[..., None],
        }
        if self.with_latents:
            for k in LATENT_KEYS:
                if k not in r:
                    raise KeyError(f"record {r.get('name')} has no {k}; not a latent cache")
                out[k] = np.asarray(r[k], np.float32)
            if OPTIONAL_LATENT_KEY in r:
                out[OPTIONAL_LATENT_KEY] = np.asarray(r[OPTIONAL_LATENT_KEY], np.float32)
        return out


@dataclasses.dataclass
class Augment(grain.transforms.RandomMap):
    options: AugmentOptions = dataclasses.field(default_factory=AugmentOptions)

    def random_map(self, element, rng: np.random.Generator):
        image, mask = augment_slice(
            element["image"][..., 0], element["brainmask"][..., 0], rng, self.options
        )
        mask = mask.astype(np.float32)
        return {**element, "image": image[..., None], "brainmask": mask[..., None]}


def _worker_init(worker_index: int, worker_count: int) -> None:
    """Keep any JAX imported in a data worker off the accelerator."""
    import sys

    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise InputError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def augment_options(data_cfg: Any) -> AugmentOptions:
    get = data_cfg.get if hasattr(data_cfg, "get") else lambda k, d: getattr(data_cfg, k, d)
    return AugmentOptions(
        p=float(get("augment_p", 0.5)),
        rotate_degrees=float(get("rotate_degrees", 5.0)),
        translate_px=int(get("translate_px", -1)),
        brightness=float(get("brightness", 0.1)),
        contrast=float(get("contrast", 0.1)),
        mode=str(get("augment_mode", "symmetric")),
    )


def make_dataset(
    path: str | os.PathLike,
    batch_size: int,
    *,
    split: str = "train",
    seed: int = 0,
    augment: bool = True,
    augment_opts: AugmentOptions | None = None,
    latents: bool = False,
    num_workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    repeat: bool = True,
    exact_epochs: bool = False,
) -> grain.IterDataset:
    """A batched IterDataset of this process's share of `path` (batch_size per process).

    By default each process reads its own 1/process_count of the slices, batches run across
    epoch boundaries and the remainder is dropped. With `exact_epochs` every process reads
    its rows of the same global batches (`epochs.ExactEpochBatches`: batch_size *
    process_count slices, the last of each epoch padded and weighted 0, a `weight` key in
    every batch); `seed` must then be the same on every process.
    """
    source, _ = open_source(path, split)
    if exact_epochs:
        aug = Augment(augment_opts or AugmentOptions()) if augment and not latents else None
        ds = epochs.exact_epoch_dataset(
            source, batch_size * process_count, decode=DecodeTrain(with_latents=latents),
            augment=aug, seed=seed, shuffle=shuffle, num_epochs=None if repeat else 1,
            process_index=process_index, process_count=process_count,
        )
        return prefetch(ds, num_workers)
    if len(source) < process_count:
        raise BadInputError(path, f"{len(source)} slices cannot feed {process_count} processes")
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(DecodeTrain(with_latents=latents))
    if augment and not latents:
        ds = ds.random_map(Augment(augment_opts or AugmentOptions()), seed=(seed + 1) % 2**32)
    return prefetch(ds.batch(batch_size, drop_remainder=True).to_iter_dataset(), num_workers)


def steps_per_epoch(path: str | os.PathLike, global_batch: int, split: str = "train") -> int:
    """Global batches in one exact epoch of `path`: ceil(slices / global_batch)."""
    source, _ = open_source(path, split)
    return epochs.steps_in_epoch(len(source), int(global_batch))


def prefetch(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    """`ds` computed ahead in `num_workers` processes (none: unchanged), kept off the accelerator.

    Workers split the batches round-robin, so the output is the same as without them.
    """
    if num_workers <= 0:
        return ds
    _mark_flags_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                          worker_init_fn=_worker_init)


def train_dataset(
    config, process_index: int | None = None, process_count: int | None = None,
    split: str = "train",
) -> grain.IterDataset:
    """The training IterDataset that `config.data` / `config.train` describe.

    Reads `config.data.latent_cache` when set, else `config.data.train_path` (or
    `val_path` for split="val").
    """
    d = config.data
    latents = bool(d.latent_cache)
    path = d.latent_cache if latents else (d.val_path if split == "val" else d.train_path)
    if not path:
        raise InputError(f"config.data.{'val' if split == 'val' else 'train'}_path is empty")
    return batches_of(path, d, int(config.train.batch_size), split=split, latents=latents,
                      process_index=process_index, process_count=process_count,
                      exact_epochs=bool(config.train.exact_epochs))


def batches_of(
    path: str | os.PathLike, data_cfg: Any, global_batch: int, *, split: str = "train",
    latents: bool = False, process_index: int | None = None, process_count: int | None = None,
    exact_epochs: bool = False,
) -> grain.IterDataset:
    """Training batches of the shard set (or latent cache) at `path`, as `data_cfg` says.

    Each process gets global_batch // process_count slices per batch: from its own
    1/process_count of the data, or with `exact_epochs` its rows of global batches that
    walk exact epochs (every process shuffling with the same seed; see `make_dataset`).
    """
    pi, pc = _process(process_index, process_count)
    if global_batch % pc:
        raise InputError(f"train.batch_size {global_batch} is not divisible by {pc} processes")
    d = data_cfg
    return make_dataset(
        path, global_batch // pc, split=split,
        seed=int(d.shuffle_seed) + (0 if exact_epochs else 1000003 * pi),
        augment=bool(d.augment) and split == "train",
        augment_opts=augment_options(d), latents=latents,
        num_workers=int(d.num_workers), process_index=pi, process_count=pc,
        exact_epochs=exact_epochs,
    )


def train_iterator(config, process_index: int | None = None, process_count: int | None = None):
    """A checkpointable iterator (`get_state()` / `set_state(state)`) over training batches."""
    return iter(train_dataset(config, process_index, process_count))


def _mark_flags_parsed() -> None:
    # grain's workers read absl flags; outside absl.app.run they are not parsed.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def load_eval_split(path: str | os.PathLike, split: str = "test") -> dict[str, Any]:
    """Every slice of a shard set, sorted by name, in the shape of `read_reference_split`.

    Returns images (N,H,W,1) float32, brainmasks (N,H,W) float32, segmentations (N,H,W)
    int32 (None when the set has none), names, plus provenance: subjects, sources,
    slice_indices (N,) int, affines (N,4,4), geometries (JSON strings) and modality.
    """
    source, _ = open_source(path, split)
    rows = [_as_dict(source[i]) for i in range(len(source))]
    if not rows:
        raise BadInputError(path, f"split {split} has no slices")
    rows.sort(key=lambda r: str(r["name"]))
    with_seg = all("segmentation" in r for r in rows)
    out = {
        "images": np.stack([np.asarray(r["image"], np.float32) for r in rows])[..., None],
        "brainmasks": np.stack([np.asarray(r["brainmask"], np.float32) for r in rows]),
        "segmentations": (
            np.stack([np.asarray(r["segmentation"], np.int32) for r in rows]) if with_seg else None
        ),
        "names": [str(r["name"]) for r in rows],
        # Provenance, with neutral values for records written without it.
        "subjects": [str(r.get("subject", "")) for r in rows],
        "sources": [str(r.get("source", "")) for r in rows],
        "slice_indices": np.array([int(r.get("slice_index", -1)) for r in rows], np.int64),
        "affines": np.stack([np.asarray(r.get("affine", np.eye(4)), np.float64) for r in rows]),
        "geometries": [str(r.get("geometry", "")) for r in rows],
        "modality": str(rows[0].get("modality", "")),
    }
    for k in LATENT_KEYS:
        if all(k in r for r in rows):
            out[k] = np.stack([np.asarray(r[k], np.float32) for r in rows])
    return out


def make_global_batch(batch: dict[str, Any], mesh, sharding=None) -> dict[str, Any]:
    """Assemble per-process numpy batches into global `jax.Array`s sharded over `mesh`.

    The leading (batch) axis is split over all mesh axes unless `sharding` says otherwise.
    Non-numeric leaves (names, sources) are left as they are.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if sharding is None:
        sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))

    def put(x):
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            return x
        return jax.make_array_from_process_local_data(sharding, x)

    return {k: put(v) for k, v in batch.items()}


def bench_pipeline(
    path: str | os.PathLike,
    batch_size: int,
    augment: bool,
    seconds: float,
    *,
    split: str = "train",
    num_workers: int = 0,
) -> dict[str, Any]:
    """Slices per second from ArrayRecord through the full training pipeline."""
    ds = make_dataset(path, batch_size, split=split, augment=augment, num_workers=num_workers)
    it = iter(ds)
    next(it)  # start-up (and worker spawn) is not part of the rate
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    elapsed = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    return {
        "slices_per_s": n * batch_size / elapsed,
        "batches": n,
        "seconds": elapsed,
        "batch_size": batch_size,
        "augment": augment,
        "num_workers": num_workers,
    }
