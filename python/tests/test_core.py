"""Client, Producer, Consumer against a real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest

import streambus
from streambus import Client, Consumer, Producer

from conftest import RedisServer


def test_open_bad_url_is_a_clear_error():
    with pytest.raises(streambus.StreambusError) as e:
        Client.open("http://nowhere")
    assert isinstance(e.value, streambus.InvalidInputError) or "url" in str(e.value).lower()


def test_open_unreachable_redis_raises_connect_error():
    from conftest import free_port

    with pytest.raises(streambus.ConnectError) as e:
        Client.open(f"redis://127.0.0.1:{free_port()}", connect_timeout=1.0)
    assert e.value.retryable


def test_wrong_password_raises_auth_error():
    server = RedisServer(["--requirepass", "s3cret"])
    try:
        with pytest.raises(streambus.AuthError):
            Client.open(f"redis://:wrong@127.0.0.1:{server.port}")
        ok = Client.open(f"redis://:s3cret@127.0.0.1:{server.port}")
        ok.ping()
        assert "s3cret" not in ok.url
    finally:
        server.stop()


def test_publish_and_consume_envelopes(client, prefix, r):
    stream = f"{prefix}:alerts"
    p = Producer(client, maxlen=1000)
    first = p.publish(stream, {"host": "web-1", "n": 1}, key="web-1", type="alert")
    ids = p.publish_batch(stream, [{"n": i} for i in range(2, 12)])
    assert len(ids) == 10 and ids[0] > first

    raw = r.xrange(stream, count=1)[0][1]
    assert set(raw) == {"id", "timestamp", "data", "type", "key"}
    assert json.loads(raw["data"]) == {"host": "web-1", "n": 1}

    c = Consumer(client, stream, "g", name="c1", batch_size=20, max_wait=0.5)
    batch = c.next_batch()
    assert [e.data["n"] for e in batch] == list(range(1, 12))
    e0 = batch[0]
    assert e0.id == first and e0.key == "web-1" and e0.type == "alert"
    assert e0.is_envelope and len(e0.message_id) == 36
    assert c.ack(batch) == 11
    assert r.xpending(stream, "g")["pending"] == 0


def test_consumer_rereads_its_own_pending_entries_after_restart(client, prefix):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [1, 2, 3])
    c = Consumer(client, stream, "g", name="same", batch_size=10, max_wait=0.2)
    assert len(c.next_batch()) == 3  # not acknowledged
    again = Consumer(client, stream, "g", name="same", batch_size=10, max_wait=0.2)
    assert [e.data for e in again.next_batch()] == [1, 2, 3]


def test_raw_entries_and_binary_fields(client, prefix):
    stream = f"{prefix}:raw"
    p = Producer(client)
    p.publish_raw(stream, {"sensor": "t1", "value": 21.5, "blob": b"\x00\xff"})
    c = Consumer(client, stream, "g", max_wait=0.2)
    (e,) = c.next_batch()
    assert not e.is_envelope and e.data is None
    assert e.fields == {"sensor": b"t1", "value": b"21.5", "blob": b"\x00\xff"}


def test_payload_that_is_not_json_is_refused(client, prefix):
    p = Producer(client)
    with pytest.raises(TypeError):
        p.publish(f"{prefix}:s", {"when": object()})
    with pytest.raises(ValueError):
        p.publish(f"{prefix}:s", float("nan"))


def test_json_encoding_matches_json_dumps():
    from streambus import _native

    value = {"a": [1, 2.5, True, None, "x\"\n\u00e9\u0001"], "b": {"c": 10**30}, 3: "int key",
             "t": (1, 2)}
    assert json.loads(_native.to_json(value)) == json.loads(json.dumps(value))


def test_entry_whose_data_is_not_json_raises_decode_error(client, prefix, r):
    stream = f"{prefix}:bad"
    r.xadd(stream, {"id": "x", "timestamp": "2026-01-01T00:00:00", "data": "{not json"})
    c = Consumer(client, stream, "g", max_wait=0.2)
    (e,) = c.next_batch()
    with pytest.raises(streambus.DecodeError):
        e.data


def test_async_api(url, prefix):
    async def main():
        client = await Client.open_async(url)
        p = Producer(client)
        ids = await asyncio.gather(*(p.publish_async(f"{prefix}:a", {"i": i}) for i in range(50)))
        assert len(set(ids)) == 50
        c = Consumer(client, f"{prefix}:a", "g", batch_size=100, max_wait=0.2)
        batch = await c.next_batch_async()
        assert sorted(e.data["i"] for e in batch) == list(range(50))
        assert await c.ack_async(batch) == 50

    asyncio.run(main())


def test_bad_input_gives_clear_exceptions(client, prefix):
    c = Consumer(client, f"{prefix}:s", "g", max_wait=0.1)
    with pytest.raises(streambus.InvalidInputError):
        c.ack(["not-an-id"])
    with pytest.raises(streambus.InvalidInputError):
        Consumer(client, f"{prefix}:s", "g", start="sometime")
    with pytest.raises(ValueError):
        Consumer(client, f"{prefix}:s", "g", max_wait=-1)
    with pytest.raises(streambus.InvalidInputError):
        Producer(client, max_message_bytes=10).publish(f"{prefix}:s", "x" * 100)
    with pytest.raises(streambus.NoGroupError):
        Consumer(client, f"{prefix}:other", "g", create_group=False).next_batch()


def test_wrong_type_key_is_a_clear_error(client, prefix, r):
    r.set(f"{prefix}:str", "x")
    with pytest.raises(streambus.StreambusError) as e:
        Producer(client).publish(f"{prefix}:str", {"a": 1})
    assert e.value.kind == "wrong_type"


def test_the_gil_is_released_while_rust_waits(client, prefix):
    import threading
    import time

    c = Consumer(client, f"{prefix}:quiet", "g", max_wait=0.5)
    t = threading.Thread(target=c.next_batch)  # waits 0.5 s for entries that never come
    t.start()
    spins, deadline = 0, time.monotonic() + 0.3
    while time.monotonic() < deadline:
        spins += 1
    t.join(5)
    assert spins > 100_000, "the main thread could hardly run: the GIL was held"


def test_ctrl_c_interrupts_a_blocking_call(url, prefix):
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, streambus\n"
        "c = streambus.Consumer(streambus.Client.open(sys.argv[1]), sys.argv[2], 'g', max_wait=30)\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    c.next_batch()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, url, f"{prefix}:s"], stdout=subprocess.PIPE,
                         text=True, cwd="/")
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=10)
    assert out.strip() == "interrupted" and time.monotonic() - t0 < 5
