"""Drop-in compatibility layers: code written for another Redis Streams package
runs on streambus with its import lines changed.

- :mod:`streambus.compat.redis_streams`: the ``redis-streams`` PyPI package
  (``Producer``, ``Consumer``, ``Monitor``, ``Scaler``).
- :mod:`streambus.compat.aurorasoc`: AuroraSOC's ``RedisStreamPublisher`` and
  ``RedisStreamConsumer``.

Both take a redis-py connection (``redis.Redis`` or ``redis.asyncio.Redis``) as
their originals do, and use only its address, credentials, database and TLS
settings: the commands go through streambus's own connection.
"""

from ._redis_py import client_from_redis

__all__ = ["client_from_redis"]
