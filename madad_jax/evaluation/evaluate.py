"""The `evaluate` mode: anomaly maps for a test split and the reference's metrics.

Writes, atomically, under `DIR/evaluate/`:
- `metrics.json`: `max_dice`, `f1_max`, `auroc`, `ap` (the reference's slice protocol,
  `madad_jax.evaluation.metrics`), the settings they were computed with, a lesion-size breakdown,
  optionally the per-volume protocol (`volume`) and an intensity-threshold `baseline`;
- `anomaly_maps.npz`: `anomaly_maps` float32 (N,H,W) and `names` str (N,), sorted by name;
- `slices.csv` (and `volumes.csv` with the per-volume protocol): one row per unit;
- `panels.png`: input | healthy counterpart | map | ground truth | mask head, a few slices.

The checkpoint is `config.checkpoint`, or the workdir's latest. Its stored architecture
replaces the config's, so any checkpoint evaluates with any config file. With several
processes every process computes the maps on its own devices and process 0 writes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from madad_jax.core import files
from madad_jax.core.errors import InputError
from madad_jax.data import sources
from madad_jax.evaluation import metrics, selection
from madad_jax.models.arch import apply_arch
from madad_jax.sampling import inferencer, loading

log = logging.getLogger("madad_jax.evaluation.evaluate")

RESULT_DIR = "evaluate"


# ------------------------------------------------------------------------------- data


def _sorted(data: dict[str, Any], limit: int = 0) -> dict[str, Any]:
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


# -------------------------------------------------------------------------- inference


def compute_maps(config, models: loading.Models, params: Any, images: np.ndarray,
                 progress: bool = True) -> np.ndarray:
    """(N,H,W) float32 anomaly maps with `config.sample`, batched over the local devices."""
    return compute_outputs(config, models, params, images, progress=progress)["anomaly_map"]


def compute_outputs(config, models: loading.Models, params: Any, images: np.ndarray,
                    keys: tuple[str, ...] = ("anomaly_map",),
                    progress: bool = True) -> dict[str, np.ndarray]:
    """The sampler's outputs named by `keys` (see `anomaly.make_infer_fn`) for every image,
    batched over the local devices; `anomaly_map` comes back as float32."""
    bs = int(config.evaluate.batch_size or config.sample.batch_size)
    infer = inferencer.inferencer(config, models)
    out = infer(params, images, jax.random.key(int(config.sample.seed)), bs, keys=tuple(keys),
                progress=progress, all_devices=True)
    if "anomaly_map" in out:
        out["anomaly_map"] = out["anomaly_map"].astype(np.float32)
    return out


# ---------------------------------------------------------------------------- metrics


def slice_protocol(maps: np.ndarray, segmentations: np.ndarray) -> dict[str, Any]:
    """The reference's four numbers plus the threshold that gave the max Dice."""
    res = metrics.slice_metrics(maps, segmentations)
    curve = metrics.dice_curve(maps, segmentations)
    res["max_dice_threshold"] = float(metrics.DICE_THRESHOLDS[int(np.argmax(curve))])
    return res


def _volume_protocol(config, workdir, models, params, test, maps) -> tuple[dict, list]:
    from madad_jax.evaluation import volume_metrics as vm

    e = config.evaluate
    threshold = float(e.volume_threshold)
    val_volumes = None
    if threshold < 0:
        val = sources.eval_slices(config, "val")
        if val is None or val.get("segmentations") is None:
            raise InputError(
                "evaluate.protocols has 'volume' but there is no validation split with "
                "segmentations to choose its threshold; set evaluate.volume_threshold"
            )
        val = _sorted(val)
        val_maps = compute_maps(config, models, params, val["images"], progress=False)
        val_volumes = vm.volumes_from_eval(val, val_maps)
    edges = tuple(e.size_edges_volume) or None
    return vm.volume_protocol(vm.volumes_from_eval(test, maps), val_volumes,
                              None if threshold < 0 else threshold, edges=edges)


def _lesioned_val(config, required: bool) -> dict[str, Any] | None:
    """The val split when it holds lesions (settings are chosen on it, never on test); None,
    or an error when `required`, otherwise."""
    val = sources.eval_slices(config, "val")
    if val is None or val.get("segmentations") is None or not np.any(val["segmentations"]):
        if not required:
            return None
        raise InputError("evaluate.select / evaluate.ablations choose settings on a lesioned "
                         "val split, and this data set has none (demo: data.demo.n_val > 0)")
    return _sorted(val)


