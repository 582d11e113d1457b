"""`olmo-jax`: one command for the whole pipeline, and what its subcommands share.

    olmo-jax train --config=tiny                      # = python -m olmo_jax.main --config=tiny
    olmo-jax data prepare|curate|inspect|train-tokenizer ...  # = python -m olmo_jax.data ...
    olmo-jax convert to-hf|from-hf ...                # = python -m olmo_jax.convert ...
    olmo-jax eval --model=runs/tiny --tasks=core9     # = python -m olmo_jax.eval ...
    olmo-jax generate --model=runs/tiny --prompt=...  # = python -m olmo_jax.generate ...
    olmo-jax bench --config=1b                        # = python -m olmo_jax.bench ...
    olmo-jax energy runs/tiny                         # = python -m olmo_jax.energy ...

Shared by every subcommand, and defined only here:
- flags are spelled with underscores; the hyphenated spelling of any flag is accepted too
  (`--max-shard-size` = `--max_shard_size`);
- `--config=NAME|PATH` and `--config.KEY=VALUE` wherever a run config applies (train, data inspect,
  eval, bench);
- `--output`/`-o` names what a command writes (a run directory, a folder or a file);
- `--dtype` is the dtype parameters are stored in; the dtype arithmetic runs in is `--compute_dtype`;
- errors: `error: <one line>` on stderr (and `hint: ...` where it helps), exit status 2 when the input is at
  fault and 1 when the run failed; a traceback only for bugs, or for everything with `--debug` or
  `OLMO_JAX_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from olmo_jax.config import split_config_args
from olmo_jax.errors import ConfigError, OlmoJaxError

DEBUG_ENV = "OLMO_JAX_DEBUG"

# Subcommand -> (module whose `main(argv, prog=...)` runs it, one-line summary). The module is imported
# only when its subcommand runs: importing JAX, Flax and Orbax takes seconds, and `olmo-jax --help` or
# `olmo-jax data prepare` needs none of them.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("olmo_jax.main", "train a model (or compile and size its train step with --dry_run)"),
    "data": ("olmo_jax.data.__main__", "prepare token files, curate text, inspect a step's batch, train a tokenizer"),
    "convert": ("olmo_jax.convert.__main__", "convert checkpoints to and from Hugging Face directories"),
    "eval": ("olmo_jax.eval.__main__", "evaluate a checkpoint or HF model: downstream tasks and perplexity"),
    "generate": ("olmo_jax.generate.__main__", "continue prompts with a checkpoint or HF model (greedy or sampled)"),
    "bench": ("olmo_jax.bench", "time the real train step on synthetic tokens (tokens/s, MFU, memory)"),
    "energy": ("olmo_jax.energy", "a run's energy and emissions as a row of the OLMo paper's Table 7"),
}

DTYPE_HELP = "dtype the parameters are stored in"
COMPUTE_DTYPE_HELP = "dtype the arithmetic runs in (logits and losses are float32 always)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error shape: the usage, then `error: <message>` as the last line (exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def normalize_flags(argv: Sequence[str]) -> list[str]:
    """`--some-flag[=v]` -> `--some_flag[=v]`: one spelling rule, hyphens accepted for every flag.

    Only the flag name before `=` changes; values, positional arguments and subcommand names stay as given.
    """
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg.partition("=")
            arg = "--" + name[2:].replace("-", "_") + eq + value
        out.append(arg)
    return out


def parse_command_line(argv: Sequence[str]) -> tuple[str | None, dict[str, str], list[str], bool]:
    """Normalise flags and pull out what argparse cannot parse: (config, overrides, rest, debug).

    `--config=X` and `--config.KEY=VALUE` are taken out (see `add_config_arguments`), and so is `--debug`.
    """
    args = normalize_flags(argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    config_name, overrides, rest = split_config_args(args)
    return config_name, overrides, rest, debug


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """`--config=NAME|PATH` and the `--config.KEY=VALUE` overrides (parsed by `parse_command_line`)."""
    parser.add_argument(
        "--config",
        metavar="NAME|PATH",
        help="a preset name (e.g. tiny, 1b, 7b) or a YAML file (ours, or an original OLMo config)"
        + ("" if required else "; optional")
        + ". Then any number of --config.KEY=VALUE overrides, e.g. --config.optimizer.learning_rate=3e-4 "
        "--config.data.paths='[\"a.npy\"]' (values are YAML; an unknown key is an error naming the valid ones)",
    )


def add_output_argument(
    parser: argparse.ArgumentParser, help: str, *, required: bool = False, aliases: Sequence[str] = (), **kwargs
) -> None:
    """`--output`/`-o` (plus a command's older spellings in `aliases`): where the command writes."""
    parser.add_argument("--output", "-o", *aliases, dest="output", required=required, help=help, **kwargs)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """Documents `--debug` (taken out of argv by `parse_command_line` before argparse runs)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the full traceback of any error (same as {DEBUG_ENV}=1 in the environment)",
    )


def require_config(parser: argparse.ArgumentParser, config_name: str | None) -> str:
    if config_name is None:
        parser.error("--config=NAME|PATH is required")
    return config_name


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def report(error: BaseException) -> None:
    """`error: <message>` (one line), and `hint: <hint>` where the error carries one, on stderr."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    hint = getattr(error, "hint", None)
    if hint:
        print(f"hint: {hint}", file=sys.stderr, flush=True)


def run_command(
    body: Callable[[], int | None], *, debug: bool = False, finish: Callable[[int], int] | None = None
) -> int:
    """Run a command's body and turn every expected failure into one error line and an exit status.

    `OlmoJaxError`: its own status (2 input, 1 run). `OSError` (disk full, permissions, a vanished file):
    1. Ctrl-C: 130. A closed stdout (`| head`): 0. Anything else is a bug: its traceback, status 1.
    `finish(status)` runs after a failure (a multi-process run ends its process there); with `debug`,
    errors keep their tracebacks.
    """
    finish = finish or (lambda status: status)
    debug = debug_enabled(debug)
    try:
        return body() or 0
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped listening: not an error. Silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OlmoJaxError, OSError) as error:
        if debug:
            traceback.print_exc()
        report(error)
        return finish(getattr(error, "exit_code", 1))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return finish(130)
    except Exception:
        traceback.print_exc()
        return finish(1)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: olmo-jax COMMAND [ARGS...]   (olmo-jax COMMAND --help documents each flag)",
        "",
        "OLMo in JAX: pretraining, data, conversion, evaluation and benchmarks.",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "Every command spells flags with underscores (hyphens work too), takes --debug for tracebacks, and",
        "prints 'error: ...' with exit status 2 (bad input) or 1 (the run failed).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The `olmo-jax` console script: dispatch to a subcommand's `main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        report(ConfigError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (olmo-jax --help)"))
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest, prog=f"olmo-jax {command}")


if __name__ == "__main__":
    sys.exit(main())
