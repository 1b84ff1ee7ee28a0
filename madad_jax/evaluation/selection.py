"""Choosing the sampling settings on a lesioned validation split, and the ablations.

`best` scores every combination of `evaluate.select`'s grids (flag threshold, DDIM steps,
eta, smoothing sigma, map source) on the val slices by max Dice and returns the best; the
test split is then scored once with it. One compiled sampler serves each number of steps
(`anomaly.make_sweep_fn`: threshold and eta are inputs), the encode and the reconstruction
are shared by every setting, and every map source and sigma is computed from the same
sampler outputs, so a grid of a few hundred settings costs a few dozen sampler passes over
the val slices.

The ablations (`ABLATIONS`), scored on the same test slices with the same protocol, each
with its own free settings chosen on the same val slices:
- `autoencoder`: |x - D(E(x))|, clipped, scaled and smoothed as the image map is;
- `unmasked`: the same denoiser and steps with every latent position flagged (threshold
  above 1), i.e. plain latent-diffusion reconstruction; its free settings are steps, eta,
  sigma and map source (image | input | latent);
- `reference_sampling`: the reference's rule, P(clean) < 0.5, S = 10, eta 0.5, image map;
  sigma is free;
- `mask_map`: the mask head's averaged map (map source `mask`); threshold, steps, eta and
  sigma are free.
Ties are broken toward the earlier grid entry (the order of the config's tuples).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from madad_jax.evaluation import metrics
from madad_jax.sampling import anomaly, inferencer
from madad_jax.sampling.loading import Models

ABLATIONS = ("autoencoder", "unmasked", "reference_sampling", "mask_map")
FLAG_ALL = 2.0  # a flag threshold above any P(clean): every position takes the update
RAW_KEYS = ("sample", "latent", "mean_anomalous")  # per setting; the rest per image set


@dataclasses.dataclass(frozen=True)
class Setting:
    """One sampler setting: what `config.sample` needs beyond the fixed keys."""

    ddim_steps: int
    flag_threshold: float
    eta: float
    map_source: str
    sigma: float

    def apply(self, config):
        """A copy of `config` whose `sample` holds this setting."""
        out = config.copy_and_resolve_references()
        out.sample.update(dataclasses.asdict(self))
        return out


class Sampler:
    """Sampler outputs of one checkpoint on one set of images, memoized per (S, thr, eta).

    The images are encoded and reconstructed once; each (S, thr, eta) then costs S denoiser
    calls and one decode. `share` (another Sampler of the same config and models) lends its
    compiled programs, so the test split does not compile what the val split did.
    """

    def __init__(self, config, models: Models, params: Any, images: np.ndarray,
                 share: Sampler | None = None):
        self.config, self.models, self.params = config, models, params
        self.images = np.asarray(images, np.float32)
        self.batch = int(config.evaluate.batch_size or config.sample.batch_size)
        self._fns: dict[Any, Any] = share._fns if share is not None else {}
        self._raw: dict[tuple[int, float, float], dict[str, np.ndarray]] = {}
        self._enc: dict[str, np.ndarray] | None = None
        self.key = jax.random.key(int(config.sample.seed))

    def _batches(self, fn, inputs: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
        bs = max(1, min(self.batch, len(inputs)))
        return inferencer.run_batches(fn, self.params, inputs, bs, self.key, keys=tuple(keys))

    def encoded(self) -> dict[str, np.ndarray]:
        """The normalized latents of the images and their decodes, D(E(x))."""
        if self._enc is None:
            if "encode" not in self._fns:
                self._fns["encode"] = anomaly.make_encode_fn(self.models.vae, self.config)
            enc = self._fns["encode"]
            self._enc = self._batches(lambda p, x, key: enc(p, x), self.images,
                                      ("encoded", "reconstruction"))
        return self._enc

    def raw(self, steps: int, thr: float, eta: float) -> dict[str, np.ndarray]:
        k = (int(steps), float(thr), float(eta))
        if k not in self._raw:
            if k[0] not in self._fns:
                self._fns[k[0]] = anomaly.make_sweep_fn(self.models.vae, self.models.denoiser,
                                                        self.config, k[0])
            fn = self._fns[k[0]]

            def infer(params, z, key, fn=fn, thr=k[1], eta=k[2]):
                return fn(params, z, key, thr, eta)

            enc = self.encoded()
            out = self._batches(infer, enc["encoded"], RAW_KEYS)
            self._raw[k] = dict(out, encoded=enc["encoded"],
                                reconstruction=enc["reconstruction"])
        return self._raw[k]

    def maps(self, s: Setting) -> np.ndarray:
        """(N,H,W) float32 maps of setting `s` (equal to the evaluate path's, up to float
        rounding: the same functions, jitted apart from the sampler)."""
        r = self.raw(s.ddim_steps, s.flag_threshold, s.eta)
        fn = _map_fn(s.map_source, *_map_settings(self.config.sample, s.sigma))
        return _to_np(fn(r["sample"], r["reconstruction"], r["latent"], r["encoded"],
                         r["mean_anomalous"], self.images))

    def autoencoder_maps(self, sigma: float) -> np.ndarray:
        """|x - D(E(x))| through the image map's clip, scale and smoothing."""
        enc = self.encoded()
        z, rec = enc["encoded"], enc["reconstruction"]
        fn = _map_fn("image", *_map_settings(self.config.sample, sigma))
        return _to_np(fn(self.images, rec, z, z, np.zeros(z.shape[:3], np.float32),
                         self.images))


