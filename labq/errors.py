"""Every error labq raises, under one root: :class:`LabqError`.

Each class says when it is raised. Messages carry the offending value, so a
log line alone tells what was wrong. Errors from redis, kombu and celery are
wrapped at the boundary with ``raise ... from``.
"""

from __future__ import annotations


class LabqError(Exception):
    """Root of every error labq raises on purpose."""


class ConfigError(LabqError):
    """A setting, a config file or a command-line option has a bad value.

    Raised while settings are read, and when an app or worker is built with a
    configuration labq refuses (a pool without time limits, for example).
    """

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        super().__init__(f"{setting}={value!r}: {reason}")


class BrokerUnavailable(LabqError):
    """Redis (the broker or the result backend) cannot be reached.

    The message names the address with its password masked.
    """


class StackError(LabqError):
    """A part of the embedded stack (Redis, a worker, Flower) failed to start
    or to become ready in time."""


class TimeLimitError(LabqError):
    """A soft or hard time limit is invalid: not positive, the soft limit at
    or above the hard one, or a hard limit above ``max_time_limit`` (which the
    broker's visibility timeout is derived from)."""
