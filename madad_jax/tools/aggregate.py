"""Merge the `metrics.json` of several runs (seeds, folds) into mean ± std and intervals.

    python -m madad_jax.aggregate RUN_DIR [RUN_DIR ...] [--out DIR]

Each RUN_DIR is a workdir (its `evaluate/metrics.json` is read) or a `metrics.json` itself.
Every numeric figure that all runs hold is merged (settings, timings, candidate tables and
the per-run bootstrap intervals are left out): its mean, sample std (ddof 1), n and the 95 %
t-interval of the mean across runs. `DIR/aggregate.json` and `DIR/aggregate.md` (a Markdown
table) are written atomically; DIR defaults to `./aggregate`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from madad_jax.core import cli, files

SKIP = ("selection", "intervals", "settings", "bins", "calibration", "candidates", "grid",
        "seconds", "checkpoint_step", "n_slices", "image_size", "ddim_steps", "eta", "step",
        "num_units", "healthy_voxels", "n_resamples", "n_subjects")


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of `obj` as {"a.b.c": value}, without the `SKIP` keys."""
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if k in SKIP:
                continue
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if math.isfinite(obj):
            out[prefix[:-1]] = float(obj)
    return out


def read(run: str) -> dict[str, Any]:
    """The metrics of `run` (a workdir or a metrics.json); ValueError naming the file."""
    path = run if os.path.isfile(run) else os.path.join(run, "evaluate", "metrics.json")
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no metrics.json (run mode=evaluate first)") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable metrics.json ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: metrics.json does not hold an object")
    return obj


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{figure: {mean, std, n, low, high, values}} over the figures every run holds."""
    flat = [flatten(r) for r in runs]
    keys = [k for k in flat[0] if all(k in f for f in flat[1:])]
    out = {}
    for k in keys:
        v = np.asarray([f[k] for f in flat], np.float64)
        n = len(v)
        mean = float(v.mean())
        std = float(v.std(ddof=1)) if n > 1 else float("nan")
        if n > 1:
            half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
            low, high = mean - half, mean + half
        else:
            low = high = float("nan")
        out[k] = {"mean": mean, "std": std, "n": n, "low": low, "high": high,
                  "values": v.tolist()}
    return out


def markdown(table: Mapping[str, Mapping[str, Any]], names: list[str]) -> str:
    """The merged figures as a Markdown table."""
    def f(x: float) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"

    lines = [f"Runs: {', '.join(names)}", "",
             "| figure | mean ± std | 95 % CI of the mean | n |", "|---|---|---|---|"]
    for k, r in table.items():
        lines.append(f"| {k} | {f(r['mean'])} ± {f(r['std'])} | [{f(r['low'])}, "
                     f"{f(r['high'])}] | {r['n']} |")
    return "\n".join(lines) + "\n"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = cli.OneLineParser(prog="python -m madad_jax.aggregate", description=__doc__)
    p.add_argument("runs", nargs="+", help="workdirs or metrics.json files")
    p.add_argument("--out", default="aggregate", help="output folder (default ./aggregate)")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def _body(args: argparse.Namespace) -> list[str]:
    runs = [read(r) for r in args.runs]
    table = aggregate(runs)
    if not table:
        raise ValueError("the runs share no numeric figure")
    os.makedirs(args.out, exist_ok=True)
    doc = {"runs": [os.path.abspath(r) for r in args.runs], "figures": table}
    j = files.write_json_atomic(os.path.join(args.out, "aggregate.json"), files.to_json(doc),
                                indent=2, sort_keys=False)
    m = files.atomic_write(os.path.join(args.out, "aggregate.md"), markdown(table, args.runs))
    return [f"aggregate: {len(runs)} runs, {len(table)} figures -> {j}, {m}"]


def main(argv: list[str] | None = None) -> int:
    """The command; exit code 0, 1 (bad input) or 2 (bad command line)."""
    return cli.run_command("aggregate", _parse, _body, argv)
