"""labq, a distributed device-task queue for test automation labs.

The public API is what ``__all__`` lists; everything else may change. The
package's layers, and the life of a task through them, are drawn in
``docs/architecture.md``.
"""

from labq.app import create_app
from labq.client.pcall import pcall
from labq.client.run import Run
from labq.devices.pick import Pick
from labq.errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    CommandTimeout,
    ConfigError,
    DeviceBusy,
    DeviceDisconnected,
    DeviceError,
    DeviceSelectionError,
    DeviceUnavailable,
    DeviceUnreachable,
    DriverError,
    LabqError,
    LeaseError,
    PartialSubmit,
    ReservationError,
    RunError,
    RunInterrupted,
    RunTimeout,
    SimLabError,
    SoftTimeout,
    StackError,
    SubmitError,
    TaskCancelled,
    TaskFailed,
    TestbedError,
    TimeLimitError,
    UnknownDevice,
    UnknownRun,
)
from labq.fairshare.priority import Priority
from labq.outcome import Outcome, RemoteError, Status
from labq.settings import Settings
from labq.worker.device_task import device_task

__all__ = [
    # Running tasks from a testscript
    "Run",
    "Priority",
    "pcall",
    # What comes back
    "Outcome",
    "RemoteError",
    "Status",
    # Writing device tasks, and choosing their devices
    "device_task",
    "Pick",
    # Configuration and the Celery app
    "Settings",
    "create_app",
    # Errors: the root, then by concern (the tree is drawn in labq.errors)
    "LabqError",
    "ConfigError",
    "TimeLimitError",
    "TestbedError",
    "BrokerUnavailable",
    "StackError",
    "SimLabError",
    "SubmitError",
    "PartialSubmit",
    "DeviceSelectionError",
    "RunError",
    "TaskFailed",
    "RunTimeout",
    "RunInterrupted",
    "UnknownRun",
    "ReservationError",
    "TaskCancelled",
    "SoftTimeout",
    "DeviceError",
    "DeviceUnreachable",
    "AuthenticationFailed",
    "DeviceDisconnected",
    "CommandTimeout",
    "DeviceBusy",
    "DeviceUnavailable",
    "UnknownDevice",
    "DriverError",
    "LeaseError",
]
