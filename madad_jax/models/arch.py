"""The architecture a checkpoint belongs to: the config keys that fix its parameter shapes.

Every checkpoint stores them as its `arch` item (JSON); loading one applies them back onto the
run's config, so the models are rebuilt with the shapes the parameters have.
"""

from __future__ import annotations

from typing import Any

from madad_jax.core.files import to_json

ARCH_KEYS = ("image_size", "latent_scale", "latent_whitening", "vae", "model")


def arch_from_config(config) -> dict[str, Any]:
    """The part of a config that fixes the parameter shapes, as plain JSON."""
    out = {}
    for k in ARCH_KEYS:
        v = config.get(k)
        if v is None:
            continue
        out[k] = v.to_dict() if hasattr(v, "to_dict") else v
    return to_json(out)


def apply_arch(config, arch: dict[str, Any]) -> None:
    """Overwrite `config`'s architecture keys in place with those stored in a checkpoint."""
    with config.unlocked():
        for k in ARCH_KEYS:
            if k not in arch:
                continue
            if isinstance(arch[k], dict) and k in config:
                config[k].update(tuplify(arch[k]))
            else:
                config[k] = arch[k]


def tuplify(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: tuplify(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(tuplify(v) for v in x)
    return x
