"""The noise schedule and its DDIM respacing.

Schedules are computed in float64 with numpy at trace time and enter the jitted code as
float32 constants, as the reference does (it builds its tables in float64 and casts each
gathered coefficient to float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def betas_for_alpha_bar(
    num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Betas discretizing a continuous alpha_bar(t), t in [0, 1], in float64."""
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return np.asarray(betas, dtype=np.float64)


def cosine_betas(num_steps: int) -> np.ndarray:
    """The "squaredcos_cap_v2" schedule of improved DDPM."""
    return betas_for_alpha_bar(
        num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    )


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def space_timesteps(num_steps: int, section_counts: str | Sequence[int]) -> set[int]:
    """The original steps kept by a respaced process.

    `section_counts` is either "ddimN" (the DDIM paper's fixed integer stride: the first
    stride k with len(range(0, T, k)) == N), or a list / comma-separated string of step counts
    per equal section of [0, T), each section strided evenly with rounding.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim") :])
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == want:
                    return set(range(0, num_steps, stride))
            raise ValueError(
                f"cannot take exactly {want} of {num_steps} steps with an integer stride"
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_steps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return set(steps)


def ddim_timesteps(num_steps: int, ddim_steps: int) -> set[int]:
    """The steps the reference keeps for `ddim_steps` sampling steps ("ddim{S}" respacing).

    The reference only accepts S reachable by an integer stride (for T=10: 1..5 via strides
    and 10). Any other S falls back to the evenly rounded single-section spacing, which
    keeps both ends of [0, T-1].
    """
    if not 1 <= ddim_steps <= num_steps:
        raise ValueError(f"ddim_steps must be in [1, {num_steps}], got {ddim_steps}")
    try:
        return space_timesteps(num_steps, f"ddim{ddim_steps}")
    except ValueError:
        return space_timesteps(num_steps, [ddim_steps])


def respace(
    base_alphas_cumprod: np.ndarray, use_timesteps: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """`(timestep_map, alphas_cumprod)` of the process restricted to `use_timesteps`.

    Like the reference's SpacedDiffusion: new betas 1 - ab_k / ab_prev_kept, then their
    cumulative product (float64).
    """
    last, new_betas, tmap = 1.0, [], []
    for i, ab in enumerate(base_alphas_cumprod):
        if i in use_timesteps:
            new_betas.append(1.0 - ab / last)
            last = ab
            tmap.append(i)
    return np.asarray(tmap, dtype=np.int32), alphas_cumprod(np.asarray(new_betas))


def ddim_schedule(num_steps: int, ddim_steps: int) -> dict[str, np.ndarray]:
    """Per respaced step i (0..S-1) the float64 tables the DDIM update needs."""
    base = alphas_cumprod(cosine_betas(num_steps))
    tmap, ab = respace(base, ddim_timesteps(num_steps, ddim_steps))
    ab_prev = np.append(1.0, ab[:-1])
    return dict(
        timestep_map=tmap,
        alphas_cumprod=ab,
        alphas_cumprod_prev=ab_prev,
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ab),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ab - 1.0),
    )
