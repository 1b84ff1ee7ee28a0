"""Training batches in exact epochs, as the reference's `DataLoader(shuffle=True)` draws them.

Epoch e permutes all N slices with a permutation of (seed, e), the same on every process.
Global batch j of the epoch holds perm[j*B:(j+1)*B]; the last one is partial and is padded
to B with unaugmented copies of its first slice, weighted 0. Every batch carries a float32
`weight` (1 real, 0 padding), and process p of P takes rows [p*B/P, (p+1)*B/P) of each
padded global batch, so all processes take the same number of steps.

Like `pipeline`, this imports no JAX and its transforms never call it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import grain
import numpy as np

from madad_jax.core.errors import InputError

# Decorrelates the augmentation draws from the permutation, which share the seed.
_AUGMENT_STREAM = 1


def steps_in_epoch(num_slices: int, global_batch: int) -> int:
    """ceil(num_slices / global_batch): the batches of one epoch, the last one partial."""
    if num_slices <= 0 or global_batch <= 0:
        raise InputError(f"need slices and a batch size, got {num_slices} and {global_batch}")
    return math.ceil(num_slices / global_batch)


class ExactEpochBatches(grain.MapDataset):
    """Index k -> this process's rows of global batch k % S of epoch k // S (S steps/epoch).

    `source` is a random-access source of records, `decode` maps a record to a slice dict
    (DecodeTrain), and `augment` (an `Augment` transform, or None) is applied to real rows
    with a generator seeded by (seed, epoch, slice index). `num_epochs=None` never ends.
    """

    def __init__(
        self,
        source: Any,
        global_batch: int,
        *,
        decode: grain.transforms.Map,
        augment: grain.transforms.RandomMap | None = None,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__()
        if global_batch % process_count:
            raise InputError(f"batch {global_batch} is not divisible by {process_count} processes")
        if not 0 <= process_index < process_count:
            raise InputError(f"process_index {process_index} not in [0, {process_count})")
        self._source = source
        self._n = len(source)
        self._batch = int(global_batch)
        self._steps = steps_in_epoch(self._n, self._batch)
        self._decode, self._augment = decode, augment
        self._seed, self._shuffle = int(seed), bool(shuffle)
        self._epochs = num_epochs
        local = self._batch // process_count
        self._rows = range(process_index * local, (process_index + 1) * local)
        self._last_perm: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def __len__(self) -> int:
        return sys.maxsize if self._epochs is None else self._steps * int(self._epochs)

    def __str__(self) -> str:
        return (f"ExactEpochBatches(n={self._n}, batch={self._batch}, rows={self._rows.start}:"
                f"{self._rows.stop}, seed={self._seed}, epochs={self._epochs})")

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the slices in `epoch` (identity without shuffling)."""
        cached = self._last_perm  # one read: reader threads may replace it meanwhile
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if self._shuffle:
            perm = np.random.default_rng((self._seed, epoch)).permutation(self._n)
        else:
            perm = np.arange(self._n)
        self._last_perm = (epoch, perm)
        return perm

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range")
        epoch, step = divmod(int(index), self._steps)
        perm = self.permutation(epoch)
        start = step * self._batch
        rows, weights = [], []
        for r in self._rows:
            real = start + r < self._n
            slice_index = int(perm[start + r] if real else perm[start])
            row = self._decode.map(self._source[slice_index])
            if real and self._augment is not None:
                rng = np.random.default_rng((self._seed, _AUGMENT_STREAM, epoch, slice_index))
                row = self._augment.random_map(row, rng)
            rows.append(row)
            weights.append(1.0 if real else 0.0)
        batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
        batch["weight"] = np.asarray(weights, np.float32)
        return batch


def exact_epoch_dataset(
    source: Any,
    global_batch: int,
    *,
    decode: grain.transforms.Map,
    augment: grain.transforms.RandomMap | None,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """The checkpointable iterable of `ExactEpochBatches` (state: the next batch index)."""
    return ExactEpochBatches(
        source, global_batch, decode=decode, augment=augment, seed=seed, shuffle=shuffle,
        num_epochs=num_epochs, process_index=process_index, process_count=process_count,
    ).to_iter_dataset()

