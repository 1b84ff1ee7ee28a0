"""Run infrastructure every stage may use: the device mesh, checkpoints and atomic files."""
