"""A real redis-server per test session: a free port on 127.0.0.1, its own temp
dir, killed at the end (never the shared Redis on 6379). Each test gets its own
key prefix, so tests share the server safely."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Callable, Iterator, Optional

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.01,
               what: str = "condition") -> object:
    """Polls ``cond`` until it returns something truthy, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RedisServer:
    def __init__(self, extra_args: Optional[list] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="streambus-py-")
        self.port = free_port()
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not installed")
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--logfile",
                os.path.join(self.dir, "redis.log")] + (extra_args or [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}"
        try:
            wait_until(self._ready, timeout=10, what="redis-server to accept connections")
        except AssertionError:
            log = self.log()
            self.stop()
            raise AssertionError("redis-server did not start: " + log)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("redis-server exited: " + self.log())
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture()
def url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture()
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def client(url: str):
    import streambus

    return streambus.Client.open(url)


@pytest.fixture()
def r(redis_server: RedisServer):
    """A redis-py connection to the test server (decode_responses=True)."""
    import redis

    conn = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    yield conn
    conn.close()
