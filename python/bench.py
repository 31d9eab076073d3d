#!/usr/bin/env python3
"""Speed of the Python package against redis-py, in one run, on one private Redis.

    python bench.py [--messages N]

Starts its own redis-server on a free port (own temp dir, no persistence), then
measures, each pass on a fresh stream:

- consume: the streambus ``Worker`` with a no-op handler (deliveries handed to
  Python in batches) vs the redis-py consumer loop (``XREADGROUP COUNT 100`` +
  one ``XACK`` per batch, a no-op handler per entry), both until every entry is
  acknowledged;
- publish: ``Producer.publish_batch`` (pipelined) and a plain ``publish`` loop vs
  redis-py's one ``XADD`` per call, all writing the same envelope.

Prints a table with msgs/s and the ratio to the redis-py loop. Absolute
figures drift between runs on a shared machine; compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone

import redis

# The source tree next to this script has no compiled `_native`: import the
# installed package (`pip install ./python`) instead.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import streambus  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis():
    d = tempfile.mkdtemp(prefix="streambus-bench-")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", d, "--logfile", os.path.join(d, "log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)
    return proc, d, port


PAYLOAD = {"rule": "ssh-bruteforce", "host": "web-1", "severity": "high", "count": 17,
           "tags": ["auth", "linux"], "src": "203.0.113.7"}


def envelope() -> dict:
    return {"id": str(uuid.uuid4()), "timestamp": datetime.now(timezone.utc).isoformat(),
            "data": json.dumps(PAYLOAD)}


def fill(client: streambus.Client, stream: str, n: int) -> None:
    p = streambus.Producer(client)
    for start in range(0, n, 5000):
        p.publish_batch(stream, [PAYLOAD] * min(5000, n - start))


def bench_redis_py_consumer(port: int, stream: str, n: int) -> float:
    r = redis.Redis(port=port)
    r.xgroup_create(stream, "g", id="0")
    handler = lambda fields: None  # noqa: E731 - the no-op handler
    done = 0
    t0 = time.perf_counter()
    while done < n:
        reply = r.xreadgroup("g", "c1", {stream: ">"}, count=100, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        for _id, fields in entries:
            handler(fields)
        r.xack(stream, "g", *[e[0] for e in entries])
        done += len(entries)
    return n / (time.perf_counter() - t0)


def bench_streambus_worker(client: streambus.Client, stream: str, n: int) -> float:
    count = [0]
    end = [0.0]
    worker: streambus.Worker

    def handler(d):
        count[0] += 1
        if count[0] == n:
            end[0] = time.perf_counter()
            worker.stop()

    worker = streambus.Worker(client, stream, "g", handler, name="c1",
                              batch_size=int(os.environ.get("BENCH_BATCH", 512)),
                              concurrency=int(os.environ.get("BENCH_CONCURRENCY", 2048)))
    t0 = time.perf_counter()
    report = worker.run(handle_signals=False)
    # Until the last entry was handled (its acknowledgement goes out within
    # ack_flush_interval, 2 ms): the shutdown that follows waits for the read
    # in flight to end (up to `block`), which is not consuming.
    assert report.acked == n, report
    return n / (end[0] - t0)


def bench_redis_py_publish(port: int, stream: str, n: int) -> float:
    r = redis.Redis(port=port)
    t0 = time.perf_counter()
    for _ in range(n):
        r.xadd(stream, envelope())
    return n / (time.perf_counter() - t0)


def bench_streambus_publish_batch(client: streambus.Client, stream: str, n: int) -> float:
    p = streambus.Producer(client)
    chunk = 1000
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        p.publish_batch(stream, [PAYLOAD] * min(chunk, n - start))
    return n / (time.perf_counter() - t0)


def bench_streambus_publish(client: streambus.Client, stream: str, n: int) -> float:
    p = streambus.Producer(client)
    t0 = time.perf_counter()
    for _ in range(n):
        p.publish(stream, PAYLOAD)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000,
                    help="entries per streambus pass (redis-py passes use a quarter)")
    args = ap.parse_args()
    n = args.messages
    n_py = max(1000, n // 4)
    proc, d, port = start_redis()
    try:
        client = streambus.Client.open(f"redis://127.0.0.1:{port}")
        rows = []

        fill(client, "c:py", n_py)
        base_c = bench_redis_py_consumer(port, "c:py", n_py)
        rows.append(("consume", "redis-py XREADGROUP COUNT 100 + XACK per batch", n_py, base_c, 1.0))
        fill(client, "c:sb", n)
        sb_c = bench_streambus_worker(client, "c:sb", n)
        rows.append(("consume", "streambus Worker, no-op handler", n, sb_c, sb_c / base_c))

        base_p = bench_redis_py_publish(port, "p:py", n_py // 2)
        rows.append(("publish", "redis-py one XADD per call", n_py // 2, base_p, 1.0))
        sb_pb = bench_streambus_publish_batch(client, "p:sb", n)
        rows.append(("publish", "streambus publish_batch (1000 per call)", n, sb_pb, sb_pb / base_p))
        sb_p = bench_streambus_publish(client, "p:one", n_py // 2)
        rows.append(("publish", "streambus publish, one per call", n_py // 2, sb_p, sb_p / base_p))

        print(f"redis-server {redis.Redis(port=port).info()['redis_version']}, "
              f"Python {sys.version.split()[0]}, streambus {streambus.__version__}")
        print(f"{'what':8} {'how':48} {'messages':>9} {'msgs/s':>10} {'ratio':>6}")
        for what, how, count, rate, ratio in rows:
            print(f"{what:8} {how:48} {count:>9} {rate:>10,.0f} {ratio:>5.1f}x")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
