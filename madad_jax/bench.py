"""`python -m madad_jax.bench`: the public command (see `madad_jax.tools.bench`)."""

import sys

from madad_jax.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
