"""Drop-in replacement of AuroraSOC's ``RedisStreamPublisher`` and
``RedisStreamConsumer`` (``aurorasoc/events/redis_streams.py``). Change only the
import::

    from streambus.compat.aurorasoc import RedisStreamConsumer, RedisStreamPublisher

Same envelope (``id`` = UUID, ``timestamp`` = ISO-8601 UTC, ``data`` = the
payload as JSON), so entries flow both ways between the original and this
module. ``redis_client`` is a ``redis.asyncio.Redis`` (or ``redis.Redis``);
only its address, credentials and db are used.

Unlike the original, the consumer does not leave a failed message in the
pending list for ever: it is retried with backoff, dead-lettered to
``{stream}:dlq`` after ``max_deliveries`` (a payload that is not JSON at once),
and the entries of a consumer that died are reclaimed by the live ones after
``visibility_timeout``. The publisher trims in the same XADD
(``MAXLEN ~ 10000``) instead of a second ``XTRIM`` per message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional

from .._core import Client, Producer
from .._worker import Worker
from ._redis_py import client_from_redis

logger = logging.getLogger("streambus.compat.aurorasoc")

#: The original trims every stream to about this many entries.
MAXLEN = 10000


class RedisStreamPublisher:
    """Publishes envelopes to Redis Streams."""

    def __init__(self, redis_client: Any, *, maxlen: Optional[int] = MAXLEN) -> None:
        self.redis = redis_client
        self._maxlen = maxlen
        self._producer: Optional[Producer] = None

    def _get(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(client_from_redis(self.redis), maxlen=self._maxlen)
        return self._producer

    async def publish(self, stream: str, data: dict) -> str:
        """Publishes ``data`` (JSON serializable) to ``stream``; returns the entry id."""
        producer = self._get()
        return await producer.publish_async(stream, data)


class RedisStreamConsumer:
    """A member ``consumer`` of ``group`` on ``stream``.

    ``await consume(handler, batch_size)`` runs for ever (until cancelled, which
    stops it gracefully): ``await handler(payload)`` for each message; it is
    acknowledged when the handler returns; an exception retries it.
    ``async for payload in consumer`` yields payloads one at a time; a payload
    is acknowledged when the loop asks for the next one (an exception in the
    loop body leaves it pending, to be redelivered).
    """

    def __init__(
        self,
        redis_client: Any,
        stream: str,
        group: str,
        consumer: str,
        *,
        max_deliveries: int = 5,
        visibility_timeout: float = 30.0,
        retry_backoff: Optional[tuple] = None,
        reclaim_interval: Optional[float] = None,
    ) -> None:
        self.redis = redis_client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._options: Dict[str, Any] = dict(
            max_deliveries=max_deliveries,
            visibility_timeout=visibility_timeout,
            retry_backoff=retry_backoff,
            reclaim_interval=reclaim_interval,
        )
        self._client: Optional[Client] = None

    async def _get_client(self) -> Client:
        if self._client is None:
            loop = asyncio.get_running_loop()
            self._client = await loop.run_in_executor(None, client_from_redis, self.redis)
        return self._client

    async def setup(self) -> None:
        """Creates the group from the start of the stream (and the stream) if
        missing; an existing group is fine."""
        from .. import _native

        client = await self._get_client()

        def create() -> None:
            try:
                _native.command(client._native,
                                ["XGROUP", "CREATE", self.stream, self.group, "0", "MKSTREAM"])
            except _native.RedisError as e:
                if "BUSYGROUP" not in str(e):
                    raise

        await asyncio.get_running_loop().run_in_executor(None, create)

    def _worker(self, client: Client, handler: Callable[[Any], Any], **kw: Any) -> Worker:
        options = {k: v for k, v in self._options.items() if v is not None}
        options.update(kw)
        return Worker(client, self.stream, self.group, handler, name=self.consumer, **options)

    async def consume(self, handler: Callable[[dict], Awaitable[Any]], batch_size: int = 10) -> None:
        """Handles messages for ever: ``await handler(json.loads(data))``."""
        client = await self._get_client()

        async def run(d: Any) -> None:
            payload = d.data  # not JSON: DecodeError, dead-lettered at once
            try:
                result = handler(payload)
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
            except Exception as e:
                logger.error(f"Failed to process {d.id}: {e}")
                raise

        worker = self._worker(client, run, batch_size=batch_size, concurrency=batch_size)
        await worker.run_async(handle_signals=False)

    async def __aiter__(self) -> AsyncIterator[dict]:
        client = await self._get_client()
        queue: "asyncio.Queue[Any]" = asyncio.Queue(maxsize=1)

        async def hand_over(d: Any) -> None:
            done = asyncio.get_running_loop().create_future()
            await queue.put((d.data, done))
            await done  # resolved when the loop asks for the next payload

        worker = self._worker(client, hand_over, concurrency=1, batch_size=1)
        task = asyncio.ensure_future(worker.run_async(handle_signals=False))
        current: Optional["asyncio.Future[None]"] = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    task.result()  # raises what stopped the worker
                    return
                payload, done = getter.result()
                current = done
                yield payload
                done.set_result(None)  # the body finished: acknowledge
                current = None
        finally:
            if current is not None and not current.done():
                current.set_exception(RuntimeError("the loop stopped before finishing the message"))
            worker.stop()
            try:
                await asyncio.shield(task)
            except BaseException:  # noqa: BLE001 - stopping anyway
                pass


__all__ = ["RedisStreamConsumer", "RedisStreamPublisher"]
