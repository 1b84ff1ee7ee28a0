"""The main job: `python -m madad_jax.main --config=configs/NAME.py --workdir=DIR`.

`config.mode` picks what runs: `train`, `evaluate`, `predict`, `train_and_evaluate`, or
`train_vae` (only the autoencoder). Any config key can be overridden on the command line
(`--config.train.batch_size=32`).

On several hosts (a Cloud TPU pod slice, a SLURM job, or processes given
`JAX_COORDINATOR_ADDRESS` / `--config.distributed.*`), `jax.distributed.initialize` runs
before anything touches a device.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from madad_jax.config import MODES, validate
from madad_jax.core import locks, peers
from madad_jax.core.errors import PREEMPTED_EXIT, MadadError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file defining get_config().", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and library logs.")

__all__ = ["MODES", "main", "run"]


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions reported in one line: the project's own (unusable input, a diverged run;
    `madad_jax.core.errors`) and OSError (a full disk, a read-only file system, a workdir
    that is a file, ...). Anything else is a bug and keeps its traceback."""
    return (OSError, MadadError)


def describe(err: BaseException) -> str:
    """One line naming the file (when known) and the problem."""
    if isinstance(err, OSError) and err.filename:
        msg = f"{err.filename}: {err.strerror or err}"
        if err.filename2:
            msg += f" (-> {err.filename2})"
        elif isinstance(err, FileExistsError | NotADirectoryError) and os.path.isfile(
                err.filename):
            msg += " (a file where a directory is needed)"
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


def _env_int(*names: str) -> int:
    for n in names:
        v = os.environ.get(n)
        if v and v.strip().lstrip("-").isdigit():
            return int(v)
    return 0


def multihost_requested(config) -> bool:
    """Whether this process is one of several that must form a JAX distributed system."""
    d = config.distributed
    choice = str(d.initialize).lower()
    if choice in ("on", "true", "1", "yes"):
        return True
    if choice in ("off", "false", "0", "no"):
        return False
    # auto (validate, run right after, rejects any other value)
    if d.coordinator_address:
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    # SLURM (srun) and Open MPI (mpirun): jax detects the rest from these variables.
    return _env_int("SLURM_NTASKS", "SLURM_NPROCS", "OMPI_COMM_WORLD_SIZE") > 1


def initialize_distributed(config) -> bool:
    """Call `jax.distributed.initialize` when launched multi-host; True if it did."""
    if not multihost_requested(config):
        return False
    import jax

    # Cross-process collectives on CPU need gloo (the default CPU client has none).
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    d = config.distributed
    kwargs = {}
    if d.coordinator_address:
        kwargs["coordinator_address"] = d.coordinator_address
    if int(d.num_processes) > 0:
        kwargs["num_processes"] = int(d.num_processes)
    if int(d.process_id) >= 0:
        kwargs["process_id"] = int(d.process_id)
    kwargs["heartbeat_timeout_seconds"] = int(d.heartbeat_timeout_s)
    jax.distributed.initialize(**kwargs)
    return True


def run(config, workdir: str) -> None:
    """Run `config.mode` (a validated config) under the workdir's lock."""
    from madad_jax.core import compile_cache

    with _workdir_lock(config, workdir):
        # Before any jit, and inside the lock: a refused run writes nothing.
        with compile_cache.enabled(compile_cache.resolve(config.compile_cache, workdir)):
            _run_mode(config, workdir, config.mode)


def _workdir_lock(config, workdir: str):
    """The workdir's lock (process 0 only) for every mode that writes into it."""
    from madad_jax.core import hosts, locks

    what = {"evaluate": "evaluation", "predict": "prediction"}.get(config.mode, "training")
    writes = config.mode != "predict" or not config.predict.output
    # With several processes, JAX's preemption notifier owns SIGTERM (a C handler, which
    # `signal.getsignal` cannot see): every process must stop at the same step.
    return locks.hold(workdir, what, enabled=writes and hosts.is_main(),
                      unwind_on_sigterm=not multihost_requested(config))


