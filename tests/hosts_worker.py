"""One process of test_hosts: a jitted sum over both processes' devices, where process 1
reaches its first call `--delay` seconds after process 0 (a slow compile, say)."""

import argparse
import os
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from madad_jax.core import hosts  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--process-id", type=int)
p.add_argument("--port", type=int)
p.add_argument("--delay", type=float)
args = p.parse_args()
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{args.port}", 2, args.process_id)
mesh = jax.make_mesh((4,), ("data",))
x = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, jax.P("data")),
                                           np.full((2, 3), args.process_id + 1, np.float32))
total = hosts.together(
    jax.jit(lambda a: a.sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.P())), "sum")
if args.process_id == 1:
    time.sleep(args.delay)
first = float(total(x).addressable_data(0))
second = float(total(x * 2).addressable_data(0))  # compiled once: no second barrier
hosts.sync("done")
print(f"sums {first} {second}", flush=True)
