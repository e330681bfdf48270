"""labq: a distributed device-task queue for test automation labs.

The public API is what ``__all__`` lists; everything else may change.
"""


from labq.app import create_app
from labq.device_task import device_task
from labq.errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    ConfigError,
    DeviceBusy,
    DeviceUnreachable,
    LabqError,
    RunTimeout,
    StackError,
    SubmitError,
    TaskCancelled,
    TaskFailed,
    TestbedError,
    TimeLimitError,
    UnknownDevice,
)
from labq.outcome import Outcome, RemoteError, Status
from labq.pcall import pcall
from labq.run import Run
from labq.settings import Settings

__all__ = [
    "AuthenticationFailed",
    "BrokerUnavailable",
    "ConfigError",
    "DeviceBusy",
    "DeviceUnreachable",
    "LabqError",
    "Outcome",
    "RemoteError",
    "Run",
    "RunTimeout",
    "Settings",
    "StackError",
    "Status",
    "SubmitError",
    "TaskCancelled",
    "TaskFailed",
    "TestbedError",
    "TimeLimitError",
    "UnknownDevice",
    "create_app",
    "device_task",
    "pcall",
]
