"""Tiny configs and in-memory batches for the training tests (CPU-sized)."""

from __future__ import annotations

import numpy as np
from tiny_train_config import get_config


def tiny_config(model: str = "unet"):
    """A small MAD-AD: 32x32 images, 16x16x4 latents (see tiny_train_config.py)."""
    return get_config(model)


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


def write_shards(data: dict[str, np.ndarray], path: str) -> str:
    """Write slices as one ArrayRecord shard with the project's record codec."""
    from madad_jax.data import records

    rows = ({"image": img[..., 0], "brainmask": (m[..., 0] > 0).astype(np.uint8),
             "name": f"slice_{i:04d}"}
            for i, (img, m) in enumerate(zip(data["image"], data["brainmask"], strict=True)))
    records.write_shard(path, rows)
    return path


def random_vae_params(config, seed: int = 1):
    """VAE parameters of the right shapes drawn with numpy (no XLA compile of the init).

    The training tests only need *some* frozen autoencoder: kernels ~ N(0, 1/fan_in),
    GroupNorm scales 1, biases 0.
    """
    import jax

    from madad_jax.training import denoiser as denoiser_task

    shapes = jax.eval_shape(lambda: denoiser_task.init_vae_params(config, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def one(path, leaf):
        name = str(path[-1].key)
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(one, shapes)


def save_vae(config, directory: str, seed: int = 1) -> str:
    """A random VAE saved as a params+arch checkpoint (what `vae_train.checkpoint` reads)."""
    from madad_jax.core import checkpoint
    from madad_jax.models.arch import arch_from_config

    params = random_vae_params(config, seed)
    checkpoint.save_params(directory, {"vae": params}, arch_from_config(config))
    return directory


def train_denoiser(config, workdir: str, batches, vae_params, val_batches=None, on_step=None):
    """The denoiser's task, settings and `fit`, as `training.run.train` calls them after its
    plan: train to `train.num_steps`, resuming from `workdir/checkpoints/`."""
    from madad_jax.core import mesh
    from madad_jax.models.arch import arch_from_config
    from madad_jax.training import denoiser
    from madad_jax.training.loop import config_json, fit

    task = denoiser.make_task(config, mesh.make_mesh(config), vae_params)
    return fit(task, workdir, batches, denoiser.loop_settings(config, workdir),
               arch=arch_from_config(config), config_json=config_json(config),
               val_batches=val_batches, on_step=on_step)
