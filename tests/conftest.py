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


@pytest.fixture(scope="session")
def case_dir() -> Path:
    if not CASE.exists():
        pytest.skip(f"parity fixtures not found at {CASE}")
    return CASE
