"""Resuming into a checkpoint directory that holds another model, said before any work.

A training run resumes from the newest step of its checkpoint directory. When that step's
`arch` item (`models.arch`) differs from the config, `check` either refuses in one line (the
saved parameters have other shapes than the config's model: no restore could succeed) or
prints one `warning:` line naming the keys and which value the resumed run uses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax

from madad_jax.core import checkpoint as ckpt
from madad_jax.core import hosts
from madad_jax.core.errors import InputError
from madad_jax.models.arch import apply_arch, differences, holds

Diff = list[tuple[str, Any, Any]]


def _with(config, arch: dict[str, Any], keys: tuple[str, ...]):
    """A copy of `config` with the stored `arch` values of the top-level `keys`."""
    cfg = config.copy_and_resolve_references()
    apply_arch(cfg, {k: v for k, v in arch.items() if k in keys})
    return cfg


def _shapes(init: Callable[[Any, jax.Array], Any], config) -> Any:
    """The parameter shapes `init(config, key)` makes, without computing any."""
    abstract = jax.eval_shape(lambda: init(config, jax.random.PRNGKey(0)))
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), abstract)


def _flag(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "(" + ",".join(_flag(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _refusal(where: str, diff: Diff, what: str) -> InputError:
    flags = " ".join(f"--config.{k}={_flag(s)}" for k, s, _ in diff)
    return InputError(
        f"{holds(where, diff)}: its saved {what} parameters cannot be restored into the "
        f"config's model; train in a new --workdir, or resume with the checkpoint's keys "
        f"({flags})")


def _warn(where: str, diff: Diff, kept: tuple[str, ...]) -> None:
    """One warning line: the stored values of the `kept` keys are used, the config's others."""
    theirs = [k for k, _, _ in diff if k.split(".")[0] in kept]
    used = "the config's values" if not theirs else (
        f"the checkpoint's {', '.join(theirs)} and the config's other values" if len(theirs)
        < len(diff) else "the checkpoint's values")
    if hosts.is_main():
        print(f"warning: {holds(where, diff)}; resuming with {used}", file=sys.stderr,
              flush=True)


def check(config, ckpt_dir: str, model: str) -> None:
    """Before a run resumes from `ckpt_dir`: refuse (InputError) when its newest step holds
    `model` ("denoiser" or "vae") parameters of other shapes than `config` builds; warn
    about the other differing architecture keys. Nothing to resume: nothing to say."""
    from madad_jax.training.denoiser import init_denoiser_params, init_vae_params

    if ckpt.latest_step(ckpt_dir) is None:
        return
    stored = ckpt.load_arch(ckpt_dir)
    diff = differences(config, stored)
    if model == "vae":
        diff = [d for d in diff if d[0].split(".")[0] in ("vae", "image_size")]
        init, base, kept = init_vae_params, config.copy_and_resolve_references(), ()
    else:  # the plan adopts the stored autoencoder and a normalization derived from data
        derived = {"latent_scale": config.latent_scale_from_data,
                   "latent_whitening": config.latent_whiten_from_data}
        diff = [d for d in diff if not derived.get(d[0].split(".")[0])]
        init, base, kept = init_denoiser_params, _with(config, stored, ("vae",)), ("vae",)
    if not diff:
        return
    blocking = _blocking(init, base, stored, [d for d in diff if d[0].split(".")[0] not in
                                              kept + ("latent_scale", "latent_whitening")])
    if blocking:
        raise _refusal(ckpt_dir, blocking, "autoencoder" if model == "vae" else "denoiser")
    _warn(ckpt_dir, diff, kept)


def _blocking(init: Callable[[Any, jax.Array], Any], base, stored: dict[str, Any],
              candidates: Diff) -> Diff:
    """The `candidates` whose stored value alone gives other parameter shapes than `base`
    (all of them when only together they do); [] when the stored ones restore into it."""
    if not candidates:
        return []
    want = _shapes(init, base)
    if want == _shapes(init, _with(base, stored, ("image_size", "vae", "model"))):
        return []
    alone = [d for d in candidates if _shapes(init, _with(base, _nested(d[0], d[1]),
                                                          (d[0].split(".")[0],))) != want]
    return alone or candidates


def _nested(key: str, value: Any) -> dict[str, Any]:
    """`"a.b.c", v` as `{"a": {"b": {"c": v}}}`."""
    *path, leaf = key.split(".")
    out: dict[str, Any] = {leaf: value}
    for p in reversed(path):
        out = {p: out}
    return out
