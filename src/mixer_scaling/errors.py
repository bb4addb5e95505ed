"""Errors that mean "the user asked for something invalid".

Every entry point catches :class:`UserError`, prints its message as one line and exits with
:data:`EXIT_USAGE`, before creating a run directory, a W&B run or a job. Messages name the key,
the bad value and what is allowed, e.g. ``data.fraction=1.5 is outside (0, 1]``.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input from a config, the command line, a data set or a launcher."""


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""


class DataError(UserError):
    """A data set is missing, unreadable or malformed."""


class CorruptFile(DataError, ValueError):
    """A file the framework wrote (a record, a checkpoint) is truncated or damaged."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def one_line(exc: BaseException) -> str:
    """First non-empty line of an exception's message (library errors are often multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