@functools.lru_cache(maxsize=64)
def _map_fn(source: str, clip: float, scale: float, latent_clip: float, sigma: float):
    """`anomaly.anomaly_map` of one source and smoothing, jitted (a sweep calls it hundreds
    of times; op by op it would cost more than the sampler)."""
    scfg = types.SimpleNamespace(clip=clip, scale=scale, latent_clip=latent_clip, sigma=sigma)

    @jax.jit
    def fn(sample, reconstruction, latent, encoded, mean_anomalous, images):
        return anomaly.anomaly_map(source, scfg, sample, reconstruction, latent, encoded,
                                   mean_anomalous, images)

    return fn


def _map_settings(sample_cfg, sigma: float) -> tuple[float, float, float, float]:
    return (float(sample_cfg.clip), float(sample_cfg.scale), float(sample_cfg.latent_clip),
            float(sigma))


def _to_np(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def grid(select) -> list[Setting]:
    """Every setting of `evaluate.select`'s grids, in the config's order."""
    return [Setting(int(n), float(t), float(e), str(m), float(s))
            for n, t, e, m, s in itertools.product(
                select.ddim_steps, select.flag_thresholds, select.etas, select.map_sources,
                select.sigmas)]


def best(sampler: Sampler, settings: Iterable[Setting], segs: np.ndarray,
         ) -> tuple[Setting, float, list[dict[str, Any]]]:
    """The setting of highest max Dice on `sampler`'s images, its score and the whole table."""
    table = []
    for s in settings:
        table.append(dict(dataclasses.asdict(s), max_dice=metrics.max_dice(sampler.maps(s), segs)))
    i = int(np.argmax([row["max_dice"] for row in table]))  # first of the ties
    row = table[i]
    return Setting(**{k: row[k] for k in Setting.__dataclass_fields__}), row["max_dice"], table


def ablation_grids(select, chosen: Setting) -> dict[str, list[Setting]]:
    """Each ablation's candidate settings (see the module docstring)."""
    sigmas = [float(s) for s in select.sigmas]
    steps = [int(n) for n in select.ddim_steps]
    etas = [float(e) for e in select.etas]
    return {
        "unmasked": [Setting(n, FLAG_ALL, e, m, s) for n, e, m, s in itertools.product(
            steps, etas, ("image", "input", "latent"), sigmas)],
        "reference_sampling": [Setting(10, 0.5, 0.5, "image", s) for s in sigmas],
        "mask_map": [Setting(n, float(t), e, "mask", s) for n, t, e, s in itertools.product(
            steps, select.flag_thresholds, etas, sigmas)],
        "autoencoder": [Setting(chosen.ddim_steps, 0.0, 0.0, "autoencoder", s) for s in sigmas],
    }


def _maps_of(sampler: Sampler, s: Setting) -> np.ndarray:
    return sampler.autoencoder_maps(s.sigma) if s.map_source == "autoencoder" else sampler.maps(s)


def choose_ablations(val: Sampler, val_segs: np.ndarray, select, chosen: Setting,
                     names: Sequence[str] = ABLATIONS) -> dict[str, tuple[Setting, float]]:
    """Each ablation's setting of best val max Dice, with that score."""
    grids = ablation_grids(select, chosen)
    out = {}
    for name in names:
        scores = [metrics.max_dice(_maps_of(val, s), val_segs) for s in grids[name]]
        i = int(np.argmax(scores))
        out[name] = (grids[name][i], float(scores[i]))
    return out


def score_ablations(test: Sampler, test_segs: np.ndarray,
                    settings: dict[str, tuple[Setting, float]]) -> dict[str, dict[str, Any]]:
    """The reference's four numbers of each ablation on the test slices, with its setting."""
    out = {}
    for name, (s, val_score) in settings.items():
        res = metrics.slice_metrics(_maps_of(test, s), test_segs)
        setting = dataclasses.asdict(s)
        if name == "autoencoder":
            setting = dict(map_source="autoencoder", sigma=s.sigma)
        out[name] = dict(res, settings=setting, val_max_dice=val_score)
    return out
