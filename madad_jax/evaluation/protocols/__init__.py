"""Evaluation protocols as plug-ins. Each module here has one entry point, `run(ctx)`: it
adds its figures to `ctx.result` (`context.Context`) and may register files for the evaluate
folder. `evaluate.protocols` names the ones to run; they run in `ORDER`, since a later one
may read what an earlier one wrote (`ablations` compares with `baseline`, `report` shows all).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# name -> module; the order they run in. config/validation.py's PROTOCOLS repeats the names.
MODULES = {
    "slice": "slices",  # the reference's slice protocol
    "volume": "volume",  # the per-volume protocol (Behrendt et al.)
    "baseline": "baseline",  # the intensity-threshold detector
    "selection": "chosen",  # what evaluate.select chose on val
    "mask_head": "mask_head",  # the mask head's lesion-cell AUROC on val
    "ablations": "ablations",  # selection.ABLATIONS and the comparisons
    "results": "results",  # calibration, detection, intervals, model card
    "report": "report",  # report.html
}
ORDER = tuple(MODULES)
# The scoring protocols that `evaluate.protocols` named before the plug-ins; a tuple of only
# these keeps its old meaning: those, plus every other plug-in.
SCORING = ("slice", "volume")


def resolve(names) -> tuple[str, ...]:
    """The plug-ins `evaluate.protocols` asks for, in `ORDER`."""
    names = set(names)
    if names <= set(SCORING):
        names |= set(ORDER) - set(SCORING)
    return tuple(n for n in ORDER if n in names)


def entry(name: str) -> Callable:
    """The `run(ctx)` of the plug-in `name`."""
    return importlib.import_module(f"{__name__}.{MODULES[name]}").run
