"""Every name labq writes into Redis, in one table.

"retention" is ``run_retention`` (``LABQ_RUN_RETENTION``, 7 days) after the
run's last change: every writer of a run's key renews its expiry, and each
task's stored end renews them all (:mod:`labq.worker.backend`).

``{run}`` is a run id, ``{d}`` a device name, ``{h}`` a lease holder (normally
a Celery task id), ``{w}`` a worker's hostname (``name@host``).

==============================  ======  =====================================  ==========================
key                             type    holds                                  expires
==============================  ======  =====================================  ==========================
``labq:run:{run}:cancelled``    STRING  ``1`` once the run is cancelled        retention
``labq:run:{run}:started``      HASH    task id -> JSON start record           retention
                                        (at, worker, slot, pid)
``labq:run:{run}:fenced``       HASH    task id -> worker (or ``stopped``):    retention
                                        ids that must never run again
``labq:run:{run}:done``         STREAM  task id and state, one entry per end   retention; trimmed to
                                                                               ``DONE_STREAM_MAXLEN``
``labq:run:{run}:log``          STREAM  the tasks' log records                 retention; trimmed to
                                                                               ``LOG_STREAM_MAXLEN``
``labq:run:{run}:info``         HASH    the run's name, testscript, host,      retention
                                        pid, owner, priority, start and end
                                        times, state (open, done, cancelled)
                                        and queues: the run registry
``labq:run:{run}:tasks``        LIST    JSON [task id, task, device, queue,    retention
                                        queued at] in submit order
``labq:run:{run}:states``       HASH    task id -> final status, as the        retention
                                        worker stored it (the run's counts)
``labq:lease:{d}``              ZSET    holder -> lease expiry (ms)            at its last holder's expiry
``labq:lease:{d}:info``         HASH    holder -> JSON {task, worker, since}   with ``labq:lease:{d}``
``labq:wait:{d}``               ZSET    waiter -> first-wait time (ms), FIFO   waiter TTL (15 s), kept
                                                                               alive by polls
``labq:wait:{d}:seen``          HASH    waiter -> last poll (ms)               with ``labq:wait:{d}``
``labq:held:{h}``               SET     devices ``{h}`` holds                  lease TTL, renewed with
                                                                               the leases
``labq:waiting:{h}``            SET     devices ``{h}`` waits for              waiter TTL
``labq:devices``                SET     devices with any lease or waiter       none: members leave with
                                                                               their last lease or wait
``labq:wait:{d}:resv``          ZSET    the people (reservations) in           with ``labq:wait:{d}``
                                        ``labq:wait:{d}``: tasks behind one
                                        wait
``labq:reservations``           ZSET    reservation id -> expiry (ms)          none: members leave on
                                                                               release or expiry
``labq:reservations:devices``   HASH    reservation id -> JSON list of its     as ``labq:reservations``
                                        devices (for the sweep: the lease
                                        keys expire on their own)
``labq:reservations:log``       STREAM  forced releases: who, when, whose      never; trimmed to 1,000
``labq:run:{run}:holds``        HASH    task id -> JSON {id, token, devices,   retention
                                        until}: a failed task's devices held
                                        for the run's owner
``labq:health``                 HASH    device -> health state (good, bad,     none
                                        maintenance, retired; absent:
                                        unknown): the lease scripts read it
``labq:health:records``         HASH    device -> JSON {state, reason, since,  none
                                        by}: the current record
``labq:health:{d}:log``         STREAM  the device's health records, oldest    never; trimmed to
                                        first                                  ``HEALTH_LOG_MAXLEN``
``labq:waitsince:{h}``          STRING  a retried waiter's first-wait time     lease timeout + 60 s
``labq:parked:{h}``             HASH    a parked waiter's retry message, its   none: it leaves when
                                        queue's list, first-wait time and      woken (a message is
                                        candidates (with max_sessions)         never dropped)
``labq:parked``                 ZSET    parked waiter -> wake-by time (ms)     none: members leave
                                                                               when woken
``labq:watch:{d}``              ZSET    parked waiter -> first-wait time (ms)  none: members leave
                                                                               when woken
``labq:fair:q:{q}:backlog:{run}`` LIST  a run's messages for queue ``{q}`` not  none: emptied by the
                                        yet on it, oldest at the right         dispatch (or a cancel)
``labq:fair:q:{q}:runs:{c}``    ZSET    runs of class ``{c}`` (0 high, 1       none: members leave
                                        normal, 2 low) waiting on ``{q}`` ->   with their backlog
                                        pass (dispatches had)
``labq:fair:q:{q}:age``         ZSET    waiting run -> last dispatch (ms)      as ``runs``
``labq:fair:q:{q}:rank``        HASH    waiting run -> its class               as ``runs``
``labq:fair:q:{q}:gone:{c}``    ZSET    runs that stopped waiting -> pass      pruned when they would
                                                                               rejoin at the floor
``labq:fair:q:{q}:clock``       HASH    class -> pass of its last dispatch     none (3 fields)
``labq:fair:q:{q}:workers``     SET     workers consuming ``{q}``              members leave when
                                                                               their heartbeat ends
``labq:fair:queues``            SET     queues with waiting backlogs           members leave when
                                                                               the last run drains
``labq:fair:slots``             HASH    worker -> pool size                    as ``alive``
``labq:fair:busy``              HASH    worker -> busy slots (children count,  as ``alive``
                                        each heartbeat corrects)
``labq:fair:alive``             ZSET    worker -> heartbeat expiry (ms)        pruned by the scripts
``labq:worker:{w}``             HASH    a worker's heartbeat (host, pid,       ``worker_ttl``
                                        queues, pool size, busy, times)
``labq:workers``                HASH    worker -> its heartbeat TTL: the       none: a worker leaves on
                                        workers the reapers watch              a clean stop or reaped
``labq:running:{w}``            HASH    task id -> JSON {run, task, queue,     none: pruned by each
                                        at, idem}: the run tasks ``{w}``       heartbeat, deleted once
                                        started                                ``{w}`` is reaped
``labq:reaping:{w}``            STRING  the worker reaping dead ``{w}``        30 s
``labq:run:{run}:reruns``       HASH    task id -> the id it runs again in     retention
                                        place of (after its worker died)
==============================  ======  =====================================  ==========================

The lease scripts (:mod:`labq.devices.lease_scripts`) derive the keys of other
devices and holders inside Redis, from :data:`PREFIX` and the suffixes below
(``lease:``, ``wait:``, ``held:``, ``waiting:``, ``devices``, ``parked``,
``watch:``), so leases need a single, non-cluster Redis; the fair-share
scripts (:mod:`labq.fairshare.scripts`) likewise derive every ``labq:fair:``
key from :data:`FAIR_PREFIX`, and the exporter's count script
(:mod:`labq.ops.metrics`) reads ``lease:`` and ``wait:`` keys the same way.
``tests/integration/test_lease.py`` holds the two spellings together, and
``tests/unit/test_layout.py`` keeps every key literal of labq's in this module.

Celery and kombu own the other keys labq reads: results
(:data:`RESULT_PREFIX`), queues and their bindings (:data:`BINDING_PREFIX`),
and the unacknowledged messages (:data:`UNACKED_KEY`).
"""

