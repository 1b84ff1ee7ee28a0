"""The benchmark harness at tiny sizes (no timing asserts) and the FLOP counter."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import pytest

from madad_jax.tools import bench, flops

TRAIN_KEYS = {"figure", "model", "batch", "image_size", "latent_cache", "dtype", "donate",
              "step_s", "step_s_min", "step_s_max", "step_s_spread", "step_cpu_s",
              "slices_per_s", "lower_s", "compile_s", "flops", "flops_xla", "mfu",
              "peak_rss_mb", "device_peak_mb", "temp_mb", "backend", "device_kind",
              "load_avg_1m", "cpu_model", "cpu_vector", "gflops_per_s", "gflops_per_s_xla",
              "compile_cache"}
INFER_KEYS = {"figure", "model", "batch", "ddim_steps", "impl", "batch_s", "slice_s",
              "slices_per_s", "volume_s_projected", "lower_s", "compile_s", "flops",
              "flops_xla", "mfu", "peak_rss_mb"}
DATA_KEYS = {"figure", "slices_per_s", "batch_size", "augment", "num_workers", "image_size"}


def _finite_positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_smoke_all_figures(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    rc = bench.main(["--tiny", "--what=train,infer,data", "--model=DiT_S", "--batch=4",
                     "--latent-cache=off", "--ddim-steps=2", "--reps=1", "--warmup=1",
                     "--flag-threshold=1.0", f"--out={out}"])
    assert rc == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert printed == written
    by = {}
    for fig in printed:
        assert "error" not in fig, fig
        by.setdefault(fig["figure"], []).append(fig)
    assert sorted(by) == ["data", "infer", "memory", "train"]

    (tr,) = by["train"]
    assert TRAIN_KEYS <= set(tr)
    assert (tr["model"], tr["batch"], tr["latent_cache"], tr["tiny"]) == ("DiT_S", 4, False, True)
    for k in ("step_s", "slices_per_s", "compile_s", "flops", "flops_xla", "peak_rss_mb"):
        assert _finite_positive(tr[k]), (k, tr[k])
    assert tr["slices_per_s"] == pytest.approx(4 / tr["step_s"])
    assert tr["step_s_min"] <= tr["step_s"] <= tr["step_s_max"]
    # The jaxpr count (matmuls + convs) and XLA's (everything, no loops here) agree roughly.
    assert 0.5 < tr["flops"] / tr["flops_xla"] < 2.0

    (inf,) = by["infer"]
    assert INFER_KEYS <= set(inf)
    assert inf["ddim_steps"] == 2 and inf["impl"] == "fused"
    # Every position flagged (P(clean) < 1): the latent changes, so both decodes ran.
    assert (inf["flag_threshold"], inf["flagged_frac"], inf["decodes"]) == (1.0, 1.0, 2)
    assert inf["slice_s"] == pytest.approx(inf["batch_s"])  # batch 1
    assert inf["volume_s_projected"] == pytest.approx(155 * inf["batch_s"])

    assert len(by["data"]) == 2  # without and with augmentation
    assert tr["gflops_per_s"] == pytest.approx(tr["flops"] / tr["step_s"] / 1e9)
    assert tr["compile_cache"] is None  # every compile cold by default
    for d in by["data"]:
        assert DATA_KEYS <= set(d)
        assert _finite_positive(d["slices_per_s"])
    assert {d["augment"] for d in by["data"]} == {False, True}


def test_bad_flag_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--model=UNet_XXL"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "UNet_XXL" in err[0]


def test_jaxpr_flops_counts_dots_convs_and_scans():
    a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 11))
    assert flops.model_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b) == (
        2 * 3 * 5 * 7 * 11)

    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 16))

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    conv_flops = 2 * (2 * 8 * 8 * 16) * (3 * 3 * 3)
    assert flops.model_flops(conv, x, w) == conv_flops

    m = jnp.ones((4, 4))

    def scanned(m):
        return jax.lax.scan(lambda c, _: (c @ m, None), m, None, length=6)[0]

    assert flops.model_flops(scanned, m) == 6 * 2 * 4 * 4 * 4
    # XLA's cost analysis counts the loop body once; the jaxpr count does not.
    compiled = jax.jit(scanned).lower(m).compile()
    xla = flops.xla_flops(compiled)
    assert xla is None or xla < 6 * 2 * 4 * 4 * 4


def test_peak_table():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4e12)
    assert flops.peak_flops("NVIDIA H100 PCIe", "bfloat16") == pytest.approx(756e12)
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "float32") == pytest.approx(66.9e12)
    assert flops.peak_flops("cpu", "float32") is None


def test_attention_is_chosen_through_the_config():
    """--attention sets `config.model.attention`; "naive" and "blocked" give XLA's outputs."""
    from madad_jax.models import build_denoiser

    z, t = jnp.ones((1, 8, 8, 4)), jnp.array([3])
    outs = {}
    for name in ("xla", "naive", "blocked"):
        cfg = bench.model_config("DiT_S", 32, "float32", tiny=True, attention=name)
        assert cfg.model.attention == name
        model = build_denoiser(cfg)
        params = model.init(jax.random.PRNGKey(0), z, t)
        outs[name] = model.apply(params, z, t)[0]
    for name in ("naive", "blocked"):
        assert jnp.allclose(outs[name], outs["xla"], rtol=1e-5, atol=1e-5), name


