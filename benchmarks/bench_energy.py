"""What the power sampler costs the train step: step time without (A) and with (B) it, alternating per step.

Builds a preset's train step on one device and times single steps on synthetic tokens in pairs, one step
without the sampler and one with a `PowerSampler` reading every `--interval` seconds on its thread (started
just before the step and stopped after it; a step is timed from its call to its result). Pairs alternate
their order (A B, then B A) and are short, so drift of a shared machine (other work, clock changes) falls on both arms
alike; alternating whole rounds of steps left a noise of several percent on this 2-core machine, more than
the 1% the sampler must stay under. Each step waits for its result (as the loop does on CPUs).

Prints the median of the pairs' relative differences, with a 95% bootstrap interval of that median, the
median step time of each arm, and the time of one reading (what the thread does each interval) as a share
of one core: the figure that a busy shared machine does not blur.

The source is `--source=fixed` (the default: a power reading every `--interval`, the most wake-ups the
sampler makes, as for NVML's power fallback), `--source=file` (the RAPL reader on a temporary powercap
tree: an energy counter, read once a second) or `--source=auto` (what a run would read here: NVML,
amdsmi or RAPL; an error where nothing is readable).

    python benchmarks/bench_energy.py --config=tiny --pairs=100
    python benchmarks/bench_energy.py --config=1b --source=auto          # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
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


def one_step(step, state, tokens) -> tuple[object, float]:
    """One step, waited for: the state after it and its seconds."""
    start = time.perf_counter()
    state, metrics = step(state, tokens, 1e-3, 1.0)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start


def median_interval(values: np.ndarray, rng: np.random.Generator, draws: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of `values`."""
    medians = np.median(rng.choice(values, size=(draws, len(values)), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="preset or YAML file (default: tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--pairs", type=int, default=100, help="timed pairs of steps (default: 100)")
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

        for _ in range(3):  # compile and warm up
            state, _ = one_step(step, state, tokens)
        times: dict[str, list[float]] = {"without": [], "with": []}
        for pair in range(args.pairs):
            for arm in ("without", "with") if pair % 2 == 0 else ("with", "without"):
                if arm == "with":
                    sampler = PowerSampler(open_source(), args.interval)
                    state, seconds = one_step(step, state, tokens)
                    source_name, reading_every = sampler.source.name, sampler.interval
                    sampler.close()
                else:
                    state, seconds = one_step(step, state, tokens)
                times[arm].append(seconds)

        # The sampler's own cost, which does not depend on how busy the machine is: one reading and its
        # integration (what the thread does every interval), timed over many calls.
        sampler = PowerSampler(open_source(), 3600)  # its thread sleeps: only the calls below read
        calls = 2000
        started = time.perf_counter()
        for _ in range(calls):
            sampler.take()
        per_reading = (time.perf_counter() - started) / calls
        sampler.close()

    without, with_sampler = (np.asarray(times[arm]) for arm in ("without", "with"))
    relative = 100 * (with_sampler - without) / without
    low, high = median_interval(relative, rng)
    record = {
        "config": args.config,
        "source": DESCRIBED.get(args.source, source_name),
        "reading_every_s": reading_every,
        "interval_s": args.interval,
        "pairs": args.pairs,
        "step_ms_without": 1e3 * float(np.median(without)),
        "step_ms_with": 1e3 * float(np.median(with_sampler)),
        "overhead_percent": float(np.median(relative)),
        "overhead_percent_95": [low, high],
        "us_per_reading": 1e6 * per_reading,
        "core_percent": 100 * per_reading / reading_every,
        "device": jax.devices()[0].device_kind,
    }
    if args.json:
        print(json.dumps(record))
    else:
        print(
            f"{args.config} on {record['device']}: step {record['step_ms_without']:.2f} ms without the sampler, "
            f"{record['step_ms_with']:.2f} ms with it reading {record['source']} every {reading_every * 1e3:g} ms; "
            f"difference {record['overhead_percent']:+.2f}% (95% interval {low:+.2f}% to {high:+.2f}%; medians of "
            f"{args.pairs} alternating pairs of steps); "
            f"one reading takes {record['us_per_reading']:.1f} us, {record['core_percent']:.3f}% of one core"
        )


if __name__ == "__main__":
    main()
