"""labq: a distributed device-task queue for test automation labs.

The public API is what ``__all__`` lists; everything else may change.
"""


from labq.app import create_app
from labq.errors import (
    BrokerUnavailable,
    ConfigError,
    LabqError,
    StackError,
    TimeLimitError,
)
from labq.settings import Settings

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "LabqError",
    "Settings",
    "StackError",
    "TimeLimitError",
    "create_app",
]
