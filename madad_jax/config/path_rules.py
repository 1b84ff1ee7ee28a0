"""The file-system rules of `validate`: inputs that must exist, outputs that must be
writable directories (local paths only; a remote path is checked where it is opened)."""

from __future__ import annotations

import os

from madad_jax.config.checks import (
    Checker,
    ConfigError,
    is_local,
    path_exists,
    scans_in,
    writable_dir,
)


def check_paths(c: Checker, mode: str, workdir: str | None, *, training: bool,
                evaluating: bool) -> None:
    """Inputs that must exist and outputs that must be writable directories (local paths)."""
    def must_exist(key: str, what: str = "does not exist", isfile: bool = False) -> None:
        v = c(key)
        if not v or not is_local(v):
            return
        if isfile and not os.path.isfile(v):
            c.fail(key, "is not a file" if os.path.exists(v) else "file not found")
        if not path_exists(v):
            c.fail(key, what)

    if workdir and is_local(workdir):
        why = writable_dir(workdir)
        if why:
            raise ConfigError("workdir", workdir, why, prefix="--")
    cache = c("compile_cache").strip()
    if cache not in ("", "auto") and is_local(cache):
        why = writable_dir(os.path.expanduser(cache))
        if why:
            c.fail("compile_cache", why)
    kind = c("data.kind")
    if training:
        must_exist("vae_train.checkpoint", "no such checkpoint")
        if not c("vae_train.enabled"):
            must_exist("vae_train.pretrained", "no such checkpoint")
        must_exist("data.latent_cache", "no such latent cache")
        if kind == "arrayrecord":
            if not c("data.train_path"):
                c.fail("data.train_path", "is required to train with data.kind=arrayrecord "
                                          "(a shard set from python -m madad_jax.data.convert)")
            must_exist("data.train_path", "no such shard set")
            must_exist("data.val_path", "no such shard set")
    if evaluating and kind == "arrayrecord":
        if not c("data.test_path"):
            c.fail("data.test_path", "is required to evaluate with data.kind=arrayrecord")
        must_exist("data.test_path", "no such shard set")
        must_exist("data.test_healthy_path", "no such shard set")
    if kind == "png" and mode != "predict":
        root = c("data.png_root")
        if not root:
            c.fail("data.png_root", "is required with data.kind=png")
        if is_local(root) and not os.path.isdir(root):
            c.fail("data.png_root", "is not a directory" if os.path.exists(root)
                   else "directory not found")
    if mode in ("evaluate", "predict"):
        must_exist("checkpoint", "no such checkpoint")
    if mode == "predict":
        if not c("predict.input"):
            c.fail("predict.input", "predict mode needs a scan (predict.input=SCAN.nii.gz)")
        spec = c("predict.input")
        many = is_local(spec) and (os.path.isdir(spec) or any(ch in spec for ch in "*?["))
        for key in ("predict.input", "predict.brainmask", "predict.segmentation")[many:]:
            must_exist(key, isfile=True)
        if many and not scans_in(spec):
            c.fail("predict.input", "names no NIfTI scan (a file, a folder or a glob)")
        out = c("predict.output")
        if out and is_local(out):
            why = writable_dir(out)
            if why:
                c.fail("predict.output", why)
