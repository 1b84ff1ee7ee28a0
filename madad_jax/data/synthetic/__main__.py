"""`python -m madad_jax.data.synthetic`: write the demo data set (see `writer.main`)."""

import sys

from madad_jax.data.synthetic.writer import main

sys.exit(main())
