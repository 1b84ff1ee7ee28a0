"""Where a run's slices come from: the one place that maps `config.data.kind` to slices.

Training reads batches of a shard set (`training_source`, `train_batches`); evaluation reads
whole splits (`eval_slices`). Every mode goes through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from madad_jax.core import hosts
from madad_jax.core.errors import InputError

Batch = dict[str, Any]
KINDS = ("arrayrecord", "demo", "png")


def demo_shards(config, workdir: str, split: str = "train") -> str:
    """The demo's slices of `split` (healthy "train", lesioned "val") as an ArrayRecord shard
    in `DIR/data/demo/`.

    They are generated once (deterministically from `data.demo`) and reused on resume; a
    changed demo config regenerates them.
    """
    from madad_jax.data import records, synthetic

    out = os.path.join(workdir, "data", "demo")
    shard = os.path.join(out, records.shard_name(split, 0, 1))
    stamp_name = "settings.json" if split == "train" else f"settings-{split}.json"
    stamp_path = os.path.join(out, stamp_name)
    stamp = {"image_size": int(config.image_size),
             "demo": json.loads(config.data.demo.to_json_best_effort())}
    if os.path.isfile(shard) and os.path.isfile(stamp_path):
        if records.read_json(stamp_path) == stamp:
            return shard
    os.makedirs(out, exist_ok=True)
    if hosts.is_main():
        data = synthetic.from_config(config, splits=(split,))[split]
        rows = (
            {"image": img[..., 0], "brainmask": (mask > 0).astype(np.uint8), "name": name}
            for img, mask, name in zip(data["images"], data["brainmasks"], data["names"],
                                       strict=True)
        )
        records.write_shard(shard, rows)
        records.write_json_atomic(stamp_path, stamp)
    hosts.sync("demo_shards")
    return shard


def keep_empty_brainmask(config) -> bool:
    """`config.data.keep_empty_brainmask`: keep slices whose brain mask is empty."""
    return bool(config.data.keep_empty_brainmask)


def png_shards(config, workdir: str, split: str = "train") -> str:
    """The reference's PNG `split` converted (once, resumably) into `DIR/data/png/`."""
    from madad_jax.data import convert

    out = os.path.join(workdir, "data", "png")
    if hosts.is_main():
        convert.convert_png(config.data.png_root, out, modality=config.data.modality,
                            image_size=int(config.image_size), splits=(split,),
                            bad_input=config.data.bad_input, progress=False,
                            keep_empty_brainmask=keep_empty_brainmask(config))
    hosts.sync(f"png_shards_{split}")
    return os.path.join(out, f"{split}.manifest.json")


def training_source(config, workdir: str) -> str:
    """Where the training slices are: a shard set path, by `config.data.kind`."""
    kind = config.data.kind
    if kind == "arrayrecord":
        if not config.data.train_path:
            raise InputError("config.data.train_path is empty (an ArrayRecord shard set from "
                             "python -m madad_jax.data.convert)")
        return config.data.train_path
    if kind == "demo":
        return demo_shards(config, workdir)
    if kind == "png":
        if not config.data.png_root:
            raise InputError("config.data.png_root is empty")
        return png_shards(config, workdir)
    raise InputError(f"config.data.kind must be arrayrecord | demo | png, not {kind!r}")


def train_batches(config, path: str, batch_size: int, latents: bool = False,
                  exact_epochs: bool = False):
    """This process's share of each global training batch of `path` (a shard set, or a
    latent cache of posterior moments when `latents`), as a checkpointable iterator; in
    exact epochs with a `weight` per row when `exact_epochs` (see `pipeline.make_dataset`)."""
    from madad_jax.data import pipeline

    return iter(pipeline.batches_of(path, config.data, int(batch_size), latents=latents,
                                    exact_epochs=exact_epochs))


def validation_source(config, workdir: str) -> str:
    """Where the validation slices are ("" when the data set has none)."""
    d = config.data
    if d.kind == "demo":
        return demo_shards(config, workdir, "val") if int(d.demo.n_val) > 0 else ""
    if d.kind == "png":
        has_val = d.png_root and os.path.isdir(os.path.join(d.png_root, "val"))
        return png_shards(config, workdir, "val") if has_val else ""
    return d.val_path


def validation_batches(config, workdir: str) -> list[Batch] | Callable[[], Any] | None:
    """The validation data of `train.validation` (None without a validation split, or with
    `train.validation="none"`).

    "batches": `train.val_batches` fixed batches of the split. "reference": a function
    yielding the whole split anew, in order, its last batch padded with zero weights.
    """
    path = "" if config.train.validation == "none" else validation_source(config, workdir)
    if not path:
        return None
    import jax

    from madad_jax.data import pipeline

    pc, pi = jax.process_count(), jax.process_index()
    bs = int(config.train.batch_size) // pc
    if config.train.validation == "reference":
        def whole_split():
            return iter(pipeline.make_dataset(
                path, bs, split="val", augment=False, shuffle=False, repeat=False,
                exact_epochs=True, process_index=pi, process_count=pc))

        return whole_split
    if config.train.validation != "batches":
        raise InputError(f"train.validation must be batches | reference, not "
                         f"{config.train.validation!r}")
    if int(config.train.val_batches) <= 0:
        return None
    ds = pipeline.make_dataset(path, bs, split="val", augment=False, shuffle=False,
                               repeat=True, process_index=pi, process_count=pc)
    it = iter(ds)
    return [next(it) for _ in range(int(config.train.val_batches))]


def eval_slices(config, split: str) -> dict[str, Any] | None:
    """Every slice of `split` for `config.data.kind` (png | arrayrecord | demo), or None
    when the data set has no such split (only "test" is required)."""
    d = config.data
    kind = d.kind
    if kind == "png":
        from madad_jax.data.png import read_reference_split

        if not d.png_root:
            raise InputError("config.data.png_root is required with data.kind=png")
        name = (d.split or "test") if split == "test" else split
        if split != "test" and not os.path.isdir(os.path.join(d.png_root, name)):
            return None
        return read_reference_split(d.png_root, name, d.modality, int(config.image_size),
                                    bad_input=d.bad_input,
                                    keep_empty_brainmask=keep_empty_brainmask(config))
    if kind == "demo":
        from madad_jax.data import synthetic

        if split != "test" and int(d.demo.get(f"n_{split}", 0)) <= 0:
            return None
        return synthetic.from_config(config, splits=(split,))[split]
    if kind == "arrayrecord":
        from madad_jax.data.pipeline import load_eval_split

        path = d.test_path if split == "test" else d.get(f"{split}_path", "")
        if not path:
            if split == "test":
                raise InputError("config.data.test_path is required with data.kind=arrayrecord")
            return None
        return load_eval_split(path, split)
    raise InputError(f"config.data.kind must be one of {KINDS}, not {kind!r}")
