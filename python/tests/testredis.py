"""What the reference examples import instead of ``redis.Redis``: the same class,
pointed at the test's own redis-server (its port is in STREAMBUS_TEST_REDIS_PORT)."""

import os

import redis as _redis
import redis.asyncio as _aioredis


def _port() -> int:
    return int(os.environ["STREAMBUS_TEST_REDIS_PORT"])


class Redis(_redis.Redis):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", _port())
        super().__init__(*args, **kwargs)


def __getattr__(name):
    if name == "redis":  # the application's async client in the AuroraSOC examples
        return _aioredis.Redis(host="127.0.0.1", port=_port(), decode_responses=True)
    raise AttributeError(name)