from __future__ import annotations

#: Every labq key starts with this; the lease scripts take it as ``ARGV[1]``.
PREFIX = "labq:"

#: Entries kept in a run's log stream.
LOG_STREAM_MAXLEN = 10000
#: Entries kept in a run's done stream; a client more than this far behind
#: still finds every result by its fallback read.
DONE_STREAM_MAXLEN = 100000

# -- reserved keyword arguments of task messages -----------------------------
# They travel in every task of a run (Flower filters on kwargs:labq_run=<id>)
# and are taken off before the task body runs.

#: The run a task belongs to.
RUN_KWARG = "labq_run"
#: The testscript that submitted it.
SCRIPT_KWARG = "labq_script"
#: Who the run is for, and its priority: shown in Flower with the task.
OWNER_KWARG = "labq_owner"
PRIORITY_KWARG = "labq_priority"
#: Seconds a failed task's devices stay reserved for the owner (absent: none).
HOLD_KWARG = "labq_hold"
#: Every reserved keyword argument.
RESERVED_KWARGS = (RUN_KWARG, SCRIPT_KWARG, OWNER_KWARG, PRIORITY_KWARG, HOLD_KWARG)


# -- runs ---------------------------------------------------------------------

def run_key(run_id: str, part: str) -> str:
    return f"{PREFIX}run:{run_id}:{part}"


