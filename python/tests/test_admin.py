"""Monitor, Scaler and cleanup."""

from __future__ import annotations

import dataclasses
import time

import pytest

import streambus
from streambus import Consumer, Monitor, Producer, Scaler

from conftest import wait_until


def test_monitor_snapshot(client, prefix):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(30)])
    c = Consumer(client, stream, "g", name="c1", batch_size=10, max_wait=0.2)
    c.next_batch()
    snap = Monitor(client, pending_warning=5).snapshot(stream)
    assert snap.length == 30
    g = snap.group("g")
    assert g.pending == 10 and g.lag == 20
    (c1,) = g.consumers
    assert c1.name == "c1" and c1.pending == 10 and c1.status == "TOO_MANY_PENDING"
    assert c1.reference_status == "WARNING - too many pending items"
    assert dataclasses.asdict(snap)["groups"][0]["consumers"][0]["name"] == "c1"


def test_monitor_of_missing_stream_is_a_clear_error(client, prefix):
    with pytest.raises(streambus.NoGroupError):
        Monitor(client).snapshot(f"{prefix}:nothing")


def test_cleanup_hands_over_pending_entries_and_never_loses_them(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(10)])
    dead = Consumer(client, stream, "g", name="dead", batch_size=6, max_wait=0.2)
    assert len(dead.next_batch()) == 6
    time.sleep(0.05)  # the dead consumer's idle time has to pass the 20 ms threshold
    alive = Consumer(client, stream, "g", name="alive", batch_size=4, max_wait=0.2)
    assert len(alive.next_batch()) == 4
    report = Monitor(client, idle_threshold=0.02).cleanup(stream, "g")
    assert report.moved_total == 6
    assert "dead" in report.deleted
    assert r.xpending(stream, "g")["pending"] == 10  # nothing lost
    names = {c["name"] for c in r.xinfo_consumers(stream, "g")}
    assert names == {"alive"}


def test_scaler_reference_rule(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(94)])
    c = Consumer(client, stream, "g", name="c1", batch_size=83, max_wait=0.2)
    c.next_batch()
    r.xgroup_createconsumer(stream, "g", "c2")
    d = Scaler(client, stream, "g").decision(scale_out=60, scale_in=20)
    assert d.undelivered == 11 and d.pending == 83
    assert d.sentence == "Consumers should be IN as stream length (11) / pending (83) rate is 13.253%"
    assert d.suggestion == "IN" and d.rate == 13.253
    with pytest.raises(streambus.InvalidInputError):
        Scaler(client, stream, "g", scale_out=10, scale_in=20)
