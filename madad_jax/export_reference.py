"""`python -m madad_jax.export_reference`: the public command (see `madad_jax.interop`)."""

import sys

from madad_jax.interop.export_reference import main

if __name__ == "__main__":
    sys.exit(main())
