"""JAX vs PyTorch eager tokens/s on the CPU, from alternating runs of both benchmarks (the README's CPU figure).

    python benchmarks/cpu_ratio.py                          # tiny, 5 runs each, 10 timed steps per run
    python benchmarks/cpu_ratio.py --rounds=7 --steps=5 --config.data.sequence_length=128

Runs `python -m olmo_jax.bench` and `python benchmarks/torch_baseline.py --device=cpu` one after the other,
A B A B ..., each in a fresh process with the same config and flags, so that both see the same machine
load as far as a shared machine allows; prints every run with the 1-minute load average before it, the
median tokens/s of each side and the ratio of the medians. Config overrides (`--config.KEY=VALUE`) are
passed to both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "jax": [sys.executable, "-m", "olmo_jax.bench"],
    "torch": [sys.executable, str(ROOT / "benchmarks" / "torch_baseline.py"), "--device=cpu"],
}


def run_once(framework: str, flags: list[str], env: dict[str, str]) -> float:
    """Tokens/s per device of one benchmark process (its --json record is the last line of its stdout)."""
    result = subprocess.run(
        [*COMMANDS[framework], *flags, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"cpu_ratio: the {framework} benchmark failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["tokens_per_second_per_device"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="preset or YAML file (default: tiny)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each benchmark (default: 5)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run (default: 10)")
    args, overrides = parser.parse_known_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    if any(not flag.startswith("--config.") for flag in overrides):
        parser.error(f"unknown arguments {overrides}: only --config.KEY=VALUE overrides are passed on")
    flags = [f"--config={args.config}", f"--steps={args.steps}", *overrides]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    results: dict[str, list[float]] = {"jax": [], "torch": []}
    for round_ in range(1, args.rounds + 1):
        for framework in results:
            load = os.getloadavg()[0]
            tokens_per_second = run_once(framework, flags, env)
            results[framework].append(tokens_per_second)
            print(
                f"round {round_}: {framework:5s} {tokens_per_second:8,.0f} tokens/s   (load before: {load:.2f})",
                flush=True,
            )
    medians = {framework: statistics.median(values) for framework, values in results.items()}
    print(
        f"medians over {args.rounds} alternating runs each ({' '.join(flags)}): JAX {medians['jax']:,.0f} tokens/s, "
        f"PyTorch eager {medians['torch']:,.0f} tokens/s, ratio {medians['jax'] / medians['torch']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
