"""`python -m madad_jax.aggregate`: the public command (see `madad_jax.tools.aggregate`)."""

import sys

from madad_jax.tools.aggregate import main

if __name__ == "__main__":
    sys.exit(main())
