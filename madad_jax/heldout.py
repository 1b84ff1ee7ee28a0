"""The held-out real-anatomy test of a trained run (`madad_jax.evaluation.heldout`):

    python -m madad_jax.heldout --config=configs/demo.py --workdir=runs/demo [--split=test]

Builds the four lesioned held-out volumes of `--split` (test, or val for checks), maps each
through `predict` with the run's checkpoint, and writes `DIR/heldout/<split>/heldout.json`
and `heldout.md`: each volume's best Dice inside the brain, the model's and a plain intensity
threshold's. Needs the `deepmriprep` package's templates (`pip install --no-deps
deepmriprep==0.3.0`); nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from madad_jax.data.errors import BadInputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py of the run.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (its checkpoints).")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "val"], "Which held-out brain.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the painted lesions.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and library logs.")


def _fail(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or not _WORKDIR.value:
        _fail("--config=configs/NAME.py and --workdir=DIR are required")
    if not _VERBOSE.value:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("absl").setLevel(logging.CRITICAL)
    from madad_jax.evaluation import heldout

    try:
        result = heldout.run(_CONFIG.value, _WORKDIR.value, _SPLIT.value, _SEED.value)
    except (BadInputError, OSError, ValueError) as err:
        if _VERBOSE.value:
            raise
        where = getattr(err, "filename", None)
        _fail(f"{where}: {err.strerror or err}" if isinstance(err, OSError) and where
              else str(err) or type(err).__name__)
    print(f"heldout {_SPLIT.value}: {json.dumps(result['summary'])}", flush=True)


if __name__ == "__main__":
    app.run(main)
