"""Measurement for the benchmarks: timing of blocked calls, memory, FLOP rates, environment."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from madad_jax.tools import flops as flops_lib


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def time_calls(fn: Callable[[], Any], warmup: int, reps: int) -> dict[str, Any]:
    """Wall and process-CPU seconds of `reps` calls of `fn` after `warmup` calls."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        _block(fn())
        if i == 0:
            first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(max(reps, 1)):
        c0, t0 = time.process_time(), time.perf_counter()
        _block(fn())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    med = statistics.median(walls)
    return dict(
        median=med, min=min(walls), max=max(walls),
        spread=(max(walls) - min(walls)) / med if med > 0 else 0.0,
        all=[round(w, 6) for w in walls], cpu_median=statistics.median(cpus), first=first,
    )


def _mb(n: float | int | None) -> float | None:
    return None if n is None else round(float(n) / 2**20, 3)


def memory_fields(compiled: Any = None) -> dict[str, Any]:
    """Host peak RSS, device memory counters, and the executable's own buffer sizes."""
    out: dict[str, Any] = {
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        "peak_rss_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                           * (1 if sys.platform == "darwin" else 1024)),
    }
    stats = None
    with contextlib.suppress(Exception):
        stats = jax.local_devices()[0].memory_stats()
    if stats:
        out["device_peak_mb"] = _mb(stats.get("peak_bytes_in_use"))
        out["device_in_use_mb"] = _mb(stats.get("bytes_in_use"))
        out["device_limit_mb"] = _mb(stats.get("bytes_limit"))
    else:
        out["device_peak_mb"] = None
    if compiled is not None:
        with contextlib.suppress(Exception):
            m = compiled.memory_analysis()
            out.update(temp_mb=_mb(m.temp_size_in_bytes), argument_mb=_mb(m.argument_size_in_bytes),
                       output_mb=_mb(m.output_size_in_bytes), alias_mb=_mb(m.alias_size_in_bytes))
    return out


# The vector extensions a figure records: XLA's CPU kernels and oneDNN pick their code by
# these, so figures of two CPUs are only comparable with them in view.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "amx_tile", "asimd", "sve")


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The host CPU: model name, family / model numbers, and its vector extensions."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return dict(cpu_model=fields.get("model name") or platform.processor() or None,
                cpu_family=fields.get("cpu family"), cpu_model_number=fields.get("model"),
                cpu_vector=[f for f in VECTOR_FLAGS if f in flags])


def environment() -> dict[str, Any]:
    dev = jax.local_devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(backend=jax.default_backend(), device_kind=dev.device_kind,
                jax=jax.__version__, host_cpus=os.cpu_count(), load_avg_1m=load,
                machine=platform.machine(), **cpu_info(),
                compile_cache=jax.config.jax_compilation_cache_dir,
                xla_flags=os.environ.get("XLA_FLAGS", ""))


def rate_fields(seconds: float, flops: float | None, flops_xla: float | None,
                dtype: str) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU against the device's peak for `dtype` (None if unknown)."""
    out: dict[str, Any] = dict(flops=flops, flops_xla=flops_xla)
    peak = flops_lib.peak_flops(jax.local_devices()[0].device_kind, dtype)
    out["peak_tflops"] = None if peak is None else peak / 1e12
    for key, f in (("", flops), ("_xla", flops_xla)):
        achieved = f / seconds if f and seconds > 0 else None
        out[f"tflops_per_s{key}"] = None if achieved is None else achieved / 1e12
        out[f"gflops_per_s{key}"] = None if achieved is None else achieved / 1e9
        out[f"mfu{key}"] = None if achieved is None or peak is None else achieved / peak
    return out


def param_count(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def lower_compile(jitted: Any, *args: Any) -> tuple[Any, float, float]:
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1
