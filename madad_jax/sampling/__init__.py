"""Sampling: a checkpoint's models run as one jitted mask-guided DDIM pass per batch."""
