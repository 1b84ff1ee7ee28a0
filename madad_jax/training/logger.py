"""Training logs: TensorBoard scalars in `DIR/tb/` and a tqdm progress line."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax


class Logger:
    """TensorBoard scalars in `DIR/tb/` plus a tqdm progress line (process 0 only)."""

    def __init__(self, workdir: str, start: int, total: int, batch_size: int,
                 name: str = "train"):
        self.name = name
        self.active = jax.process_index() == 0
        self.batch_size = batch_size
        self.writer = None
        self.bar = None
        if not self.active:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self.writer = SummaryWriter(os.path.join(workdir, "tb"))
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                        file=sys.stderr, mininterval=1.0, smoothing=0.1, desc=name)
        self._last_time, self._last_step = time.perf_counter(), start

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def scalars(self, step: int, values: dict[str, float], prefix: str | None = None) -> None:
        if not self.active:
            return
        prefix = prefix or self.name
        now = time.perf_counter()
        if prefix == self.name and step > self._last_step:
            values = dict(values, slices_per_s=(step - self._last_step) * self.batch_size
                          / max(now - self._last_time, 1e-9))
            self._last_time, self._last_step = now, step
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()
        if "loss" in values:
            self.bar.set_postfix_str(f"loss {values['loss']:.4g}", refresh=False)
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        self.bar.write(f"[{prefix}] step {step}: {shown}", file=sys.stderr)

    def image(self, step: int, tag: str, image: Any) -> None:
        """One (H,W) grey image in [0, 1] under `tag`."""
        if self.active:
            self.writer.add_image(tag, image, step, dataformats="HW")
            self.writer.flush()

    def status(self, text: str) -> None:
        """`text` on the progress line itself (no line of its own), until the next loss."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def message(self, text: str) -> None:
        if self.active:
            (self.bar.write if self.bar is not None else print)(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
