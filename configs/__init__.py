"""The run configurations (`--config=configs/NAME.py`) and their shared recipes."""
