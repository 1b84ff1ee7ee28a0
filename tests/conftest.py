"""Shared test set-up: 4 CPU devices, and the reference's parity fixtures."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(
    os.environ.get("MADAD_FIXTURES", REPO.parent / "shared" / "fixtures" / "official")
)
CASE = FIXTURES / "unet_mc32_img64"
# Opt-in: one persistent compilation cache for the whole suite and across runs
# (`MADAD_TEST_COMPILE_CACHE=~/.cache/madad_jax_tests python -m pytest -q`). Safe: an entry is
# only loaded for the exact program, jaxlib, device and flags it was made from (README).
SUITE_CACHE = os.path.expanduser(os.environ.get("MADAD_TEST_COMPILE_CACHE", ""))


def pytest_configure(config) -> None:
    if SUITE_CACHE:
        import jax

        jax.config.update("jax_compilation_cache_dir", SUITE_CACHE)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        # The same cache for the commands the tests start (`python -m madad_jax.main`, the
        # bench, the two-process runs), which read JAX's settings from the environment.
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", SUITE_CACHE)
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most 4 (each runs JAX and starts its own
    processes; more would trade memory for little)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def on_ci() -> bool:
    """Whether this run is CI's (`CI=true`, as .ci/run and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_fixture(path: Path, what: str = "parity fixtures") -> None:
    """Skip a test whose fixture is missing; under CI, fail instead, so that a green CI
    never hides an unchecked parity table."""
    if not path.exists():
        message = f"{what} not found at {path}"
        if on_ci():
            pytest.fail(f"{message} (CI=true: a missing fixture fails the run)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def case_dir() -> Path:
    require_fixture(CASE)
    return CASE


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """Share compiled programs between a module's tests (identical programs recur).

    A module opts in with `pytestmark = pytest.mark.usefixtures("compilation_cache")`.
    """
    import jax

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], SUITE_CACHE or str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update(keys[1], 0.0)
    jax.config.update(keys[2], -1)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def import_case(case_dir: Path, out: Path, vae: str = "vae.safetensors") -> str:
    """The fixture's reference weights imported as a checkpoint at `out`."""
    from madad_jax.interop import import_reference

    rc = import_reference.main([f"--arch={case_dir / 'case.json'}",
                                f"--unet={case_dir / 'unet.safetensors'}",
                                f"--vae={case_dir / vae}", f"--out={out}"])
    assert rc == 0
    return str(out)


@pytest.fixture(scope="module")
def fixture_ckpt(tmp_path_factory, case_dir) -> str:
    """The inference fixture's reference weights, imported once per module."""
    return import_case(case_dir, tmp_path_factory.mktemp("ckpt") / "official")
