"""Tiny configs and in-memory batches for the training tests (CPU-sized)."""

from __future__ import annotations

import numpy as np

from madad_jax.config import default_config


def tiny_config(image_size: int = 32, model: str = "unet"):
    """A few-thousand-parameter MAD-AD: 32x32 images, 16x16x4 latents."""
    c = default_config()
    c.mode = "train"
    c.image_size = image_size
    c.vae.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=image_size))
    c.model.name = model
    c.model.unet.update(dict(model_channels=32, channel_mult=(1, 2), num_heads=2,
                             num_res_blocks=1, attention_resolutions=(2,), dropout=0.1))
    c.model.dit.update(dict(hidden_size=32, depth=2, num_heads=2, patch_size=2))
    c.train.update(dict(num_steps=6, batch_size=8, lr=1e-3, warmup_steps=2,
                        log_every_steps=2, checkpoint_every_steps=3, keep_checkpoints=2))
    c.data.augment = False
    c.data.num_workers = 0
    return c


def make_slices(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Bright discs on a dark background inside a circular 'brain' mask, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    brain = (xx**2 + yy**2 < 0.8).astype(np.float32)
    images = np.empty((n, size, size, 1), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(-0.4, 0.4, 2)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(0.02, 0.1)).astype(np.float32)
        img = 0.3 * brain + 0.5 * disc * brain + 0.05 * rng.standard_normal((size, size))
        images[i, ..., 0] = np.where(brain > 0, img, 0.0) * 2 - 1
    return {"image": images, "brainmask": np.repeat(brain[None, ..., None], n, axis=0)}


class ArrayBatches:
    """Deterministic batches over in-memory arrays with a checkpointable position."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.pi, self.pc = process_index, process_count
        self.n = len(next(iter(data.values())))
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, k = divmod(self.position * self.batch_size, self.n)
        order = np.random.default_rng((self.seed, epoch)).permutation(self.n)
        idx = np.take(order, np.arange(k, k + self.batch_size), mode="wrap")
        local = self.batch_size // self.pc
        idx = idx[self.pi * local:(self.pi + 1) * local]
        self.position += 1
        return {key: v[idx] for key, v in self.data.items()}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
