"""FLOP counts for MFU: XLA's cost analysis, and a count of the matmuls and convs in a jaxpr.

XLA's `cost_analysis()` counts the body of a `while` loop once, whatever its trip count, so
it undercounts a `lax.scan` (the DiT's scanned layers, the sampler's DDIM loop). The jaxpr
count multiplies each `scan` body by its length. It counts only `dot_general` and
`conv_general_dilated` (2 FLOPs per multiply-add), the usual "model FLOPs" of MFU;
elementwise work, normalizations and softmax are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

# Dense peak FLOP/s per chip for MFU, keyed by a lower-case fragment of `device_kind`, most
# specific first: (bf16 tensor-core peak, fp32 peak). The fp32 peak is the plain (non
# tensor-core, non-TF32) float32 rate, because float32 compute runs its matmuls and convs
# at "highest" precision (see models.layers.resolve_precision). Vendor data sheets.
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("h100 pcie", 756e12, 51.2e12),
    ("h100", 989.4e12, 66.9e12),  # SXM5
    ("h200", 989.4e12, 66.9e12),
    ("gh200", 989.4e12, 66.9e12),
    ("a100", 312e12, 19.5e12),
    ("l4", 121e12, 30.3e12),
    ("tpu v6", 918e12, 918e12 / 6),  # fp32 on TPU: bf16 passes; "highest" = 6 passes
    ("tpu v5p", 459e12, 459e12 / 6),
    ("tpu v5 lite", 197e12, 197e12 / 6),
    ("tpu v5e", 197e12, 197e12 / 6),
    ("tpu v4", 275e12, 275e12 / 6),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for `dtype` ("bfloat16" | "float32"), None if unknown."""
    kind = device_kind.lower()
    for fragment, bf16, fp32 in PEAK_FLOPS:
        if fragment in kind:
            return bf16 if dtype in ("bfloat16", "bf16", "float16", "fp16") else fp32
    return None


def xla_flops(compiled: jax.stages.Compiled) -> float | None:
    """FLOPs of one call from XLA's cost analysis (loop bodies counted once)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _dot_flops(eqn: jcore.JaxprEqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rc), (_, rb) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
    return 2.0 * float(np.prod(lhs, dtype=np.float64)) * float(np.prod(rhs_free, dtype=np.float64))


def _conv_flops(eqn: jcore.JaxprEqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    dn = eqn.params["dimension_numbers"]
    # rhs_spec: (out feature dim, in feature dim, *spatial dims) of the kernel.
    rhs_spec = dn.rhs_spec
    spatial = [rhs[d] for d in rhs_spec[2:]]
    in_per_group = rhs[rhs_spec[1]]
    macs_per_out = float(np.prod(spatial, dtype=np.float64)) * in_per_group
    return 2.0 * float(np.prod(out, dtype=np.float64)) * macs_per_out


def _sub_jaxprs(params: dict[str, Any]) -> list[jcore.Jaxpr]:
    out = []
    for value in params.values():
        items = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            if isinstance(item, jcore.ClosedJaxpr):
                out.append(item.jaxpr)
            elif isinstance(item, jcore.Jaxpr):
                out.append(item)
    return out


def jaxpr_flops(jaxpr: jcore.Jaxpr | jcore.ClosedJaxpr) -> float:
    """Matmul + conv FLOPs of a jaxpr; `scan` bodies times their length, `cond` its costliest
    branch, `while` bodies once (their trip count is not known before running)."""
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        else:
            total += sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
    return total


def model_flops(fn: Callable[..., Any], *args: Any) -> float:
    """Matmul + conv FLOPs of one call `fn(*args)` (args may be abstract ShapeDtypeStructs)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))
