"""One process of tests/test_multihost.py: sharded train steps on a fixed global batch.

    python tests/multihost_worker.py --out=FILE [--process-id=I --num-processes=N --port=P]
        [--local-devices=D]

Every process builds the same tiny model and the same global batch; each feeds only the rows
its own devices hold. Process 0 writes the per-step losses, gradient norms and the final
denoiser parameters to `--out` (.npz).
"""

import argparse
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--local-devices", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path[:0] = [str(TESTS.parent), str(TESTS)]

    from tiny_train_config import get_config

    from madad_jax.main import initialize_distributed

    config = get_config("dit")
    if args.num_processes > 1:
        config.distributed.update(dict(
            initialize="on", coordinator_address=f"localhost:{args.port}",
            num_processes=args.num_processes, process_id=args.process_id))
    assert initialize_distributed(config) == (args.num_processes > 1)

    import jax
    import numpy as np
    from train_helpers import make_slices, random_vae_params

    from madad_jax.core import mesh
    from madad_jax.training import denoiser as denoiser_task

    assert jax.process_count() == args.num_processes
    assert jax.device_count() == args.num_processes * args.local_devices
    m = mesh.make_mesh(config)
    vae_abstract = jax.eval_shape(
        lambda: denoiser_task.init_vae_params(config, jax.random.PRNGKey(0)))
    task = denoiser_task.DenoiserTask(config, m, vae_abstract, random_vae_params(config))
    state = task.init()

    global_batch = make_slices(int(config.train.batch_size), 32, seed=7)
    n = int(config.train.batch_size)
    # The global rows this process's devices hold (in the order jax assembles them).
    index_map = task.batch_sharding.addressable_devices_indices_map((n,))
    rows = sorted({r for idx in index_map.values() for r in range(*idx[0].indices(n))})
    assert rows == list(range(rows[0], rows[0] + len(rows)))
    local = {k: v[rows[0]:rows[-1] + 1] for k, v in global_batch.items()}

    losses, norms = [], []
    for _ in range(args.steps):
        state, metrics = task.step(state, task.put_batch(local))
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    params = jax.device_get(state["params"]["denoiser"])  # replicated: every process has it
    if jax.process_index() == 0:
        flat = {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(params)}
        np.savez(args.out, losses=np.array(losses), grad_norms=np.array(norms), **flat)
    print(f"process {jax.process_index()}: rows {rows[0]}-{rows[-1]}, losses {losses}",
          flush=True)


if __name__ == "__main__":
    main()
