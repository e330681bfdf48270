"""The reaper's rules (labq.worker.reaper) against a real Redis, without
workers: which of a dead worker's entries it settles and how, once; when a
worker counts as dead; and the heartbeat's pruning of ended entries. The
end to end cases (SIGKILLed hosts, no testscript alive) are in
test_host_death.py, test_run_lifetime.py and tests/multihost.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import redis

from labq.app import LabqCelery
from labq.devices.lease import Grant, Leases
from labq.keys import (
    RERUN_STATUS,
    RESULT_PREFIX,
    UNACKED_KEY,
    WORKERS_KEY,
    fenced_key,
    parked_key,
    reruns_key,
    running_key,
    starts_key,
    states_key,
    tasks_key,
    worker_key,
)
from labq.settings import Settings
from labq.worker.liveness import PRUNE_RUNNING
from labq.worker.reaper import Reaper, Running

RUN = "reap-run"
DEAD = "dead@host"


@pytest.fixture()
def settings(lone_app: LabqCelery, tmp_path: Path) -> Settings:
    return Settings.load(env={}, config_file=os.devnull, state_dir=tmp_path,
                         broker_url=lone_app.conf.broker_url, worker_ttl=2.0)


def start(client: redis.Redis, task_id: str, worker: str = DEAD, *, task: str = "tasks.x",
          idempotent: bool = False, queue: str = "q1", at: float | None = None) -> None:
    """What a task's start pipeline writes (labq.worker.task_base)."""
    client.hset(starts_key(RUN), task_id, json.dumps({"at": time.time(), "worker": worker}))
    entry = json.loads(Running.entry(RUN, task, queue, idempotent))
    if at is not None:
        entry["at"] = at
    client.hset(running_key(worker), task_id, json.dumps(entry))


def taken(app: LabqCelery, client: redis.Redis, task_id: str, queue: str = "q1") -> str:
    """Publish ``task_id`` and take its message as a consumer does: off the
    queue into kombu's ``unacked`` hash. Returns its delivery tag."""
    app.send_task("tasks.diag.nap", kwargs={"seconds": 1, "labq_run": RUN}, task_id=task_id,
                  queue=queue)
    message = json.loads(client.rpop(queue))
    tag = message["properties"]["delivery_tag"]
    client.hset(UNACKED_KEY, tag, json.dumps([message, "", queue]))
    return str(tag)


def meta(client: redis.Redis, task_id: str) -> dict[str, object] | None:
    raw = client.get(f"{RESULT_PREFIX}{task_id}")
    return json.loads(raw) if raw else None


def test_a_dead_workers_entries_are_settled_by_their_kind_once(
        redis_client: redis.Redis, lone_app: LabqCelery, settings: Settings) -> None:
    c = redis_client
    start(c, "plain")
    assert isinstance(Leases(c).acquire("r1", "plain", 1), Grant)
    start(c, "idem", idempotent=True)
    tag = taken(lone_app, c, "idem")
    start(c, "elsewhere")
    c.hset(starts_key(RUN), "elsewhere", json.dumps({"worker": "other@host"}))
    start(c, "parked")
    c.hset(parked_key("parked"), "message", "x")
    start(c, "ended")
    c.set(f"{RESULT_PREFIX}ended", json.dumps({"status": "SUCCESS", "result": 1}))
    c.hset(WORKERS_KEY, DEAD, 2)

    reaper = Reaper(c, "live@host", settings)
    assert reaper.reap(DEAD) == 2
    # Lost: fenced, its lease freed, its end stored and counted.
    lost = meta(c, "plain")
    assert lost is not None and lost["status"] == "FAILURE" and lost["labq_reaped"]
    assert lost["result"]["exc_type"] == "WorkerLostError"  # type: ignore[index]
    assert "labq_rerun" not in lost and DEAD in str(lost["result"])
    assert Leases(c).holders("r1") == []
    assert c.hget(fenced_key(RUN), "plain") == DEAD.encode()
    assert c.hget(states_key(RUN), "plain") == b"lost"
    # Idempotent: the same message once more under a new id, in the registry.
    rerun = meta(c, "idem")
    assert rerun is not None and rerun["labq_rerun"]
    new_id = str(rerun["labq_rerun"])
    (queued,) = [json.loads(m) for m in c.lrange("q1", 0, -1)]
    assert queued["headers"]["id"] == new_id and queued["headers"]["task"] == "tasks.diag.nap"
    assert queued["properties"]["correlation_id"] == new_id
    assert queued["properties"]["delivery_tag"] != tag
    original = json.loads(json.loads(c.hget(UNACKED_KEY, tag) or b"null") or "null")
    assert original is None, "the old message stays unacked"
    assert c.hget(reruns_key(RUN), new_id) == b"idem"
    assert c.hget(states_key(RUN), "idem") == RERUN_STATUS.encode()
    entry = json.loads(c.lrange(tasks_key(RUN), -1, -1)[0])
    assert entry[0] == new_id and entry[5] == "idem"
    # Started again elsewhere, parked, or ended: not its to settle.
    for untouched in ("elsewhere", "parked"):
        assert meta(c, untouched) is None and not c.hexists(fenced_key(RUN), untouched)
    assert meta(c, "ended") == {"status": "SUCCESS", "result": 1}
    # Done with it: the worker leaves the watch list; a second reap finds nothing.
    assert not c.exists(running_key(DEAD)) and not c.hexists(WORKERS_KEY, DEAD)
    assert reaper.reap(DEAD) == 0 and len(c.lrange("q1", 0, -1)) == 1


