"""The errors sumie raises for problems a user can fix.

Each message says what was wrong, the value seen, and what would be accepted.
Front ends (CLI, server) print `str(err)` as one line; they never show a traceback for these.
"""


class SumieError(Exception):
    """Base class: a problem with the user's input, files or settings, not a bug in sumie."""


class ConfigError(SumieError, ValueError):
    """A config.json that is missing, unreadable, or asks for something sumie does not support."""


class WeightsError(SumieError, ValueError):
    """A weights file that is missing, broken, unsafe, or does not fit the architecture."""


class InputError(SumieError, ValueError):
    """A bad argument to the pipeline, the CLI or the server."""


class NumericalError(SumieError, RuntimeError):
    """The model produced NaN or Inf even after the float32 retry."""