def test_cpu_info(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                    "model\t\t: 1\nmodel name\t: AMD EPYC 7B13\n"
                    "flags\t\t: fpu sse avx2 fma\n\nprocessor\t: 1\nflags\t\t: avx512f\n")
    got = bench.harness.cpu_info(str(info))
    assert got == dict(cpu_model="AMD EPYC 7B13", cpu_family="25", cpu_model_number="1",
                       cpu_vector=["avx2", "fma"])  # the first processor's flags only
    assert bench.harness.cpu_info(str(tmp_path / "none"))["cpu_vector"] == []


def test_compile_cache_flag(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["--tiny", "--what=train", "--model=UNet_XS", "--batch=2", "--latent-cache=on",
            "--reps=1", "--warmup=1", f"--compile-cache={cache}"]
    before = jax.config.jax_compilation_cache_dir
    min_s = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny: fast compiles
    try:
        assert bench.main(args) == 0
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_s)
    fig = json.loads(capsys.readouterr().out.splitlines()[0])
    assert fig["compile_cache"] == str(cache) and "error" not in fig
    assert any(p.name.endswith("-cache") for p in cache.iterdir())
    assert jax.config.jax_compilation_cache_dir == before  # put back


def test_conv_figures_check_every_lowering_against_nhwc(capsys):
    rc = bench.main(["--tiny", "--what=conv", "--reps=1", "--warmup=0"])
    assert rc == 0
    figs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    conv = [f for f in figs if f["figure"] == "conv"]
    # The tiny VAE (ch 32, ch_mult 1, 2, at 32x32): two levels, four lowerings each.
    assert sorted({(f["size"], f["channels"]) for f in conv}) == [(16, 64), (32, 32)]
    assert sorted(f["impl"] for f in conv) == sorted(2 * ["nhwc", "nchw", "im2col", "shifted"])
    for f in conv:
        assert "error" not in f, f
        assert f["flops"] == 2 * f["size"] ** 2 * f["channels"] ** 2 * 9
        assert _finite_positive(f["conv_s"]) and _finite_positive(f["gflops_per_s"])
        # Same convolution in every lowering: only the summation order may differ.
        assert f["max_abs_diff"] <= 1e-5 + 1e-5 * f["ref_max_abs"], f
        assert f["ref_max_abs"] > 0.1


def test_conv_lowerings_differ_from_a_wrong_kernel():
    from madad_jax.tools.bench import convs

    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 5))
    want = convs._nhwc(x, w)
    for name in ("im2col", "shifted"):
        assert jnp.allclose(convs._IMPLS[name](x, w), want, atol=1e-4)
        # A kernel flipped in space is a different convolution: the check has teeth.
        assert not jnp.allclose(convs._IMPLS[name](x, w[::-1, ::-1]), want, atol=1e-2)
