"""A run's priority: which class of runs takes a free slot first."""

from __future__ import annotations

from enum import Enum

from labq.errors import SubmitError


class Priority(str, Enum):
    """``high`` runs take free slots before ``normal``, ``normal`` before ``low``."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for high, 1 for normal, 2 for low: the class the fair-share scripts use."""
        return _RANKS[self]

    @classmethod
    def parse(cls, value: object) -> Priority:
        """``value`` as a priority; :class:`SubmitError` naming it when it is none."""
        if isinstance(value, Priority):
            return value
        try:
            return cls(str(value).strip().lower()) if isinstance(value, str) else cls(value)
        except ValueError:
            names = ", ".join(repr(p.value) for p in cls)
            raise SubmitError(f"priority={value!r}: must be one of {names}") from None


_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