def _run_mode(config, workdir: str, mode: str) -> None:
    if mode in ("train", "train_and_evaluate"):
        probe = importlib.import_module("madad_jax.evaluation.during_training").probe
        importlib.import_module("madad_jax.training.run").train(config, workdir, probe=probe)
    if mode in ("evaluate", "train_and_evaluate"):
        importlib.import_module("madad_jax.evaluation.evaluate").run(config, workdir)
    if mode == "predict":
        importlib.import_module("madad_jax.evaluation.predict_many").run(config, workdir)
    if mode == "train_vae":
        importlib.import_module("madad_jax.training.run").run_autoencoder(config, workdir)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        _fail("--config=configs/NAME.py is required")
    if not _WORKDIR.value:
        _fail("--workdir=DIR is required")
    if multihost_requested(config) and config.distributed.supervise and not peers.in_child():
        sys.exit(_supervise(config))
    if peers.in_child():
        peers.child_streams()
    verbose = bool(_VERBOSE.value or config.verbose)
    if not verbose:
        absl_logging.set_verbosity(absl_logging.WARNING)
        # Orbax logs through absl, errors of its background threads with their tracebacks;
        # those errors reach the main thread too, and are reported there in one line.
        logging.getLogger("absl").setLevel(logging.CRITICAL)
        _drop_closed_loop_reports()
    try:
        initialize_distributed(config)
        # Every key's rule, before anything is written (after initialize: it may ask jax).
        validate(config, workdir=_WORKDIR.value)
        run(config, _WORKDIR.value)
    except KeyboardInterrupt:
        if verbose:
            raise
        _fail("interrupted", code=130, quiet_after=True)
    except locks.Terminated:  # SIGTERM outside a step loop: the writes so far are whole
        _fail("stopped by SIGTERM before its work was done; what was written is kept and "
              "the same command resumes", code=PREEMPTED_EXIT, quiet_after=True)
    except bad_input_errors() as err:
        if verbose:
            raise
        _fail(describe(err), code=getattr(err, "exit_code", 1), quiet_after=True)
    except Exception as err:
        if not peers.is_peer_failure(err):
            raise
        peers.await_verdict(err, int(config.distributed.heartbeat_timeout_s))


def _supervise(config) -> int:
    """This process's work, in a child that `core.peers` watches for a lost peer."""
    rank = int(config.distributed.process_id)
    for name in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "CLOUD_TPU_TASK_ID"):
        if rank < 0 and os.environ.get(name, "").isdigit():
            rank = int(os.environ[name])
    return peers.supervise(sys.argv, rank, _WORKDIR.value)


def _drop_closed_loop_reports() -> None:
    """TensorStore's callback threads report a failed checkpoint read or write once more, as
    `RuntimeError: Event loop is closed` (an unraisable exception), once Orbax has closed its
    event loop. The failure itself is reported in one line; drop only these echoes."""
    default, default_unraisable = sys.excepthook, sys.unraisablehook

    def echo(value) -> bool:
        return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

    def hook(kind, value, tb):
        if not echo(value):
            default(kind, value, tb)

    def unraisable(info):
        if not echo(info.exc_value):
            default_unraisable(info)

    sys.excepthook, sys.unraisablehook = hook, unraisable


def _fail(message: str, code: int = 1, quiet_after: bool = False) -> None:
    """Print the one error line and exit; with `quiet_after`, nothing else reaches stderr
    (Orbax's and asyncio's background threads may still report the same failure)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if quiet_after:
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
    sys.exit(code)


def _config_path(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1].split(":", 1)[0]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config file is one stderr line, not a usage dump."""
    verbose = "--verbose" in argv
    path = _config_path(argv)
    if path is not None and not os.path.isfile(path):
        _fail(f"{path}: no such config file")
    try:
        rest = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.keys()  # the config loads lazily: surface its errors here
        return rest
    except Exception as err:  # a config file that fails to load, a bad override
        if verbose:
            raise
        if isinstance(err, (AttributeError, KeyError)):  # an override of a missing key
            key = str(err).strip("\"' ")
            flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                         and a.split("=", 1)[0].split(".")[-1] == key), f"--config...{key}")
            _fail(f"{flag}: no such config key")
        # ml_collections folds the config's traceback into the message: keep its last line.
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        problem = lines[-1] if len(lines) > 1 else describe(err)
        where = f"{path}: " if path and path not in problem else ""
        _fail(where + problem)
    return []


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
