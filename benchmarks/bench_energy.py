"""What the power sampler costs the train step: step time without (A) and with (B) it, alternating A B A B.

Builds a preset's train step on one device and times rounds of steps on synthetic tokens, each round
alternately without and with a `PowerSampler` reading every `--interval` seconds on its thread, so that
drift of a shared machine falls on both arms alike. Each step waits for its result (as the loop does on
CPUs). Prints the median step time of each arm (medians of the per-round medians) and the difference, and
the time of one reading (what the thread does each interval) as a share of one core: the figure that
a busy shared machine does not blur.

The source is `--source=fixed` (the default: a power reading every `--interval`, the most wake-ups the
sampler makes, as for NVML's power fallback), `--source=file` (the RAPL reader on a temporary powercap
tree: an energy counter, read once a second) or `--source=auto` (what a run would read here: NVML,
amdsmi or RAPL; an error where nothing is readable).

    python benchmarks/bench_energy.py --config=tiny --rounds=10 --steps=20
    python benchmarks/bench_energy.py --config=1b --source=auto          # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from olmo_jax import sharding
from olmo_jax.config import EnergyConfig, MeshConfig, load_config
from olmo_jax.energy import FixedPower, PowerSampler, PowerSource, RaplPower, open_power_source
from olmo_jax.train import build, init_state, jit_train_step

DESCRIBED = {"fixed": "a fixed power", "file": "the RAPL files of a temporary tree"}


def fake_powercap(root: Path) -> Path:
    """A powercap tree with two packages whose counters stand still (reading them costs what RAPL's does)."""
    for package in (0, 1):
        zone = root / f"intel-rapl:{package}"
        zone.mkdir(parents=True)
        (zone / "name").write_text(f"package-{package}\n")
        (zone / "max_energy_range_uj").write_text("262143328850\n")
        (zone / "energy_uj").write_text("1000\n")
    return root


def time_steps(step, state, tokens, n: int) -> tuple[object, list[float]]:
    """`n` steps, each waited for; the state after them and each step's seconds."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        state, metrics = step(state, tokens, 1e-3, 1.0)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return state, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="preset or YAML file (default: tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per arm, alternating A B (default: 10)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round (default: 20)")
    parser.add_argument("--interval", type=float, default=0.025, help="seconds between readings (default: 0.025)")
    parser.add_argument("--source", choices=("fixed", "file", "auto"), default="fixed", help="what the sampler reads")
    parser.add_argument("--json", action="store_true", help="print one JSON record instead of the summary")
    args = parser.parse_args()

    overrides = dict(item.split("=", 1) for item in args.set)
    config = load_config(args.config, {"data.sequence_length": "256", **overrides})
    setup = build(config, sharding.make_mesh(MeshConfig(data=1, fsdp=1), jax.devices()[:1]))
    state = init_state(setup, config.seed)
    step = jit_train_step(setup)
    rng = np.random.default_rng(0)
    shape = (config.global_train_batch_size, config.sequence_length)
    tokens = jax.device_put(rng.integers(0, config.model.vocab_size, shape, dtype=np.int32), setup.batch_sharding)

    with tempfile.TemporaryDirectory() as tmp, jax.set_mesh(setup.mesh):
        powercap = fake_powercap(Path(tmp))

        def open_source() -> PowerSource:
            if args.source == "fixed":
                return FixedPower(300.0)
            if args.source == "file":
                return RaplPower(powercap)
            found, line = open_power_source(EnergyConfig(), jax.devices()[:1])
            if found is None:
                raise SystemExit(f"bench_energy: {line}")
            return found

        state, _ = time_steps(step, state, tokens, 3)  # compile and warm up
        medians: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.rounds):
            for arm in ("without", "with"):
                sampler = PowerSampler(open_source(), args.interval) if arm == "with" else None
                state, times = time_steps(step, state, tokens, args.steps)
                if sampler is not None:
                    source_name, reading_every = sampler.source.name, sampler.interval
                    sampler.close()
                medians[arm].append(statistics.median(times))

        # The sampler's own cost, which does not depend on how busy the machine is: one reading and its
        # integration (what the thread does every interval), timed over many calls.
        sampler = PowerSampler(open_source(), 3600)  # its thread sleeps: only the calls below read
        calls = 2000
        started = time.perf_counter()
        for _ in range(calls):
            sampler.take()
        per_reading = (time.perf_counter() - started) / calls
        sampler.close()

    without, with_sampler = (statistics.median(medians[arm]) for arm in ("without", "with"))
    record = {
        "config": args.config,
        "source": DESCRIBED.get(args.source, source_name),
        "reading_every_s": reading_every,
        "interval_s": args.interval,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "step_ms_without": 1e3 * without,
        "step_ms_with": 1e3 * with_sampler,
        "overhead_percent": 100 * (with_sampler - without) / without,
        "us_per_reading": 1e6 * per_reading,
        "core_percent": 100 * per_reading / reading_every,
        "device": jax.devices()[0].device_kind,
    }
    if args.json:
        print(json.dumps(record))
    else:
        print(
            f"{args.config} on {record['device']}: step {record['step_ms_without']:.2f} ms without the sampler, "
            f"{record['step_ms_with']:.2f} ms with it reading {record['source']} every {reading_every * 1e3:g} ms "
            f"({record['overhead_percent']:+.2f}%; medians of {args.rounds} alternating rounds of {args.steps} steps); "
            f"one reading takes {record['us_per_reading']:.1f} us, {record['core_percent']:.3f}% of one core"
        )


if __name__ == "__main__":
    main()
