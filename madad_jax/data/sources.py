"""Where a run's slices come from: the one place that maps `config.data.kind` to batches.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

Batch = dict[str, Any]


def _data_config(config, **train_overrides):
    """A copy of `config` whose `train.*` keys are overridden (for the pipeline helpers)."""
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.train.update(train_overrides)
    return cfg


def demo_shards(config, workdir: str) -> str:
    """The demo's healthy training slices as an ArrayRecord shard in `DIR/data/demo/`.

    They are generated once (deterministically from `data.demo`) and reused on resume; a
    changed demo config regenerates them.
    """
    from madad_jax.data import records, synthetic

    out = os.path.join(workdir, "data", "demo")
    shard = os.path.join(out, records.shard_name("train", 0, 1))
    stamp_path = os.path.join(out, "settings.json")
    stamp = {"image_size": int(config.image_size),
             "demo": json.loads(config.data.demo.to_json_best_effort())}
    if os.path.isfile(shard) and os.path.isfile(stamp_path):
        if records.read_json(stamp_path) == stamp:
            return shard
    os.makedirs(out, exist_ok=True)
    if jax.process_index() == 0:
        train = synthetic.from_config(config, splits=("train",))["train"]
        rows = (
            {"image": img[..., 0], "brainmask": (mask > 0).astype(np.uint8), "name": name}
            for img, mask, name in zip(train["images"], train["brainmasks"], train["names"],
                                       strict=True)
        )
        records.write_shard(shard, rows)
        records.write_json_atomic(stamp_path, stamp)
    _sync("demo_shards")
    return shard


def png_shards(config, workdir: str) -> str:
    """The reference's PNG `train/` split converted (once, resumably) into `DIR/data/png/`."""
    from madad_jax.data import convert

    out = os.path.join(workdir, "data", "png")
    if jax.process_index() == 0:
        convert.convert_png(config.data.png_root, out, modality=config.data.modality,
                            image_size=int(config.image_size), splits=("train",),
                            bad_input=config.data.get("bad_input", "skip"), progress=False)
    _sync("png_shards")
    return os.path.join(out, "train.manifest.json")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def training_source(config, workdir: str) -> str:
    """Where the training slices are: a shard set path, by `config.data.kind`."""
    kind = config.data.kind
    if kind == "arrayrecord":
        if not config.data.train_path:
            raise ValueError("config.data.train_path is empty (an ArrayRecord shard set from "
                             "python -m madad_jax.data.convert)")
        return config.data.train_path
    if kind == "demo":
        return demo_shards(config, workdir)
    if kind == "png":
        if not config.data.png_root:
            raise ValueError("config.data.png_root is empty")
        return png_shards(config, workdir)
    raise ValueError(f"config.data.kind must be arrayrecord | demo | png, not {kind!r}")


def train_batches(config, workdir: str, batch_size: int, latents: bool = True):
    """This process's share of each global training batch, from the grain pipeline."""
    from madad_jax.data import pipeline

    cfg = _data_config(config, batch_size=int(batch_size))
    # With a latent cache the pipeline reads posterior moments instead of images.
    if not (latents and cfg.data.get("latent_cache", "")):
        with cfg.unlocked():
            cfg.data.latent_cache = ""
            cfg.data.train_path = training_source(config, workdir)
    return pipeline.train_iterator(cfg)


def validation_batches(config) -> list[Batch] | None:
    """`train.val_batches` fixed batches of `data.val_path` (None without one)."""
    if not config.data.get("val_path", "") or int(config.train.get("val_batches", 0)) <= 0:
        return None
    from madad_jax.data import pipeline

    pc, pi = jax.process_count(), jax.process_index()
    ds = pipeline.make_dataset(
        config.data.val_path, int(config.train.batch_size) // pc, split="val", augment=False,
        shuffle=False, repeat=True, process_index=pi, process_count=pc,
    )
    it = iter(ds)
    return [next(it) for _ in range(int(config.train.val_batches))]
