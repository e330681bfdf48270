"""``labq.pcall``: pyATS's ``pcall`` across the lab instead of one host.

Same signature and argument rules as ``pyats.async_.pcall``: the number of
calls is the shortest of the targets (when more than one), ``iargs``,
``ikwargs`` and each ``varkwargs`` list; common ``cargs`` come first, then
each call's own ``iargs``; ``ckwargs`` are overridden by ``ikwargs``, then by
``varkwargs``. Results come back as a tuple in call order.

Unlike pyATS, a timeout keeps what finished: the rest is cancelled (soft
interrupt, then hard kill) and :class:`~labq.RunTimeout` carries every
outcome. A failed call raises :class:`~labq.TaskFailed` at once, after
cancelling the calls still in flight. Ctrl-C or SIGTERM cancels the calls,
prints what finished and ends the testscript with 130 or 143
(:class:`~labq.errors.RunInterrupted`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from labq.client.interrupts import sigterm_interrupts
from labq.client.run import Run
from labq.errors import RunInterrupted, SubmitError, TaskFailed


def expand_calls(targets: Any, cargs: Sequence[Any], iargs: Sequence[Sequence[Any]],
                 ckwargs: Mapping[str, Any] | None, ikwargs: Sequence[Mapping[str, Any]],
                 varkwargs: Mapping[str, Iterable[Any]]) -> list[tuple[Any, tuple[Any, ...],
                                                                     dict[str, Any]]]:
    """The (target, args, kwargs) of each call, by pyATS's rules."""
    many_targets = isinstance(targets, (list, tuple))
    lengths = [len(targets)] if many_targets and len(targets) > 1 else []
    if iargs:
        lengths.append(len(iargs))
    if ikwargs:
        lengths.append(len(ikwargs))
    var = {k: list(v) for k, v in varkwargs.items()}
    lengths += [len(v) for v in var.values()]
    if not lengths:
        raise SubmitError("pcall needs several targets, or iargs, ikwargs or a list keyword "
                          "argument, to know how many calls to make")
    count = min(lengths)
    calls = []
    for i in range(count):
        target = (targets[i] if len(targets) > 1 else targets[0]) if many_targets else targets
        args = (*cargs, *(iargs[i] if iargs else ()))
        kwargs = {**(ckwargs or {}), **(ikwargs[i] if ikwargs else {}),
                  **{k: v[i] for k, v in var.items()}}
        calls.append((target, args, kwargs))
    return calls


def pcall(targets: Any, timeout: float | None = None, cargs: Sequence[Any] = (),
          iargs: Sequence[Sequence[Any]] = (), ckwargs: Mapping[str, Any] | None = None,
          ikwargs: Sequence[Mapping[str, Any]] = (), *, run: Run | None = None,
          **varkwargs: Iterable[Any]) -> tuple[Any, ...]:
    """Call each target in parallel on the lab's workers; a tuple of results in call order."""
    calls = expand_calls(targets, cargs, iargs, ckwargs, ikwargs, varkwargs)
    owned = run is None
    active = run if run is not None else Run("pcall")
    # An owned run stops on Ctrl-C or SIGTERM as a with-block run does.
    with sigterm_interrupts() if owned else nullcontext():
        try:
            return _gather(active, calls, timeout)
        except RunInterrupted:
            raise
        except KeyboardInterrupt as exc:
            if owned:
                active.stop(exc)
            raise
        except BaseException:
            if owned:
                active.cancel()
            raise
        finally:
            if owned:
                active.close()


def _gather(active: Run, calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]],
            timeout: float | None) -> tuple[Any, ...]:
    if len({id(t) for t, _, _ in calls}) == 1 and not any(a for _, a, _ in calls):
        # One target, keyword arguments only: one validated batch, pipelined.
        ids = active.submit_many(calls[0][0], [k for _, _, k in calls])
    else:
        ids = [active.submit(t, *a, **k) for t, a, k in calls]

    def ours() -> set[str]:  # a task run again after its host died has a new id
        return {active.reruns.get(i, i) for i in ids}

    for outcome in active.as_completed(timeout=timeout):
        if outcome.task_id in ours() and not outcome.ok:
            active.cancel()
            wanted = ours()
            raise TaskFailed(outcome, [o for o in active.outcomes if o.task_id in wanted])
    by_id = {o.task_id: o for o in active.outcomes}
    return tuple(by_id[active.reruns.get(i, i)].value for i in ids)
