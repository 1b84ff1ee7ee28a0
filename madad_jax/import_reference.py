"""`python -m madad_jax.import_reference`: the public command (see `madad_jax.interop`)."""

import sys

from madad_jax.interop.import_reference import main

if __name__ == "__main__":
    sys.exit(main())