def cancel_key(run_id: str) -> str:
    """Set once the run is cancelled: queued tasks check it before they start."""
    return run_key(run_id, "cancelled")


def starts_key(run_id: str) -> str:
    """Each task's start record: when, which worker and prefork slot."""
    return run_key(run_id, "started")


def fenced_key(run_id: str) -> str:
    """Task ids declared lost with a dead worker, or stopped from outside: they must never run."""
    return run_key(run_id, "fenced")


def info_key(run_id: str) -> str:
    """What a run is and where its tasks went, for ``labq cancel`` from another shell."""
    return run_key(run_id, "info")


def info_pattern(prefix: str) -> str:
    """A ``SCAN`` pattern for the info keys of the runs whose id starts with ``prefix``."""
    escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix)
    return run_key(f"{escaped}*", "info")


def tasks_key(run_id: str) -> str:
    """The run's tasks in submit order, written with their publish (``Run.attach`` reads it)."""
    return run_key(run_id, "tasks")


def states_key(run_id: str) -> str:
    """Each task's final status, written with its stored result: the run's counts."""
    return run_key(run_id, "states")


#: The status in ``states_key`` of a task a dead worker's peer sent again
#: under a new id: it counts as neither lost nor pending.
RERUN_STATUS = "rerun"


def reruns_key(run_id: str) -> str:
    """Tasks sent again after their worker died: new id -> the id they replace."""
    return run_key(run_id, "reruns")


def run_of_info_key(key: str) -> str:
    """The run id in an info key (``labq:run:<id>:info``)."""
    return key.removeprefix(f"{PREFIX}run:").removesuffix(":info")


def log_key(run_id: str) -> str:
    """The run's tasks' log records, read by the testscript while it waits."""
    return run_key(run_id, "log")


def done_key(run_id: str) -> str:
    """The run's task ids, each added once its result is stored: the client
    blocks on this stream instead of polling every result key."""
    return run_key(run_id, "done")


# -- device leases ------------------------------------------------------------

#: Devices with any lease or waiter, for ``labq devices`` and ``labq status``.
DEVICES_KEY = PREFIX + "devices"
#: Suffixes of a device's info and seen hashes; a device name must not end in one.
RESERVED_SUFFIXES = (":info", ":seen", ":resv")


def lease_keys(device: str) -> tuple[str, str, str, str]:
    """The (lease, info, wait, seen) keys of ``device``."""
    return (f"{PREFIX}lease:{device}", f"{PREFIX}lease:{device}:info",
            f"{PREFIX}wait:{device}", f"{PREFIX}wait:{device}:seen")


def held_key(holder: str) -> str:
    """The devices ``holder`` holds, for ``release_all``."""
    return f"{PREFIX}held:{holder}"


def waiting_key(holder: str) -> str:
    """The devices ``holder`` waits for, for ``release_all``."""
    return f"{PREFIX}waiting:{holder}"


#: Parked waiters by the time they must be woken at the latest (ms).
PARKED_KEY = PREFIX + "parked"


def parked_key(holder: str) -> str:
    """A parked waiter's retry message, its queue's list and what would serve it."""
    return f"{PREFIX}parked:{holder}"


