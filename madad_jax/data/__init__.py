"""Data: reference PNG slices and NIfTI volumes -> ArrayRecord shards -> grain pipelines."""
