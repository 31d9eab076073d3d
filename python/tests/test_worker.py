"""The worker: handlers sync and async, retries, dead letters, shutdown, crashes."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import streambus
from streambus import DeadLetter, DeadLetters, Producer, Retry, Worker

from conftest import wait_until

FAST = dict(retry_backoff=(0.01, 0.05), reclaim_interval=0.02, block=0.2)


def run_in_thread(worker: Worker):
    result = {}

    def target():
        try:
            result["report"] = worker.run()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    assert worker.wait_started(10)
    return t, result


def stop_and_join(worker: Worker, t: threading.Thread, result: dict) -> streambus.WorkerReport:
    worker.stop()
    t.join(30)
    assert not t.is_alive(), "worker did not stop"
    if "error" in result:
        raise result["error"]
    return result["report"]


def pending(r, stream, group="g") -> int:
    return r.xpending(stream, group)["pending"]


def test_sync_handler_handles_every_entry(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(500)])
    seen = []
    w = Worker(client, stream, "g", lambda d: seen.append(d.data["n"]), **FAST)
    t, res = run_in_thread(w)
    wait_until(lambda: len(seen) >= 500, what="500 handled")
    report = stop_and_join(w, t, res)
    assert sorted(seen) == list(range(500))
    assert report.acked == 500 and report.delivered == 500
    assert pending(r, stream) == 0


def test_async_handler(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(200)])
    seen = []
    in_flight = [0, 0]

    async def handle(d):
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        await asyncio.sleep(0.01)
        in_flight[0] -= 1
        seen.append(d.data["n"])

    w = Worker(client, stream, "g", handle, concurrency=50, **FAST)
    assert w.is_async
    t, res = run_in_thread(w)
    wait_until(lambda: len(seen) >= 200, what="200 handled")
    report = stop_and_join(w, t, res)
    assert sorted(seen) == list(range(200))
    assert report.acked == 200
    assert in_flight[1] > 1, "async handlers should run concurrently"
    assert pending(r, stream) == 0


def test_run_async_under_a_running_loop(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(20)])

    async def main():
        seen = []

        async def handle(d):
            seen.append(d.data["n"])

        w = Worker(client, stream, "g", handle, **FAST)
        task = asyncio.ensure_future(w.run_async())
        while len(seen) < 20:
            await asyncio.sleep(0.01)
        w.stop()
        return await asyncio.wait_for(task, 30), seen

    report, seen = asyncio.run(main())
    assert sorted(seen) == list(range(20)) and report.acked == 20


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_exception_retries_the_entry_and_never_stops_the_worker(client, prefix, r, kind):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(20)])
    attempts = collections.Counter()
    done = set()

    def body(d):
        n = d.data["n"]
        attempts[n] += 1
        assert d.deliveries == attempts[n]
        if attempts[n] == 1:
            raise RuntimeError(f"flaky {n}")
        done.add(n)

    if kind == "sync":
        handler = body
    else:
        async def handler(d):
            body(d)

    w = Worker(client, stream, "g", handler, max_deliveries=5, **FAST)
    t, res = run_in_thread(w)
    wait_until(lambda: len(done) == 20, what="every entry handled on its second delivery")
    report = stop_and_join(w, t, res)
    assert all(attempts[n] == 2 for n in range(20))
    assert report.retried >= 20 and report.acked == 20 and report.dead_lettered == 0
    assert pending(r, stream) == 0


def test_dead_letter_after_max_deliveries_then_replay_and_purge(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(5)])
    attempts = collections.Counter()

    def always_fails(d):
        attempts[d.data["n"]] += 1
        raise ValueError("downstream refused it")

    w = Worker(client, stream, "g", always_fails, max_deliveries=3, **FAST)
    dlq = DeadLetters(client, stream)
    t, res = run_in_thread(w)
    wait_until(lambda: dlq.count() == 5, what="5 dead letters")
    report = stop_and_join(w, t, res)
    assert report.dead_lettered == 5
    assert all(attempts[n] == 3 for n in range(5))
    assert pending(r, stream) == 0

    letters = dlq.list()
    assert sorted(l.data["n"] for l in letters) == list(range(5))
    assert all("ValueError: downstream refused it" in l.reason for l in letters)
    assert all(l.group == "g" and l.deliveries == 3 for l in letters)

    before = r.xlen(stream)
    assert dlq.replay(letters[0].id) is not None
    assert r.xlen(stream) == before + 1 and dlq.count() == 4
    assert dlq.purge() == 4 and dlq.count() == 0


def test_outcomes_returned_or_raised(client, prefix, r):
    stream = f"{prefix}:s"
    p = Producer(client)
    p.publish(stream, {"n": 0, "do": "dead"})
    p.publish(stream, {"n": 1, "do": "raise-dead"})
    p.publish(stream, {"n": 2, "do": "retry"})
    r.xadd(stream, {"id": "x", "timestamp": "t", "data": "{not json"})
    handled = collections.Counter()

    def handle(d):
        payload = d.data  # DecodeError for the bad entry: dead-lettered at once
        handled[payload["n"]] += 1
        if payload["do"] == "dead":
            return DeadLetter("cannot ever work")
        if payload["do"] == "raise-dead":
            raise DeadLetter("raised")
        if d.deliveries == 1:
            return Retry("later", delay=0.01)
        return None

    w = Worker(client, stream, "g", handle, **FAST)
    dlq = DeadLetters(client, stream)
    t, res = run_in_thread(w)
    wait_until(lambda: dlq.count() == 3 and handled[2] == 2, what="3 dead letters and a retry")
    stop_and_join(w, t, res)
    reasons = {l.reason for l in dlq.list()}
    assert {"cannot ever work", "raised"} <= reasons
    assert any(x.startswith("DecodeError") for x in reasons)
    assert handled[0] == 1 and handled[1] == 1
    assert pending(r, stream) == 0


def test_graceful_stop_finishes_in_flight_work(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(40)])
    started, seen = threading.Event(), []

    def slow(d):
        started.set()
        time.sleep(0.02)
        seen.append(d.data["n"])

    w = Worker(client, stream, "g", slow, concurrency=10, batch_size=10, **FAST)
    t, res = run_in_thread(w)
    assert started.wait(10)
    report = stop_and_join(w, t, res)
    # Everything delivered was handled and acknowledged; the rest was never read.
    assert report.delivered == report.acked == len(seen) > 0
    assert pending(r, stream) == 0
    assert len(seen) < 40


def start_worker_process(url, stream, name, outfile, sleep="0.005"):
    here = os.path.dirname(__file__)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(here, "worker_script.py"), url, stream, "g", name,
         str(outfile), sleep],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "started", proc.stderr.read()
    return proc


def handled_numbers(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_gracefully(url, client, prefix, r, tmp_path, signum):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": i} for i in range(2000)])
    out = tmp_path / "handled.txt"
    proc = start_worker_process(url, stream, "w1", out)
    wait_until(lambda: len(handled_numbers(out)) >= 20, what="the worker to handle some")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    handled = handled_numbers(out)
    assert report["acked"] == len(handled) == report["delivered"]
    assert len(handled) < 2000, "it should have stopped early"
    assert pending(r, stream) == 0  # in-flight work finished and was acknowledged


def test_killed_worker_is_replaced_and_everything_is_handled(url, client, prefix, r, tmp_path):
    stream = f"{prefix}:s"
    total = 1000
    Producer(client).publish_batch(stream, [{"n": i} for i in range(total)])
    out = tmp_path / "handled.txt"
    proc = start_worker_process(url, stream, "w1", out)
    wait_until(lambda: len(handled_numbers(out)) >= 50, what="the worker to handle some")
    proc.kill()  # SIGKILL: no chance to acknowledge what it holds
    proc.wait(10)
    first_run = set(handled_numbers(out))
    assert len(first_run) < total
    assert pending(r, stream) > 0, "the killed worker should have left entries pending"

    seen = set()
    w = Worker(client, stream, "g", lambda d: seen.add(d.data["n"]), name="w1", **FAST)
    t, res = run_in_thread(w)
    wait_until(lambda: first_run | seen >= set(range(total)), what="every entry handled")
    wait_until(lambda: pending(r, stream) == 0, what="nothing pending")
    stop_and_join(w, t, res)


def test_worker_start_error_is_raised(prefix):
    # A worker whose Redis vanished before it ran: its start error comes out of run().
    from conftest import RedisServer

    server = RedisServer()
    client = streambus.Client.open(server.url, connect_timeout=0.5)
    server.stop()
    w = Worker(client, f"{prefix}:s", "g", lambda d: None)
    with pytest.raises(streambus.StreambusError):
        w.run(handle_signals=False)


def test_bad_handler_and_options():
    with pytest.raises(TypeError):
        Worker.__init__(object.__new__(Worker), None, "s", "g", 42)  # type: ignore[arg-type]


def test_a_bad_outcome_retries_and_never_stops_the_worker(client, prefix, r):
    stream = f"{prefix}:s"
    Producer(client).publish_batch(stream, [{"n": 1}, {"n": 2}])
    calls = collections.Counter()

    def handle(d):
        calls[d.data["n"]] += 1
        if d.data["n"] == 1 and d.deliveries == 1:
            return Retry("bad delay", delay=-1.0)  # not a valid delay: retried anyway

    w = Worker(client, stream, "g", handle, **FAST)
    t, res = run_in_thread(w)
    wait_until(lambda: calls[1] == 2 and calls[2] == 1, what="the retry after a bad outcome")
    wait_until(lambda: pending(r, stream) == 0, what="nothing pending")
    report = stop_and_join(w, t, res)
    assert report.acked == 2