def watch_key(device: str) -> str:
    """The parked waiters that a change of ``device`` may serve, by first-wait time."""
    return f"{PREFIX}watch:{device}"


#: A person's reservation holds leases as ``resv:<id>`` (the scripts test the prefix).
RESERVATION_HOLDER = "resv:"
#: Reservations by expiry (ms), swept by the workers.
RESERVATIONS_KEY = PREFIX + "reservations"
#: Reservation id -> JSON list of its devices, for the expiry sweep.
RESERVATION_DEVICES_KEY = PREFIX + "reservations:devices"
#: Forced releases, for the record.
RESERVATION_LOG_KEY = PREFIX + "reservations:log"
RESERVATION_LOG_MAXLEN = 1000


def holds_key(run_id: str) -> str:
    """The run's failed tasks whose devices were held for its owner (``hold_on_failure``)."""
    return run_key(run_id, "holds")


#: Each device's health state; the lease scripts refuse new work on a blocking one.
HEALTH_KEY = PREFIX + "health"
#: Each device's health record (state, reason, since, by), as JSON.
HEALTH_RECORDS_KEY = PREFIX + "health:records"
#: Entries kept in a device's health history.
HEALTH_LOG_MAXLEN = 100


def health_log_key(device: str) -> str:
    """``device``'s health history (labq.devices.health)."""
    return f"{PREFIX}health:{device}:log"


def wait_since_key(holder: str) -> str:
    """A waiter's first-wait time, kept across the retries that give its slot back."""
    return f"{PREFIX}waitsince:{holder}"


# -- fair share ---------------------------------------------------------------

#: Prefix of every fair-share key; the scripts take it as ``ARGV[1]``.
FAIR_PREFIX = PREFIX + "fair:"
#: Queues with runs waiting in backlogs.
FAIR_QUEUES_KEY = FAIR_PREFIX + "queues"
#: Workers' pool sizes, busy slots and heartbeat expiries.
FAIR_SLOTS_KEY = FAIR_PREFIX + "slots"
FAIR_BUSY_KEY = FAIR_PREFIX + "busy"
FAIR_ALIVE_KEY = FAIR_PREFIX + "alive"


def fair_queue_key(queue: str, part: str) -> str:
    """A fair-share key of ``queue`` (``runs:1``, ``rank``, ``workers``, ...)."""
    return f"{FAIR_PREFIX}q:{queue}:{part}"


def backlog_key(queue: str, run_id: str) -> str:
    """The messages of ``run_id`` for ``queue`` that wait for their turn."""
    return fair_queue_key(queue, f"backlog:{run_id}")


# -- workers ------------------------------------------------------------------

#: Prefix of the heartbeat hashes; ``SCAN`` with ``WORKER_PREFIX*`` finds them all.
WORKER_PREFIX = PREFIX + "worker:"


def worker_key(hostname: str) -> str:
    """One worker's heartbeat."""
    return f"{WORKER_PREFIX}{hostname}"


#: Every worker the reapers watch, with its heartbeat TTL (labq.worker.reaper).
WORKERS_KEY = PREFIX + "workers"


def running_key(hostname: str) -> str:
    """The run tasks a worker started (pruned as they end): what a reaper settles."""
    return f"{PREFIX}running:{hostname}"


def reaping_key(hostname: str) -> str:
    """The lock of the one worker that settles dead ``hostname``'s tasks."""
    return f"{PREFIX}reaping:{hostname}"


# -- Celery's and kombu's own keys that labq reads ---------------------------

#: A task's result (Celery's Redis backend; labq's backend writes the same key).
RESULT_PREFIX = "celery-task-meta-"
#: kombu's binding table of each exchange: the queues it routes to.
BINDING_PREFIX = "_kombu.binding."
#: kombu's hash of the messages workers have taken and not yet acknowledged.
UNACKED_KEY = "unacked"
#: kombu's sorted set of those messages by the time they were taken.
UNACKED_INDEX_KEY = "unacked_index"
