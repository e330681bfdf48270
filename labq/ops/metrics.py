"""Lab metrics for Prometheus: what Flower's ``/metrics`` does not know.

:class:`LabCollector` reads Redis at each scrape (read commands only, so the
``flower`` ACL user will do) and yields:

========================  ================  ==========================================
metric                    labels            value
========================  ================  ==========================================
``labq_device_health``    device, state     1, for the device's current health state
``labq_device_leases``    device            live lease holders
``labq_device_waiters``   device            tasks (and people) in the device's line
``labq_queue_depth``      queue             messages on the queue's list plus those
                                            waiting in fair-share backlogs
``labq_queue_consumers``  queue             live workers that consume the queue
``labq_worker_slots``     worker, state     prefork slots ``busy`` or ``idle``
``labq_run_tasks``        run, status       the tasks of each open run by status
========================  ================  ==========================================

Runs leave the metrics when they end (state ``done`` or ``cancelled``), so
the ``run`` label stays bounded by the runs in flight.
:func:`serve` is ``labq exporter``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from labq.devices.testbed_yaml import load_testbed
from labq.errors import BrokerUnavailable
from labq.fairshare.backlogs import Backlogs
from labq.keys import HEALTH_KEY, PREFIX
from labq.ops.run_list import run_rows
from labq.redis_client import connect, text, unavailable
from labq.settings import Settings
from labq.worker.liveness import read_workers

log = logging.getLogger(__name__)

# ARGV: now (ms), the key prefix, then device names. Read-only: each device's
# live holders and its line's length, flat. One script instead of a pipeline
# of two commands per device: at 1,000 devices, packing those took longer
# than Redis did to answer them.
COUNTS = """
local now, P, out = ARGV[1], ARGV[2], {}
for i = 3, #ARGV do
  local d = ARGV[i]
  out[#out + 1] = redis.call('ZCOUNT', P..'lease:'..d, '(' .. now, '+inf')
  out[#out + 1] = redis.call('ZCARD', P..'wait:'..d)
end
return out
"""


class LabCollector(Collector):
    """Reads the lab's state from Redis at each scrape (see the module)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or connect(settings.broker_url, settings, socket_timeout=5)
        #: The testbed's device names and queues, kept until the file changes:
        #: parsing a 1,000-device testbed would take most of a scrape.
        self._testbed: tuple[tuple[str, int, float], list[str], set[str]] | None = None
        self._counts = self.client.register_script(COUNTS)

    def _devices(self) -> tuple[list[str], set[str]]:
        path = Path(self.settings.testbed)
        st = path.stat() if path.exists() else None
        stamp = (str(path), st.st_size if st else 0, st.st_mtime if st else 0.0)
        if self._testbed is None or self._testbed[0] != stamp:
            testbed = load_testbed(path)
            self._testbed = (stamp, sorted(testbed.devices),
                             {d.queue for d in testbed if d.queue})
        return self._testbed[1], self._testbed[2]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"metrics: {unavailable(self.settings.broker_url, exc, self.settings)}") from exc

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        names, testbed_queues = self._devices()
        now_ms = int(time.time() * 1000)
        states: list[Any] = []
        counts: list[Any] = []
        if names:
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(HEALTH_KEY, names)
            pipe.evalsha(self._counts.sha, 0, now_ms, PREFIX, *names)
            replies = pipe.execute(raise_on_error=False)
            if isinstance(replies[1], redis.exceptions.NoScriptError):
                replies[1] = self._counts(args=[now_ms, PREFIX, *names])  # loads it
            elif isinstance(replies[1], Exception):
                raise replies[1]
            states, counts = replies
        health = GaugeMetricFamily("labq_device_health", "Device health state (1 for the "
                                   "current one; never checked: unknown)", labels=["device", "state"])
        leases = GaugeMetricFamily("labq_device_leases", "Live lease holders of the device",
                                   labels=["device"])
        waiters = GaugeMetricFamily("labq_device_waiters", "Tasks and people in the device's "
                                    "line", labels=["device"])
        for i, name in enumerate(names):
            health.add_metric([name, text(states[i]) if states[i] else "unknown"], 1)
            leases.add_metric([name], int(counts[2 * i]))  # unexpired holders only
            waiters.add_metric([name], int(counts[2 * i + 1]))
        yield health
        yield leases
        yield waiters
        yield from self._queues_and_workers(testbed_queues)
        runs = GaugeMetricFamily("labq_run_tasks", "Tasks of each open run, by status",
                                 labels=["run", "status"])
        for row in run_rows(self.client, state="open"):
            for status, count in row["counts"].items():
                runs.add_metric([row["id"], status], count)
        yield runs

    def _queues_and_workers(self, testbed_queues: set[str]) -> Iterator[GaugeMetricFamily]:
        beats = read_workers(self.client)
        consumers: Counter[str] = Counter(q for b in beats for q in b.queues)
        backlog: Counter[str] = Counter()
        for w in Backlogs(self.client).waiting():
            backlog[w.queue] += w.tasks
        queues = sorted({self.settings.default_queue, *testbed_queues, *consumers, *backlog})
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        depth = GaugeMetricFamily("labq_queue_depth", "Messages on the queue's list plus "
                                  "those waiting in fair-share backlogs", labels=["queue"])
        consumed = GaugeMetricFamily("labq_queue_consumers", "Live workers consuming the queue",
                                     labels=["queue"])
        for q, n in zip(queues, pipe.execute(), strict=True):
            depth.add_metric([q], int(n) + backlog[q])
            consumed.add_metric([q], consumers[q])
        yield depth
        yield consumed
        slots = GaugeMetricFamily("labq_worker_slots", "Prefork slots of each live worker",
                                  labels=["worker", "state"])
        for b in beats:
            slots.add_metric([b.hostname, "busy"], b.busy)
            slots.add_metric([b.hostname, "idle"], max(0, b.concurrency - b.busy))
        yield slots


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def registry(settings: Settings, client: redis.Redis | None = None) -> CollectorRegistry:
    """A registry with the lab's collector alone."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LabCollector(settings, client))
    return reg


def serve(settings: Settings, address: str, port: int) -> None:
    """Serve ``/metrics`` on ``address:port`` until interrupted."""
    app = make_wsgi_app(registry(settings))
    with make_server(address, port, app, handler_class=_Quiet) as server:
        bound = server.server_address[1]
        print(f"labq exporter: http://{address}:{bound}/metrics (Ctrl-C stops)", flush=True)
        server.serve_forever()
