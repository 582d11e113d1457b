"""Test session set-up: 8 fake CPU devices (so sharding is tested in-process) and the shared data folder."""

import os
from pathlib import Path

# Must happen before jax is imported anywhere: every test sees 8 CPU devices; single-device tests
# build their mesh from jax.devices()[:1].
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the repository, or skip: the core suite must pass without it."""
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"reference data folder {data} is absent")
    return data