def _ablations(config, models, params, images, segs, val, val_sampler,
               chosen) -> dict[str, Any]:
    """`selection.ABLATIONS` on the test slices; settings chosen on `val` when given."""
    test_sampler = selection.Sampler(config, models, params, images, share=val_sampler)
    s = config.sample
    fixed = selection.Setting(int(s.ddim_steps), float(s.flag_threshold), float(s.eta),
                              str(s.map_source), float(s.sigma))
    if val is not None:
        settings = selection.choose_ablations(val_sampler, val["segmentations"],
                                              config.evaluate.select, chosen or fixed)
    else:  # no val split: every free setting is the config's
        settings = {name: (grid[0] if name == "reference_sampling" else dataclasses.replace(
            grid[0], sigma=fixed.sigma), float("nan")) for name, grid in
            selection.ablation_grids(config.evaluate.select, fixed).items()}
        settings["mask_map"] = (dataclasses.replace(fixed, map_source="mask"), float("nan"))
    return selection.score_ablations(test_sampler, segs, settings)


def comparisons(result: dict[str, Any]) -> dict[str, float]:
    """The model's max Dice against the baseline and each ablation (differences), and the
    mask head's map as a fraction of the model's max Dice."""
    out: dict[str, float] = {}
    model = result.get("max_dice")
    if model is None:
        return out
    if "baseline" in result:
        out["model_minus_baseline"] = model - result["baseline"]["max_dice"]
    abl = result.get("ablations", {})
    for name in ("autoencoder", "unmasked", "reference_sampling"):
        if name in abl:
            out[f"model_minus_{name}"] = model - abl[name]["max_dice"]
    if "mask_map" in abl and model > 0:
        out["mask_map_over_model"] = abl["mask_map"]["max_dice"] / model
    return out


# ---------------------------------------------------------------------------- writing


def write_results(out_dir: str, result: dict[str, Any], maps: np.ndarray,
                  names: list[str]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, anomaly_maps=maps.astype(np.float32), names=np.asarray(names, dtype=str))
    files.atomic_write(os.path.join(out_dir, "anomaly_maps.npz"), buf.getvalue())
    files.write_json_atomic(os.path.join(out_dir, "metrics.json"), files.to_json(result),
                            indent=2, sort_keys=False, allow_nan=False)


PANELS = "panels.png"


def panel_indices(n: int, k: int) -> list[int]:
    """k slice indices spread evenly over n sorted slices (all of them when n <= k)."""
    if n <= 0 or k <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})


def write_panels(path: str, test: dict[str, Any], outputs: dict[str, np.ndarray],
                 k: int) -> str | None:
    """PNG rows input | healthy counterpart | map | [ground truth] | mask head, for k slices."""
    from madad_jax.evaluation import figures

    sel = panel_indices(len(test["names"]), k)
    if not sel:
        return None
    segs = test.get("segmentations")
    return figures.slice_panels(
        path, test["images"][sel], outputs["sample"][sel], outputs["anomaly_map"][sel],
        None if segs is None else segs[sel], titles=[test["names"][i] for i in sel],
        mask_maps=outputs["mean_anomalous"][sel],
    )


# -------------------------------------------------------------------------------- run


