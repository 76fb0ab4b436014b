"""Public exceptions. Every message says what went wrong, where, and how to fix it."""

from __future__ import annotations


class MmpoolError(Exception):
    """Base class of every error mmpool raises on purpose."""


class ConfigError(MmpoolError, ValueError):
    """Bad parameters, ranges, directories or a state that does not match the configuration."""


class ShardError(MmpoolError):
    """A missing, truncated, unreadable or malformed data file (input shard, pack or manifest)."""


class MemoryLimitExceeded(MmpoolError, MemoryError):
    """The process group went over ``max_memory_gb``; the message holds the full memory report.

    The constructor takes one message string so that torch's DataLoader can re-raise it in the
    main process when a worker raises it.
    """


def check_int(name: str, value: object, minimum: int) -> None:
    """A ConfigError naming the parameter unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    import numpy as np  # here, not at the top: importing the exceptions stays free of numpy

    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r}: must be an integer >= {minimum}")
