"""The `ablations` protocol (`evaluate.ablations` switches it): `selection.ABLATIONS` on the
test slices, each with its free settings chosen on the val split when there is one, and the
model's max Dice against the baseline and each ablation."""

from __future__ import annotations

import dataclasses
from typing import Any

from madad_jax.evaluation import selection
from madad_jax.evaluation.protocols.context import Context


def _ablations(ctx: Context) -> dict[str, Any]:
    config, val = ctx.config, ctx.val
    test_sampler = selection.Sampler(config, ctx.models, ctx.params, ctx.test["images"],
                                     share=ctx.val_sampler)
    s = config.sample
    fixed = selection.Setting(int(s.ddim_steps), float(s.flag_threshold), float(s.eta),
                              str(s.map_source), float(s.sigma))
    if val is not None:
        settings = selection.choose_ablations(ctx.val_sampler, val["segmentations"],
                                              config.evaluate.select, ctx.chosen or fixed)
    else:  # no val split: every free setting is the config's
        settings = {name: (grid[0] if name == "reference_sampling" else dataclasses.replace(
            grid[0], sigma=fixed.sigma), float("nan")) for name, grid in
            selection.ablation_grids(config.evaluate.select, fixed).items()}
        settings["mask_map"] = (dataclasses.replace(fixed, map_source="mask"), float("nan"))
    return selection.score_ablations(test_sampler, ctx.segs, settings)


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


def run(ctx: Context) -> None:
    """Adds `ablations` and `comparisons` to `ctx.result`."""
    if ctx.segs is None or not ctx.config.evaluate.ablations:
        return
    ctx.result["ablations"] = _ablations(ctx)
    ctx.result["comparisons"] = comparisons(ctx.result)
