"""Fair share between runs: per-run backlogs in Redis, a bounded window on each queue.

:mod:`labq.fairshare.backlogs` is the Python face, :mod:`labq.fairshare.scripts`
the Lua behind it, :mod:`labq.fairshare.priority` a run's class.
"""