def run(config, workdir: str) -> dict[str, Any]:
    """Evaluate the checkpoint on the test split; returns what metrics.json holds."""
    # The demo's slices are made at config.image_size, shards hold theirs (checked once
    # read); PNG slices are resized to the model's size, so they fit any checkpoint.
    made = config.data.kind == "demo"
    restored = loading.restore_for_run(config, workdir,
                                       int(config.image_size) if made else None, warn=True)
    config = config.copy_and_resolve_references()
    apply_arch(config, restored.arch)
    models = loading.build_models(config)
    protocols = tuple(config.evaluate.protocols)

    if jax.process_index() == 0:
        files.check_writable(os.path.join(workdir, RESULT_DIR))  # before the inference
    test = _sorted(sources.eval_slices(config, "test"),
                   int(config.evaluate.max_examples))
    images, segs = test["images"], test.get("segmentations")
    loading.check_fit(restored, int(images.shape[1]), "the test split")
    e = config.evaluate
    val = val_sampler = chosen = None
    if segs is not None and (e.select.enabled or e.ablations or e.baseline):
        val = _lesioned_val(config, required=bool(e.select.enabled))
    if val is not None:
        val_sampler = selection.Sampler(config, models, restored.params, val["images"])
    if val is not None and e.select.enabled:
        t_sel = time.time()
        chosen, val_score, table = selection.best(
            val_sampler, selection.grid(e.select), val["segmentations"])
        config = chosen.apply(config)
        log.info("chose %s on %d val slices (max Dice %.4f) in %.1f s", chosen,
                 len(val["names"]), val_score, time.time() - t_sel)
    t0 = time.time()
    outputs = compute_outputs(config, models, restored.params, images,
                              keys=("anomaly_map", "sample", "mean_anomalous"))
    maps = outputs["anomaly_map"]
    seconds = time.time() - t0

    s = config.sample
    result: dict[str, Any] = dict(
        n_slices=len(maps),
        ddim_steps=int(s.ddim_steps),
        eta=float(s.eta),
        map_source=str(s.map_source),
        image_size=int(config.image_size),
        model=str(config.model.name),
        checkpoint=restored.directory,
        checkpoint_step=restored.step,
        ema=restored.ema,
        seconds=round(seconds, 3),
    )
    rows_slices, rows_volumes, extras = None, None, None
    if segs is None:
        log.warning("the test split has no segmentations: writing maps without metrics")
        result.update(max_dice=None, f1_max=None, auroc=None, ap=None)
    else:
        from madad_jax.evaluation import volume_metrics as vm

        result.update(slice_protocol(maps, segs))
        edges = tuple(config.evaluate.size_edges_slice) or None
        result["by_lesion_size"] = vm.slice_size_breakdown(maps, segs, edges)
        rows_slices = vm.slice_rows(test["names"], maps, segs, result["max_dice_threshold"],
                                    edges)
        if "volume" in protocols:
            result["volume"], rows_volumes = _volume_protocol(
                config, workdir, models, restored.params, test, maps)
        if config.evaluate.baseline:
            from madad_jax.evaluation import baseline

            result["baseline"] = baseline.evaluate(
                images, test["brainmasks"], segs,
                select_on=None if val is None else (
                    val["images"], val["brainmasks"], val["segmentations"]))
        if chosen is not None:
            result["selected_on"] = "val"
            result["selection"] = dict(
                chosen=dataclasses.asdict(chosen), val_max_dice=val_score,
                n_val_slices=len(val["names"]), grid=e.select.to_dict(), candidates=table)
        if val_sampler is not None:
            from madad_jax.evaluation import mask_head

            result["mask_head"] = dict(val=mask_head.lesion_cell_auroc(
                val_sampler, val, int(s.ddim_steps), float(s.flag_threshold), float(s.eta)))
        if e.ablations:
            result["ablations"] = _ablations(config, models, restored.params, images, segs,
                                             val, val_sampler, chosen)
            result["comparisons"] = comparisons(result)
        from madad_jax.evaluation import results as extra  # calibrated, detection, intervals

        extras = extra.extend(config, result, test, maps, val, lambda im: compute_maps(
            config, models, restored.params, im, progress=False), restored.directory,
            restored.step)

    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, RESULT_DIR)
        # The whole result set, or none of it: written beside DIR/evaluate, then renamed.
        with files.atomic_dir(out_dir) as tmp:
            write_results(tmp, result, maps, test["names"])
            if rows_slices is not None:
                from madad_jax.evaluation import volume_metrics as vm

                vm.write_csv(os.path.join(tmp, "slices.csv"), rows_slices)
                if rows_volumes is not None:
                    vm.write_csv(os.path.join(tmp, "volumes.csv"), rows_volumes)
            write_panels(os.path.join(tmp, PANELS), test, outputs,
                         int(config.evaluate.num_panels))
            if extras is not None:
                card = extra.model_card(config, result, restored.directory, restored.step)
                extra.write(tmp, extras)
                extra.write_card(tmp, card)
                from madad_jax.evaluation import report

                report.evaluate_report(os.path.join(tmp, "report.html"), result, maps, segs,
                                       os.path.join(tmp, PANELS))
        if extras is not None:
            extra.save_beside_checkpoint(restored.directory, extras, card)
        summary = {k: result.get(k) for k in ("max_dice", "f1_max", "auroc", "ap")}
        shown = json.dumps(files.to_json(summary))
        print(f"evaluate: {len(maps)} slices, {shown} -> {out_dir}", flush=True)
    return result
