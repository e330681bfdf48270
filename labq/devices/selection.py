"""Which devices may fill a task's roles, segment by segment.

A device task has roles (``("device",)`` unless ``@device_task(roles=...)``
names others); each role's argument is a device name or a
:class:`~labq.devices.pick.Pick`. All of a task's devices must be reached from
one lab segment, that is one queue: :func:`plan` lists, for every queue that
can serve the whole task, each role's candidates there. The client calls it
when the task is submitted (bad input is refused before anything is queued)
and the worker when it takes the leases, from its own testbed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labq.devices.pick import Pick, decode
from labq.devices.testbed import Testbed
from labq.errors import DeviceSelectionError


@dataclass(frozen=True)
class Slot:
    """One role and the devices that may fill it on one queue, in testbed order."""

    role: str
    candidates: tuple[str, ...]
    #: True when the role named its device: the only candidate.
    named: bool


@dataclass(frozen=True)
class Plan:
    """Every queue that can serve the task, with the role slots on each."""

    roles: tuple[str, ...]
    queues: dict[str, tuple[Slot, ...]]

    @property
    def preferred(self) -> str:
        """The queue a submit routes to: the most candidates, then by name."""
        return max(sorted(self.queues), key=lambda q: sum(len(s.candidates)
                                                          for s in self.queues[q]))


def role_arguments(roles: Sequence[str], kwargs: Mapping[str, Any],
                   task: str = "task") -> dict[str, str | Pick]:
    """Each role's device name or Pick from a call's ``kwargs``; refuses a
    missing role, naming the roles the task has."""
    out: dict[str, str | Pick] = {}
    for role in roles:
        if role not in kwargs or kwargs[role] is None:
            raise DeviceSelectionError(
                f"{task}: no {role}= argument; its roles are {', '.join(roles)} "
                "(each a device name or a labq.Pick)")
        value = decode(kwargs[role])
        if not isinstance(value, (str, Pick)) or value == "":
            raise DeviceSelectionError(
                f"{task}: {role}={value!r} is not a device name or a labq.Pick")
        out[role] = value
    return out


def plan(testbed: Testbed, roles: Mapping[str, str | Pick], default_queue: str,
         task: str = "task") -> Plan:
    """The queues that can serve ``roles``, with each role's candidates there.

    Raises :class:`~labq.errors.UnknownDevice` for an unknown name and
    :class:`~labq.errors.DeviceSelectionError` for a Pick that matches
    nothing, more Picks of one pool than it has members, or names that span
    segments.
    """
    named: dict[str, str] = {}
    picks: dict[str, Pick] = {}
    for role, value in roles.items():
        if isinstance(value, Pick):
            picks[role] = value
        else:
            named[role] = testbed.device(value).name
    twice = sorted({d for d in named.values() if list(named.values()).count(d) > 1})
    if twice:
        raise DeviceSelectionError(f"{task}: device {twice[0]!r} is named for two roles")
    queue_of = {d.name: d.queue or default_queue for d in testbed}
    fixed = {queue_of[d] for d in named.values()}
    if len(fixed) > 1:
        where = ", ".join(f"{role}={d!r} on {queue_of[d]!r}" for role, d in named.items())
        raise DeviceSelectionError(f"{task}: its devices span lab segments ({where}); all of a "
                                   "task's devices must be on one queue")
    members = {role: [d.name for d in pick.members(testbed) if d.name not in named.values()]
               for role, pick in picks.items()}
    queues = fixed or {queue_of[n] for names in members.values() for n in names}
    out: dict[str, tuple[Slot, ...]] = {}
    for queue in sorted(queues):
        slots = []
        for role in roles:
            if role in named:
                slots.append(Slot(role, (named[role],), True))
            else:
                here = tuple(n for n in members[role] if queue_of[n] == queue)
                slots.append(Slot(role, here, False))
        if all(s.candidates for s in slots) and assign(
                [s.candidates for s in slots], lambda d: True) is not None:
            out[queue] = tuple(slots)
    if not out:
        raise DeviceSelectionError(f"{task}: {_why_not(roles, picks, members, queue_of, fixed)}")
    return Plan(tuple(roles), out)


def _why_not(roles: Mapping[str, Any], picks: Mapping[str, Pick],
             members: Mapping[str, list[str]], queue_of: Mapping[str, str],
             fixed: set[str]) -> str:
    if fixed:
        (queue,) = fixed
        short = [f"{r}={picks[r]} has no device on {queue!r} (it matches "
                 f"{_where(members[r], queue_of) or 'only the named ones'})"
                 for r in picks if not any(queue_of[n] == queue for n in members[r])]
        if short:
            return "; ".join(short)
    pool = sorted({n for r in picks for n in members[r]})
    return (f"{len(picks)} Picks ({', '.join(f'{r}={picks[r]}' for r in picks)}) need "
            f"{len(picks)} different devices on one queue, and no queue has that many "
            f"among {_where(pool, queue_of)}")


def _where(names: Sequence[str], queue_of: Mapping[str, str]) -> str:
    shown = ", ".join(f"{n} on {queue_of[n]!r}" for n in names[:12])
    return shown + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def assign(candidates: Sequence[Sequence[str]], free: Any) -> list[str] | None:
    """One distinct device per slot, each from its candidates and ``free(d)``;
    None if there is none (a bipartite matching: Kuhn's augmenting paths)."""
    owner: dict[str, int] = {}

    def place(i: int, seen: set[str]) -> bool:
        for d in candidates[i]:
            if d in seen or not free(d):
                continue
            seen.add(d)
            if d not in owner or place(owner[d], seen):
                owner[d] = i
                return True
        return False

    for i in range(len(candidates)):
        if not place(i, set()):
            return None
    chosen = {i: d for d, i in owner.items()}
    return [chosen[i] for i in range(len(candidates))]
