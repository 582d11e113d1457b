"""The one error root of olmo_jax and the two kinds of failure every command reports.

- `InputError`: what the user gave is at fault (a config value, a flag, an input file); exit status 2.
- `RunError`: the input was acceptable but the run failed (a damaged checkpoint, a non-finite loss, a
  failed collective); exit status 1.

Every command goes through `olmo_jax.cli.run_command`, which prints `error: <message>` (and `hint: ...`
when the error carries one) for these and exits with their status; anything else is a bug and keeps its
traceback. Each error names the thing at fault in one line.
"""

from __future__ import annotations


class OlmoJaxError(Exception):
    """The root of every error olmo_jax raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InputError(OlmoJaxError, ValueError):
    """The user's input is at fault: fix the named config key, flag or file and rerun."""

    exit_code = 2


class RunError(OlmoJaxError, RuntimeError):
    """The run failed although its input was accepted."""

    exit_code = 1


# Input errors, by where the input comes from.
class ConfigError(InputError):
    """A configuration problem, reported as one line naming the key at fault."""


class TokenizerError(InputError):
    """A tokenizer that cannot be found, read or used."""


class DataError(InputError):
    """Token files or documents that cannot be used as given."""


class PrepareError(InputError):
    """`data prepare` input or output that cannot be used."""


class ConversionError(InputError):
    """A checkpoint or HF directory that cannot be converted as given."""


class EvalError(InputError):
    """Evaluation data, tasks or settings that cannot be used."""


class CheckpointNotFoundError(InputError):
    """A checkpoint path that holds no complete checkpoint step."""


class CheckpointMismatchError(InputError):
    """A readable checkpoint that does not fit the configured model or optimizer."""


# Run failures.
class CheckpointError(RunError):
    """A checkpoint step that exists but cannot be read (damaged storage, malformed items)."""


class NonFiniteLossError(RunError):
    """Non-finite losses or gradients beyond what the config tolerates."""


class DistributedError(RunError):
    """A multi-process run that could not start or lost a process."""


class CurationError(InputError):
    """A curation pipeline spec, source or evaluation set that cannot be used as given."""


class NonFiniteStateError(RunError):
    """Parameters or optimizer state holding NaN or Inf: never saved, never trained on."""


class CheckpointSaveError(RunError):
    """A checkpoint save that failed (in the background or not); the previous checkpoint is intact."""


class CheckpointReadError(RunError):
    """A checkpoint step that could not be read for a reason other than damage (an I/O error, out of memory):
    the step is left where it is."""


class RunLockedError(InputError):
    """A run directory that another trainer is using."""
