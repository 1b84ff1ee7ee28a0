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


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def differences(config, arch: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """`(key, stored, asked)` for each architecture key where a checkpoint's `arch` and
    `config` disagree (keys only one of them has are not compared)."""
    asked, stored = _flat(arch_from_config(config)), _flat(to_json(arch))
    name = stored.get("model.name", asked.get("model.name"))
    families = {"model.unet", "model.dit"} - {f"model.{name}"}  # the other model's keys
    keys = [k for k in stored if k in asked and stored[k] != asked[k]
            and ".".join(k.split(".")[:2]) not in families]
    first = ("image_size", "model.name", "latent_scale", "latent_whitening")
    keys.sort(key=lambda k: (first.index(k) if k in first else len(first), k))
    return [(k, stored[k], asked[k]) for k in keys]


def mismatch_line(config, arch: dict[str, Any], where: str, limit: int = 4) -> str | None:
    """One line saying that the checkpoint at `where` is used over the config's differing
    architecture keys, and why; None when they agree."""
    diff = differences(config, arch)
    if not diff:
        return None
    return (f"{holds(where, diff, limit)}; the checkpoint's architecture is used, "
            "since its parameters fix the shapes")


def holds(where: str, diff: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    """`"<where> holds a model with key=stored (config: asked), ..."` for `differences`."""
    shown = ", ".join(f"{k}={s!r} (config: {a!r})" for k, s, a in diff[:limit])
    more = f" and {len(diff) - limit} more" if len(diff) > limit else ""
    return f"{where} holds a model with {shown}{more}"