def test_a_rerun_whose_worker_dies_too_is_lost_not_run_a_third_time(
        redis_client: redis.Redis, lone_app: LabqCelery, settings: Settings) -> None:
    c = redis_client
    start(c, "first", idempotent=True)
    taken(lone_app, c, "first")
    Reaper(c, "live@host", settings).reap(DEAD)
    new_id = str((meta(c, "first") or {})["labq_rerun"])
    c.delete("q1")
    start(c, new_id, worker="second@host", idempotent=True)
    taken(lone_app, c, new_id)
    assert Reaper(c, "live@host", settings).reap("second@host") == 1
    last = meta(c, new_id)
    assert last is not None and "labq_rerun" not in last and last["status"] == "FAILURE"
    assert c.llen("q1") == 0


def test_a_late_end_from_a_returning_host_does_not_replace_the_settled_one(
        redis_client: redis.Redis, lone_app: LabqCelery, settings: Settings) -> None:
    c = redis_client
    start(c, "cut")
    Reaper(c, "live@host", settings).reap(DEAD)
    lone_app.backend.store_result("cut", 42, "SUCCESS")
    settled = meta(c, "cut")
    assert settled is not None and settled["status"] == "FAILURE" and settled["labq_reaped"]


def test_many_reapers_settle_each_task_once(
        redis_client: redis.Redis, lone_app: LabqCelery, settings: Settings) -> None:
    c = redis_client
    for i in range(40):
        start(c, f"t{i}", idempotent=i % 2 == 0)
        if i % 2 == 0:
            taken(lone_app, c, f"t{i}")
    c.hset(WORKERS_KEY, DEAD, 2)
    counts: list[int] = []

    def reap(n: int) -> None:
        counts.append(Reaper(redis.Redis.from_url(settings.broker_url), f"live{n}@host",
                             settings).reap(DEAD))

    threads = [threading.Thread(target=reap, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 40 and sorted(counts)[-1] == 40  # one reaper, under the lock
    assert c.llen("q1") == 20 and c.hlen(reruns_key(RUN)) == 20


def test_a_worker_is_dead_after_its_heartbeat_stays_gone_half_its_ttl(
        redis_client: redis.Redis, settings: Settings) -> None:
    c = redis_client
    c.hset(WORKERS_KEY, mapping={DEAD: 2, "alive@host": 2, "live@host": 2})
    c.set(worker_key("alive@host"), 1)
    reaper = Reaper(c, "live@host", settings)
    assert reaper.dead() == []  # missing since now: a Redis restart looks the same
    time.sleep(0.6)
    assert reaper.dead() == []
    time.sleep(0.5)
    assert reaper.dead() == [DEAD]  # never itself, never one that beats
    c.set(worker_key(DEAD), 1)
    assert reaper.dead() == []


def test_a_worker_restarted_under_its_name_settles_what_its_former_self_left(
        redis_client: redis.Redis, settings: Settings) -> None:
    c = redis_client
    start(c, "before", worker="me@host", at=time.time() - 5)
    start(c, "mine-now", worker="me@host")
    reaper = Reaper(c, "me@host", settings, started_at=time.time() - 1)
    assert reaper.settle_former_self() == 1
    assert (meta(c, "before") or {}).get("labq_reaped") and meta(c, "mine-now") is None
    assert c.hexists(running_key("me@host"), "mine-now")


def test_each_heartbeat_prunes_the_entries_that_ended(redis_client: redis.Redis) -> None:
    c = redis_client
    now = time.time()
    for task_id, at in (("ended", now - 10), ("running", now - 10), ("young", now)):
        c.hset(running_key("w@h"), task_id, json.dumps({"run": RUN, "task": "x", "at": at}))
    c.hset(running_key("w@h"), "garbled", "not json")
    c.eval(PRUNE_RUNNING, 1, running_key("w@h"), now - 2, "running")
    assert sorted(k.decode() for k in c.hkeys(running_key("w@h"))) == ["running", "young"]
