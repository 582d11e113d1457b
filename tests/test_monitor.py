"""The throughput meter: rates over the steps since the previous log line, and MFU against the device's peak."""

import pytest

from olmo_jax.monitor import Meter


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_measurement_covers_the_steps_since_the_previous_one():
    clock = Clock()
    meter = Meter(5, step=10, tokens_seen=1_000, flops_per_token=2e9, peak_flops=1e12, num_devices=4, clock=clock)
    assert [step for step in range(11, 21) if meter.is_due(step)] == [15, 20]
    clock.now += 2.0  # steps 11-15: 5 steps, 8,000 tokens in 2 s
    first = meter.measure(15, 9_000)
    assert first["tokens_per_second"] == pytest.approx(4_000)
    assert first["step_time"] == pytest.approx(0.4)
    assert first["tokens_per_second_per_device"] == pytest.approx(1_000)
    assert first["mfu"] == pytest.approx(1_000 * 2e9 / 1e12)
    clock.now += 1.0  # steps 16-17: 2 steps, 500 tokens in 1 s; nothing of the first window remains
    second = meter.measure(17, 9_500)
    assert second["tokens_per_second"] == pytest.approx(500)
    assert second["step_time"] == pytest.approx(0.5)


def test_mfu_is_none_where_the_peak_is_unknown():
    clock = Clock()
    meter = Meter(1, step=0, tokens_seen=0, flops_per_token=1e9, peak_flops=None, num_devices=1, clock=clock)
    clock.now += 1.0
    assert meter.measure(1, 100)["mfu"] is None
