"""Redis ACL users of config/users.acl: each role can do its job and no more.

A redis-server runs the shipped config/redis.conf and config/users.acl. The
``client`` user (testscripts) cannot read or delete device leases, the
``flower`` user cannot write task queues, and a real run goes end to end
with workers as ``worker``, the run as ``client`` and Flower as ``flower``,
without a single refusal in Redis's ACL log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis_roles import AclRedis, Roles, client_for, redis_server_major

import labq
from conftest import lab_testbed, need, stack_settings
from labq import cli
from labq.devices.lease import Leases
from labq.embedded.sim.process import SimProcess
from labq.embedded.stack import node_name
from labq.keys import cancel_key, held_key, lease_keys, worker_key
from tasks import diag
from tasks.device import execute


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[AclRedis]:
    # Read-only key patterns (%R~) and selectors came with Redis 7.
    need(redis_server_major() >= 7, "config/users.acl needs redis-server 7 or later on PATH")
    s = AclRedis(tmp_path / "redis").start()
    yield s
    s.stop()


@pytest.fixture()
def admin(server: AclRedis) -> Iterator[redis.Redis]:
    c = client_for(server, "admin")
    yield c
    c.close()


def refused(call: object, *args: object) -> bool:
    try:
        call(*args)  # type: ignore[operator]
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_default_user_is_off(server: AclRedis) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=server.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()


def test_client_cannot_read_or_delete_leases(server: AclRedis, admin: redis.Redis) -> None:
    worker = client_for(server, "worker")
    grant = Leases(worker).acquire("r1", "task-1", 1, task="tasks.device.execute", worker="w1")
    assert isinstance(grant, labq.devices.lease.Grant)
    worker.set("labq:waitsince:task-2", "1")
    lease, info, wait, seen = lease_keys("r1")
    client = client_for(server, "client")
    reads = [(client.zrange, lease, 0, -1), (client.zscore, lease, "task-1"),
             (client.hgetall, info), (client.zrange, wait, 0, -1), (client.hgetall, seen),
             (client.smembers, held_key("task-1")), (client.smembers, "labq:devices"),
             (client.get, "labq:waitsince:task-2"), (client.dump, lease)]
    for call, *args in reads:
        assert refused(call, *args), f"client may {call.__name__} {args}"
    for key in (lease, info, held_key("task-1"), "labq:devices", "labq:waitsince:task-2"):
        assert refused(client.delete, key), f"client may delete {key}"
        assert refused(client.unlink, key), f"client may unlink {key}"
        assert refused(client.expire, key, 1), f"client may expire {key}"
    # Not through the lease scripts either: Redis checks a script's keys too.
    with pytest.raises(redis.exceptions.ResponseError, match=r"NOPERM|permission"):
        Leases(client).release_all("task-1")
    with pytest.raises(redis.exceptions.ResponseError, match=r"NOPERM|permission"):
        Leases(client).snapshot()
    assert [h.holder for h in Leases(worker).holders("r1")] == ["task-1"]
    # What a testscript does need: queues, its run's keys, results, heartbeats.
    client.lpush("lab-a", "x")
    client.lpush("labq", "x")
    client.set(cancel_key("run-1"), "1")
    client.get("celery-task-meta-abc")
    worker.hset(worker_key("w1@host"), "host", "host")
    assert client.hgetall(worker_key("w1@host")) == {b"host": b"host"}
    assert refused(client.hset, worker_key("w1@host"), "host", "forged")
    assert refused(client.flushall)
    assert refused(client.keys, "*")


def test_flower_cannot_write_queues(server: AclRedis) -> None:
    worker = client_for(server, "worker")
    worker.lpush("lab-a", "queued")
    Leases(worker).acquire("r1", "task-1", 1)
    flower = client_for(server, "flower")
    for queue in ("lab-a", "labq", "lab-a\x06\x163"):
        assert refused(flower.lpush, queue, "forged"), f"flower may push onto {queue}"
        assert refused(flower.rpop, queue), f"flower may pop {queue}"
        assert refused(flower.delete, queue), f"flower may delete {queue}"
    assert refused(flower.lrem, "lab-a", 0, "queued")
    assert refused(flower.sadd, "_kombu.binding.lab-a", "forged")
    assert refused(flower.hdel, "unacked", "tag")
    assert refused(flower.set, cancel_key("run-1"), "1")
    assert refused(flower.delete, lease_keys("r1")[0])
    assert refused(flower.set, "celery-task-meta-abc", "{}")
    # Monitoring reads everything.
    assert flower.llen("lab-a") == 1
    assert flower.zrange(lease_keys("r1")[0], 0, -1) == [b"task-1"]
    assert refused(flower.config_get, "*")


def test_config_masks_acl_passwords(server: AclRedis) -> None:
    for user in ("worker", "client", "flower"):
        result = CliRunner().invoke(cli.main, ["config", "--json"], catch_exceptions=False,
                                    env={"LABQ_BROKER_URL": server.url(user),
                                         "LABQ_CONFIG": os.devnull})
        assert result.exit_code == 0, result.output
        assert server.passwords[user] not in result.output
        shown = json.loads(result.output)["broker_url"]
        assert shown == f"redis://{user}:****@127.0.0.1:{server.port}/0"


@pytest.fixture()
def roles(server: AclRedis, tmp_path: Path) -> Iterator[Roles]:
    testbed = lab_testbed(tmp_path / "testbed.yaml")
    base = stack_settings(tmp_path, testbed=testbed)
    with SimProcess(testbed, state_dir=tmp_path / "sim"):
        r = Roles(base, server).start()
        yield r
        r.stop()


def test_run_end_to_end_as_three_users(roles: Roles, server: AclRedis,
                                       admin: redis.Redis) -> None:
    admin.acl_log_reset()
    with labq.Run("acl", settings=roles.settings("client"), progress=False) as run:
        for device in ("a1", "b1", "f1"):
            run.submit(execute, device=device, command="show version")
        run.submit_many(diag.echo, [{"value": i} for i in range(3)])
    assert [o.status for o in run.outcomes] == [labq.Status.SUCCEEDED] * 6, run.outcomes
    by_device = {o.device: o.worker for o in run.outcomes if o.device}
    assert by_device["a1"] == node_name("lab-a") and by_device["b1"] == node_name("lab-b")

    # A cancel: the flag, the purge of queued messages and the revoke broadcast.
    run = labq.Run("acl-cancel", settings=roles.settings("client"), progress=False)
    try:
        for _ in range(8):
            run.submit(diag.sleep, seconds=30)
        run.cancel(grace=2)
        odd = [(o.status, o.error and (o.error.type, o.error.message, o.error.traceback))
               for o in run.outcomes if o.status is not labq.Status.CANCELLED]
        assert odd == []
    finally:
        run.close()

    # Flower as `flower`: its API answers, and its control commands reach the workers.
    workers = json.loads(roles.flower("/api/workers?refresh=1"))
    assert set(workers) >= {node_name("lab-a"), node_name("lab-b")}
    queues = json.loads(roles.flower("/api/queues/length"))["active_queues"]
    assert {q["name"] for q in queues} >= {"lab-a", "lab-b", "labq"}
    grown = roles.flower(f"/api/worker/pool/grow/{node_name('lab-a')}?n=1", method="POST")
    assert "Growing" in grown
    roles.flower(f"/api/worker/pool/shrink/{node_name('lab-a')}?n=1", method="POST")
    roles.flower("/api/task/revoke/not-a-task", method="POST")
    roles.check_alive()

    # Nothing any role did was refused (and a refusal would be logged).
    assert admin.acl_log() == []
    assert refused(client_for(server, "flower").lpush, "labq", "forged")
    assert len(admin.acl_log()) == 1
