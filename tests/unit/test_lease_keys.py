"""Lease key layout, address masking and DeviceBusy, without Redis."""

from __future__ import annotations

import redis

from labq.devices.lease import masked_url
from labq.errors import DeviceBusy, LabqError
from labq.keys import DEVICES_KEY, held_key, lease_keys, waiting_key


def test_key_layout() -> None:
    assert lease_keys("r1") == ("labq:lease:r1", "labq:lease:r1:info",
                                "labq:wait:r1", "labq:wait:r1:seen")
    assert held_key("task-1") == "labq:held:task-1"
    assert waiting_key("task-1") == "labq:waiting:task-1"
    assert DEVICES_KEY == "labq:devices"


def test_masked_url_never_shows_the_password() -> None:
    # a password with "/" and "@" would defeat a regex over a real URL
    client = redis.Redis(host="10.0.0.5", port=6380, db=2, password="p/a@ss")
    assert masked_url(client) == "redis://:****@10.0.0.5:6380/2"
    assert masked_url(redis.Redis(host="h")) == "redis://h:6379/0"


def test_device_busy_message_and_celery_round_trip() -> None:
    err = DeviceBusy("r1", 93.25, ["t1", "t2"])
    assert isinstance(err, LabqError)
    assert str(err) == "device 'r1' still busy after waiting 93.2 s; held by t1, t2"
    # Celery's JSON result backend rebuilds exceptions as cls(*args)
    again = DeviceBusy(*err.args)
    assert str(again) == str(err)
    assert again.holders == ["t1", "t2"]
