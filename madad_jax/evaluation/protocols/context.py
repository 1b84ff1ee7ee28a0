"""What every evaluation protocol reads and writes: the checkpoint, the splits, the one
function that computes maps, and the result being built.

`open_context` restores the checkpoint, reads the test split (sorted by name), the lesioned
val split when a protocol chooses on it, applies `evaluate.select`'s choice (it changes the
maps every protocol sees), and computes the test split's maps once.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from madad_jax.core import files
from madad_jax.core.errors import InputError
from madad_jax.data import sources
from madad_jax.evaluation import selection
from madad_jax.models.arch import apply_arch
from madad_jax.sampling import inferencer, loading

TEST_KEYS = ("anomaly_map", "sample", "mean_anomalous")  # what the panels show
PANELS = "panels.png"


def sorted_split(data: dict[str, Any], limit: int = 0) -> dict[str, Any]:
    """`data` with its per-slice entries ordered by name and cut to `limit` (0: all)."""
    names = [str(n) for n in data["names"]]
    order = sorted(range(len(names)), key=names.__getitem__)
    if limit > 0:
        order = order[:limit]
    n = len(names)
    out = {}
    for k, v in data.items():
        if isinstance(v, np.ndarray) and v.ndim and len(v) == n:
            out[k] = v[order]
        elif isinstance(v, list) and len(v) == n:
            out[k] = [v[i] for i in order]
        else:
            out[k] = v
    out["names"] = [names[i] for i in order]
    return out


@dataclasses.dataclass
class Context:
    """One evaluation: protocols add to `result` and append file writers to `writers`
    (each called with the evaluate folder being built) and to `after` (called once it is in
    place; process 0 only)."""

    config: Any  # the checkpoint's architecture and, after selection, the chosen settings
    workdir: str
    restored: loading.Restored
    models: loading.Models
    test: dict[str, Any]
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    val: dict[str, Any] | None = None  # the lesioned val split, when a protocol chooses on it
    val_sampler: selection.Sampler | None = None
    chosen: selection.Setting | None = None
    selection: dict[str, Any] | None = None  # what the choice was made from
    writers: list[Callable[[str], None]] = dataclasses.field(default_factory=list)
    after: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    _val_split: dict[str, Any] | None = None
    _val_read: bool = False
    _val_maps: np.ndarray | None = None

    @property
    def params(self) -> Any:
        return self.restored.params

    @property
    def maps(self) -> np.ndarray:
        """The test split's (N,H,W) float32 anomaly maps."""
        return self.outputs["anomaly_map"]

    @property
    def segs(self) -> np.ndarray | None:
        return self.test.get("segmentations")

    def compute(self, images: np.ndarray, keys: tuple[str, ...] = ("anomaly_map",),
                progress: bool = False) -> dict[str, np.ndarray]:
        """The one function that computes maps: the sampler's outputs named by `keys` (see
        `anomaly.make_infer_fn`) for every image with `config.sample`, batched over the
        local devices; `anomaly_map` comes back as float32."""
        c = self.config
        bs = int(c.evaluate.batch_size or c.sample.batch_size)
        infer = inferencer.inferencer(c, self.models)
        out = infer(self.params, images, jax.random.key(int(c.sample.seed)), bs,
                    keys=tuple(keys), progress=progress, all_devices=True)
        if "anomaly_map" in out:
            out["anomaly_map"] = out["anomaly_map"].astype(np.float32)
        return out

    def map_fn(self, images: np.ndarray) -> np.ndarray:
        """`compute`'s anomaly maps alone, without a progress bar."""
        return self.compute(images)["anomaly_map"]

    def val_split(self) -> dict[str, Any] | None:
        """The whole val split sorted by name (read once), or None without one."""
        if not self._val_read:
            data = sources.eval_slices(self.config, "val")
            self._val_split = None if data is None else sorted_split(data)
            self._val_read = True
        return self._val_split

    def val_maps(self) -> np.ndarray:
        """The val split's maps with the current settings (computed once)."""
        if self._val_maps is None:
            self._val_maps = self.map_fn(self.val_split()["images"])
        return self._val_maps


def _lesioned_val(ctx: Context, required: bool) -> dict[str, Any] | None:
    """The val split when it holds lesions (settings are chosen on it, never on test); None,
    or an error when `required`, otherwise."""
    val = ctx.val_split()
    if val is None or val.get("segmentations") is None or not np.any(val["segmentations"]):
        if not required:
            return None
        raise InputError("evaluate.select / evaluate.ablations choose settings on a lesioned "
                         "val split, and this data set has none (demo: data.demo.n_val > 0)")
    return val


def _choose(ctx: Context) -> None:
    """`evaluate.select`: the best setting on the val slices becomes `ctx.config.sample`."""
    t0 = time.time()
    chosen, score, table = selection.best(ctx.val_sampler, selection.grid(
        ctx.config.evaluate.select), ctx.val["segmentations"])
    ctx.config = chosen.apply(ctx.config)
    ctx.chosen = chosen
    ctx.selection = dict(chosen=dataclasses.asdict(chosen), val_max_dice=score,
                         n_val_slices=len(ctx.val["names"]),
                         grid=ctx.config.evaluate.select.to_dict(), candidates=table)
    print(f"evaluate: chose {chosen} on {len(ctx.val['names'])} val slices (max Dice "
          f"{score:.4f}) in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)


def open_context(config, workdir: str, protocols: tuple[str, ...], out_dir: str) -> Context:
    """The checkpoint, the splits, the chosen settings and the test split's maps; `out_dir`
    is checked to be writable before the inference."""
    # The demo's slices are made at config.image_size, shards hold theirs (checked once
    # read); PNG slices are resized to the model's size, so they fit any checkpoint.
    made = int(config.image_size) if config.data.kind == "demo" else None
    restored = loading.restore_for_run(config, workdir, made, warn=True)
    if jax.process_index() == 0:
        files.check_writable(out_dir)
    config = config.copy_and_resolve_references()
    apply_arch(config, restored.arch)
    test = sources.eval_slices(config, "test")
    loading.check_fit(restored, int(test["images"].shape[1]), "the test split")
    ctx = Context(config=config, workdir=workdir, restored=restored,
                  models=loading.build_models(config),
                  test=sorted_split(test, int(config.evaluate.max_examples)))
    e = config.evaluate
    wants_val = (e.select.enabled or (e.ablations and "ablations" in protocols)
                 or (e.baseline and "baseline" in protocols))
    if ctx.segs is not None and wants_val:
        ctx.val = _lesioned_val(ctx, required=bool(e.select.enabled))
    if ctx.val is not None:
        ctx.val_sampler = selection.Sampler(config, ctx.models, ctx.params, ctx.val["images"])
        if e.select.enabled:
            _choose(ctx)
    t0 = time.time()
    ctx.outputs = ctx.compute(ctx.test["images"], keys=TEST_KEYS, progress=True)
    s, c = ctx.config.sample, ctx.config
    ctx.result.update(
        n_slices=len(ctx.maps), ddim_steps=int(s.ddim_steps), eta=float(s.eta),
        map_source=str(s.map_source), image_size=int(c.image_size), model=str(c.model.name),
        checkpoint=restored.directory, checkpoint_step=restored.step, ema=restored.ema,
        seconds=round(time.time() - t0, 3))
    return ctx
