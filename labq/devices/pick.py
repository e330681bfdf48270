"""``labq.Pick``: any free device whose labels match.

A device's labels are its testbed ``os``, ``type`` and ``platform`` plus its
``custom: labq: labels:`` (:attr:`labq.devices.testbed.Device.all_labels`).
``Pick(role="spine", os=["iosxe", "nxos"])`` matches the devices whose
``role`` is ``spine`` and whose ``os`` is either; ``exclude=`` names devices to
skip. A Pick travels in a task's message as plain JSON (:meth:`Pick.to_json`),
and the worker that runs the task chooses the device when it takes the lease.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labq.devices.testbed import Device, Testbed
from labq.errors import DeviceSelectionError

#: The JSON key that marks a Pick in a message's kwargs.
PICK_KEY = "__labq_pick__"


@dataclass(frozen=True, init=False)
class Pick:
    """Any one device whose labels equal all of ``labels`` (a list value
    means any of its values), other than those in ``exclude``."""

    labels: tuple[tuple[str, tuple[str, ...]], ...]
    exclude: frozenset[str]

    def __init__(self, *, exclude: Iterable[str] | str = (),
                 **labels: str | int | Sequence[str | int]) -> None:
        pairs = []
        for key, value in sorted(labels.items()):
            values = (value,) if isinstance(value, (str, int)) else tuple(value)
            if not values or not all(isinstance(v, (str, int)) and str(v) for v in values):
                raise DeviceSelectionError(
                    f"Pick({key}={value!r}): a label value is a non-empty string, or a "
                    "list of them meaning any")
            pairs.append((key, tuple(str(v) for v in values)))
        names = (exclude,) if isinstance(exclude, str) else tuple(exclude)
        if not all(isinstance(n, str) and n for n in names):
            raise DeviceSelectionError(f"Pick(exclude={exclude!r}): give device names")
        object.__setattr__(self, "labels", tuple(pairs))
        object.__setattr__(self, "exclude", frozenset(names))

    def matches(self, device: Device) -> bool:
        if device.name in self.exclude:
            return False
        have = device.all_labels
        return all(have.get(key) in values for key, values in self.labels)

    def members(self, testbed: Testbed) -> list[Device]:
        """The matching devices, in testbed order; :class:`DeviceSelectionError`
        naming the labels and the values that do exist when there are none."""
        found = [d for d in testbed if self.matches(d)]
        if not found:
            raise DeviceSelectionError(f"{self} matches no device in testbed "
                                       f"{testbed.name!r}{self._hint(testbed)}")
        return found

    def _hint(self, testbed: Testbed) -> str:
        """Where the labels went wrong: an unknown name, or the values that exist."""
        hints = []
        pool = [d for d in testbed if d.name not in self.exclude]
        for key, values in self.labels:
            seen = sorted({d.all_labels[key] for d in pool if key in d.all_labels})
            if not seen:
                names = sorted({k for d in testbed for k in d.all_labels})
                close = difflib.get_close_matches(key, names, n=2)
                hints.append(f"no device has a label {key!r}"
                             + (f" (did you mean {', '.join(map(repr, close))}?)" if close
                                else f"; labels in use: {', '.join(names)}"))
            elif not set(values) & set(seen):
                hints.append(f"{key} is one of {', '.join(map(repr, seen[:12]))}")
            pool = [d for d in pool if d.all_labels.get(key) in values] or pool
        if self.exclude:
            hints.append(f"excluded: {', '.join(sorted(self.exclude))}")
        return "; " + "; ".join(hints) if hints else "; no combination of them fits one device"

    def to_json(self) -> dict[str, Any]:
        return {PICK_KEY: {"labels": {k: list(v) for k, v in self.labels},
                           "exclude": sorted(self.exclude)}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pick:
        body = data[PICK_KEY]
        return cls(exclude=body.get("exclude", ()), **body.get("labels", {}))

    def __str__(self) -> str:
        parts = [f"{k}={v[0]!r}" if len(v) == 1 else f"{k}={list(v)!r}" for k, v in self.labels]
        if self.exclude:
            parts.append(f"exclude={sorted(self.exclude)!r}")
        return f"Pick({', '.join(parts)})"

    __repr__ = __str__


def is_pick_json(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {PICK_KEY}


def encode(value: Any) -> Any:
    """``value`` for a message: a Pick as its JSON form, anything else as is."""
    return value.to_json() if isinstance(value, Pick) else value


def decode(value: Any) -> Any:
    """A message's value back: a Pick's JSON form as a Pick, anything else as is."""
    return Pick.from_json(value) if is_pick_json(value) else value
