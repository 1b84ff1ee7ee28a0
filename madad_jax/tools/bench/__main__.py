"""`python -m madad_jax.tools.bench`: the same as `python -m madad_jax.bench`."""

import sys

from madad_jax.tools.bench.cli import main

sys.exit(main())
