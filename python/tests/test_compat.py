"""The compatibility layers, running the references' own example code (imports
changed only), and entries flowing both ways between the originals and streambus."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import threading

import pytest

import redis as redis_py
import redis.asyncio as aioredis

import streambus
from streambus import DeadLetters, Producer
from streambus.compat import aurorasoc, redis_streams as compat
from streambus.compat._redis_py import redis_url

from conftest import wait_until

HERE = os.path.dirname(__file__)
EXAMPLES = os.path.join(HERE, "reference_examples")


@pytest.fixture(autouse=True)
def _test_port(redis_server, monkeypatch):
    monkeypatch.setenv("STREAMBUS_TEST_REDIS_PORT", str(redis_server.port))


def run_example(name: str, namespace: dict) -> str:
    with open(os.path.join(EXAMPLES, name)) as f:
        code = compile(f.read(), name, "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, namespace)
    return out.getvalue()


def original_redis_streams(module: str):
    """The original package (redis-streams 0.3.0 needs Python 3.11+: it imports datetime.UTC)."""
    return pytest.importorskip(f"redis_streams.{module}")


class Stop(Exception):
    pass


def test_url_from_a_redis_py_connection():
    conn = redis_py.Redis(host="h", port=7000, db=3, username="u", password="p@ss")
    assert redis_url(conn) == "redis://u:p%40ss@h:7000/3"
    ssl = redis_py.Redis(host="h", port=6380, ssl=True)
    assert redis_url(ssl).startswith("rediss://h:6380")
    assert redis_url(aioredis.Redis(host="a", port=1)) == "redis://a:1/0"


def test_credentials_and_db_are_taken_from_the_connection(prefix):
    from conftest import RedisServer

    server = RedisServer(["--requirepass", "pw"])
    try:
        conn = redis_py.Redis(port=server.port, password="pw", db=2, decode_responses=True)
        compat.Producer(redis_conn=conn, stream=f"{prefix}:s").add({"a": "1"})
        assert conn.xlen(f"{prefix}:s") == 1  # in db 2, with the password
        bad = redis_py.Redis(port=server.port, password="nope")
        with pytest.raises(streambus.AuthError):
            compat.Producer(redis_conn=bad, stream="x")
    finally:
        server.stop()


def test_readme_producer_example(prefix, r):
    stream = f"{prefix}:s"
    out = run_example("redis_streams_producer.py", {"STREAM": stream})
    assert re.match(r"Published b'\d+-\d+'\n", out)  # Redis() without decode: bytes, as redis-py
    assert [f for _, f in r.xrange(stream)] == [
        {"message": "stuff goes here"}, {"message": "older entries will be trimmed"}]


def test_readme_consumer_example_and_original_producer(prefix, r):
    stream, group = f"{prefix}:s", "g"
    OriginalProducer = original_redis_streams("producer").Producer

    original = OriginalProducer(redis_conn=redis_py.Redis(port=r.connection_pool.connection_kwargs["port"]),
                                stream=stream)
    for i in range(30):  # whole batches of 10: a partial one waits max_wait_time_ms (30 s)
        original.add({"n": i})
    seen = []

    def process_message(item):
        if item.content.get("stop"):
            raise Stop
        seen.append(int(item.content["n"]))

    ns = {"STREAM": stream, "GROUP": group, "process_message": process_message}
    errors = []

    def target():
        try:
            run_example("redis_streams_consumer.py", ns)
        except Stop:
            pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    wait_until(lambda: len(seen) == 30 and r.xpending(stream, group)["pending"] == 0,
               timeout=20, what="the example consumer to process and remove 30 messages")
    for _ in range(10):  # a whole batch, so that get_items returns at once
        r.xadd(stream, {"stop": "1"})
    t.join(20)
    assert not errors and not t.is_alive()
    assert seen == list(range(30))


def test_failed_item_is_part_of_the_next_batch(prefix, r):
    stream = f"{prefix}:s"
    for i in range(3):
        r.xadd(stream, {"n": i})
    conn = redis_py.Redis(port=r.connection_pool.connection_kwargs["port"], decode_responses=True)
    c = compat.Consumer(redis_conn=conn, stream=stream, consumer_group="g", consumer_id="c1",
                        batch_size=3, max_wait_time_ms=200, poll_time_ms=50)
    first = c.get_items()
    assert [m.content["n"] for m in first] == ["0", "1", "2"]
    c.remove_item_from_consumer_group(first[0].msgid)
    c.remove_item_from_consumer_group(first[2].msgid)
    again = c.get_items()  # "1" was not acknowledged: it comes again
    assert [m.msgid for m in again] == [first[1].msgid]


def test_original_consumer_reads_what_the_compat_producer_writes(prefix, r):
    OriginalConsumer = original_redis_streams("consumer").Consumer

    stream = f"{prefix}:s"
    port = r.connection_pool.connection_kwargs["port"]
    p = compat.Producer(redis_conn=redis_py.Redis(port=port), stream=stream, maxlen=1000)
    for i in range(5):
        p.add({"n": i, "text": "héllo"})
    oc = OriginalConsumer(redis_conn=redis_py.Redis(port=port, decode_responses=True),
                          stream=stream, consumer_group="g", batch_size=5, max_wait_time_ms=500,
                          poll_time_ms=100)
    items = oc.get_items()
    assert [(m.content["n"], m.content["text"]) for m in items] == [(str(i), "héllo") for i in range(5)]


def test_readme_monitor_example_prints_the_table_and_cleans_up_safely(prefix, r):
    stream, group = f"{prefix}:s", "g"
    for i in range(30):
        r.xadd(stream, {"n": i})
    r.xgroup_create(stream, group, id="0")
    r.xreadgroup(group, "dead", {stream: ">"}, count=5)       # will be idle
    import time
    time.sleep(0.05)
    r.xreadgroup(group, "busy", {stream: ">"}, count=12)      # > batch_size 10 pending
    r.xreadgroup(group, "healthy", {stream: ">"}, count=3)

    ns = {"STREAM": stream, "GROUP": group}
    # A threshold low enough to see the idle consumer (the example's default is 30 s).
    orig_init = compat.Monitor.__init__

    def init(self, *a, **kw):
        kw.setdefault("idle_time_ms_warning_threshold", 20)
        orig_init(self, *a, **kw)

    compat.Monitor.__init__ = init
    try:
        out = run_example("redis_streams_monitor.py", ns)
    finally:
        compat.Monitor.__init__ = orig_init
    lines = out.splitlines()
    assert lines[1].startswith("| Consumer id ") and lines[1].endswith(
        "|   Idle time |   Pending items | Status                           |")  # as in the README
    assert lines[2].startswith("+====")
    body = "\n".join(lines)
    assert "WARNING - too many pending items" in body and "WARNING - idle for long time" in body
    # Safe cleanup: the dead consumer's 5 entries moved to the healthy one, nothing lost,
    # the busy consumer (still working) left alone.
    assert r.xpending(stream, group)["pending"] == 20
    consumers = {c["name"]: c["pending"] for c in r.xinfo_consumers(stream, group)}
    assert "dead" not in consumers and consumers["busy"] == 12 and consumers["healthy"] == 8


def test_table_matches_the_original_tabulate_grid():
    tabulate = pytest.importorskip("tabulate").tabulate
    rows = [[b"29102140026848155456", 923, 7, "OK"],
            [b"29104139791624517440", 294191, 5, "WARNING - idle for long time"],
            ["worker-1", 8658, 11, "WARNING - too many pending items"]]
    headers = ["Consumer id", "Idle time", "Pending items", "Status"]
    for rs in (rows[:2], rows):
        assert compat.grid_table(rs, headers) == tabulate(rs, headers=headers, tablefmt="grid")


def test_readme_scaler_example_sentence_and_rate(prefix, r):
    stream, group = f"{prefix}:s", "g"
    for i in range(94):
        r.xadd(stream, {"n": i})
    r.xgroup_create(stream, group, id="0")
    r.xreadgroup(group, "c1", {stream: ">"}, count=83)
    r.xgroup_createconsumer(stream, group, "c2")
    out = run_example("redis_streams_scaler.py", {"STREAM": stream, "GROUP": group})
    assert out == "Consumers should be IN as stream length (11) / pending (83) rate is 13.253%\n"
    # Same rate and suggestion as the original package on the same data.
    OriginalScaler = original_redis_streams("scaler").Scaler

    port = r.connection_pool.connection_kwargs["port"]
    o = OriginalScaler(redis_conn=redis_py.Redis(port=port, decode_responses=True),
                       stream=stream, consumer_group=group)
    o.collect_metrics()
    s = compat.Scaler(redis_conn=redis_py.Redis(port=port), stream=stream, consumer_group=group)
    for out_rate, in_rate in [(60, 20), (50, 10), (10, 5), (100, 0)]:
        assert s.get_scale_decision(out_rate, in_rate) == o.get_scale_decision(out_rate, in_rate)
    with pytest.raises(ValueError):
        s.get_scale_decision(10, 20)


def load_original_aurorasoc():
    ns: dict = {"__name__": "aurorasoc_original"}
    with open(os.path.join(EXAMPLES, "aurorasoc_original.py")) as f:
        exec(compile(f.read(), "aurorasoc_original.py", "exec"), ns)
    return ns


def test_aurorasoc_both_ways(prefix, redis_server):
    original = load_original_aurorasoc()
    stream = f"{prefix}:alerts"

    async def main():
        conn = aioredis.Redis(port=redis_server.port, decode_responses=True)
        # The original publishes, streambus consumes (and the other way round).
        opub = original["RedisStreamPublisher"](conn)
        for i in range(5):
            await opub.publish(stream, {"n": i, "from": "original"})
        spub = aurorasoc.RedisStreamPublisher(conn)
        for i in range(5, 10):
            await spub.publish(stream, {"n": i, "from": "streambus"})

        got_by_streambus, got_by_original = [], []
        sc = aurorasoc.RedisStreamConsumer(conn, stream, "sb", "c1")
        await sc.setup()

        async def handler(data):
            got_by_streambus.append(data["n"])

        task = asyncio.ensure_future(sc.consume(handler, batch_size=10))
        oc = original["RedisStreamConsumer"](conn, stream, "orig", "c1")
        await oc.setup()

        async def ohandler(data):
            got_by_original.append(data["n"])

        otask = asyncio.ensure_future(oc.consume(ohandler, batch_size=10))
        for _ in range(1000):
            if len(got_by_streambus) == 10 and len(got_by_original) == 10:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        otask.cancel()
        for t in (task, otask):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        fields = await conn.xrange(stream)
        await conn.aclose()
        return got_by_streambus, got_by_original, fields

    sb, og, fields = asyncio.run(main())
    assert sorted(sb) == list(range(10)) and sorted(og) == list(range(10))
    for _, f in fields:  # the same envelope from both publishers
        assert {"id", "timestamp", "data"} <= set(f)


def test_aurorasoc_consumer_redelivers_and_dead_letters(prefix, redis_server, client):
    stream = f"{prefix}:alerts"

    async def main():
        conn = aioredis.Redis(port=redis_server.port, decode_responses=True)
        pub = aurorasoc.RedisStreamPublisher(conn)
        await pub.publish(stream, {"n": 1})
        await pub.publish(stream, {"n": 2, "poison": True})
        await conn.xadd(stream, {"id": "x", "timestamp": "t", "data": "{not json"})
        attempts: dict = {}
        c = aurorasoc.RedisStreamConsumer(conn, stream, "g", "c1", max_deliveries=3,
                                          retry_backoff=(0.01, 0.05), reclaim_interval=0.02)
        await c.setup()

        async def handler(data):
            attempts[data["n"]] = attempts.get(data["n"], 0) + 1
            if data.get("poison") or attempts[data["n"]] == 1:
                raise RuntimeError("boom")

        task = asyncio.ensure_future(c.consume(handler))
        dlq = DeadLetters(client, stream)
        for _ in range(1000):
            if dlq.count() == 2 and attempts.get(1) == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pending = (await conn.xpending(stream, "g"))["pending"]
        await conn.aclose()
        return attempts, dlq.count(), pending

    attempts, dead, pending = asyncio.run(main())
    assert attempts == {1: 2, 2: 3}  # retried once, then acked; poison: 3 deliveries
    assert dead == 2 and pending == 0  # the poison and the non-JSON entry


def test_aurorasoc_relay_example_async_for(prefix, redis_server):
    conn = redis_py.Redis(port=redis_server.port, decode_responses=True)
    conn.delete("aurora:alerts")
    for i in range(5):
        conn.xadd("aurora:alerts", {"id": f"m{i}", "timestamp": "2026-01-01T00:00:00",
                                    "data": json.dumps({"n": i})})
    sent = []

    class ConnectionManager:
        async def broadcast(self, text):
            sent.append(json.loads(text)["n"])

    ns = {"connection_manager": ConnectionManager()}

    async def main():
        # Run inside the loop: the example makes its redis.asyncio client at import.
        run_example("aurorasoc_relay.py", ns)
        task = asyncio.ensure_future(ns["stream_to_websocket"]())
        for _ in range(1000):
            if len(sent) == 5:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # let the loop ask for the next one: acknowledges the last
        for _ in range(1000):
            if conn.xpending("aurora:alerts", "websocket-relay")["pending"] == 0:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sent == list(range(5))
    assert conn.xpending("aurora:alerts", "websocket-relay")["pending"] == 0
    conn.delete("aurora:alerts")
