"""The worker: runs a handler over a consumer group and loses nothing.

The reading, acknowledging, retrying, reclaiming, dead-lettering and shutdown
are the Rust library's ``Worker``; this module hands its deliveries to a Python
handler in batches (many deliveries per acquisition of the GIL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import signal
import threading
from typing import Any, Awaitable, Callable, Dict, Optional, Set, Tuple, Union

from . import _native
from ._native import Delivery
from ._outcome import Retry

Handler = Callable[[Delivery], Union[Any, Awaitable[Any]]]


@dataclasses.dataclass(frozen=True)
class WorkerReport:
    """What a worker did, returned when it stops."""

    delivered: int = 0
    acked: int = 0
    retried: int = 0
    panicked: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    duplicates_skipped: int = 0
    duplicates_deferred: int = 0
    gone: int = 0
    unfinished: int = 0
    groups_recreated: int = 0

    @classmethod
    def _from_json(cls, text: str) -> "WorkerReport":
        d = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Worker:
    """Runs ``handler`` for every entry of ``group`` on ``stream``.

    The handler gets a :class:`Delivery` and may be a plain function or an
    ``async def``. Returning (anything) acknowledges the entry. Returning or
    raising :class:`Retry` retries it (after ``delay`` or the backoff);
    :class:`DeadLetter` moves it to the dead-letter stream ``{stream}:dlq``;
    ``DecodeError`` (e.g. ``delivery.data`` of an entry whose ``data`` is not
    JSON) and ``InvalidInputError`` dead-letter at once; any other exception
    retries, and never stops the worker. After ``max_deliveries`` deliveries an
    entry is dead-lettered.

    :meth:`run` blocks until :meth:`stop`, Ctrl-C or SIGTERM (handlers installed
    when run in the main thread), then stops gracefully: no more reads,
    deliveries in flight are still handled within ``shutdown_grace`` seconds,
    acknowledgements are flushed. A second Ctrl-C stops at once (what was in
    flight stays pending and is redelivered). Durations are in seconds;
    ``retry_backoff`` is ``(base, max)``, doubling per delivery.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        handler: Handler,
        *,
        name: Optional[str] = None,
        concurrency: Optional[int] = None,
        batch_size: Optional[int] = None,
        block: Optional[float] = None,
        visibility_timeout: Optional[float] = None,
        reclaim_interval: Optional[float] = None,
        max_deliveries: Optional[int] = None,
        retry_backoff: Optional[Tuple[float, float]] = None,
        shutdown_grace: Optional[float] = None,
        ordered_by_key: bool = False,
        idempotency_ttl: Optional[float] = None,
        start: str = "0",
        dead_letter_maxlen: Optional[int] = None,
        ack_flush_interval: Optional[float] = None,
        dispatch_batch: int = 512,
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable")
        self.client = client
        self.handler = handler
        self.dispatch_batch = dispatch_batch
        self._native = _native.Worker(
            client._native,
            stream,
            group,
            name=name,
            concurrency=concurrency,
            batch_size=batch_size,
            block=block,
            visibility_timeout=visibility_timeout,
            reclaim_interval=reclaim_interval,
            max_deliveries=max_deliveries,
            retry_backoff=retry_backoff,
            shutdown_grace=shutdown_grace,
            ordered_by_key=ordered_by_key,
            idempotency_ttl=idempotency_ttl,
            start=start,
            dead_letter_maxlen=dead_letter_maxlen,
            ack_flush_interval=ack_flush_interval,
        )
        self._signals = 0
        self._started = threading.Event()

    @property
    def name(self) -> str:
        """The consumer name in the group."""
        return self._native.name

    @property
    def stream(self) -> str:
        return self._native.stream

    @property
    def group(self) -> str:
        return self._native.group

    @property
    def is_async(self) -> bool:
        """Whether the handler is an ``async def``."""
        h = self.handler
        return inspect.iscoroutinefunction(h) or inspect.iscoroutinefunction(
            getattr(h, "__call__", None)
        )

    def stop(self) -> None:
        """Stops gracefully (thread-safe, idempotent): :meth:`run` returns once
        in-flight deliveries are handled and acknowledged."""
        self._native.stop()

    def wait_started(self, timeout: Optional[float] = None) -> bool:
        """Waits until :meth:`run` has started the worker."""
        return self._started.wait(timeout)

    def _on_signal(self, signum: int, frame: Any = None) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt  # a second signal: stop at once
        self.stop()

    def run(self, *, handle_signals: bool = True) -> WorkerReport:
        """Runs until stopped, then returns the :class:`WorkerReport`. Raises at
        start if Redis is unreachable or refuses the credentials."""
        if self.is_async:
            return asyncio.run(self.run_async(handle_signals=handle_signals))
        install = handle_signals and threading.current_thread() is threading.main_thread()
        previous: Dict[int, Any] = {}
        if install:
            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, self._on_signal)
        native = self._native
        try:
            native.start()
            self._started.set()
            handler, n = self.handler, self.dispatch_batch
            while native.dispatch(handler, n, 0.1):
                pass
        except BaseException:
            native.abort()  # hard stop: what was in flight stays pending
            try:
                native.join()
            except BaseException:
                pass
            raise
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return WorkerReport._from_json(native.join())

    async def run_async(self, *, handle_signals: bool = True) -> WorkerReport:
        """:meth:`run` under asyncio: each delivery is a task on the running
        loop (the library's ``concurrency`` bounds how many are in flight).
        Cancelling the task that runs it stops the worker gracefully."""
        loop = asyncio.get_running_loop()
        native = self._native
        installed = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(s, self._on_signal, s)
                    installed.append(s)
                except (NotImplementedError, RuntimeError):
                    pass
        native.start()
        self._started.set()
        tasks: Set["asyncio.Task[None]"] = set()
        cancelled = False
        handler, n = self.handler, self.dispatch_batch
        try:
            while True:
                # Shielded: a cancellation must not leave a read running in its
                # thread while the next one starts; it stops the worker instead.
                fut = loop.run_in_executor(None, native.next_batch, n, 0.1)
                while True:
                    try:
                        batch = await asyncio.shield(fut)
                        break
                    except asyncio.CancelledError:
                        native.stop()
                        cancelled = True
                if batch is None:
                    break
                for d in batch:
                    t = loop.create_task(_handle(handler, d))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
            while tasks:
                try:
                    await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
                except asyncio.CancelledError:
                    cancelled = True
            joined = loop.run_in_executor(None, native.join)
            while True:
                try:
                    text = await asyncio.shield(joined)
                    break
                except asyncio.CancelledError:
                    cancelled = True
            report = WorkerReport._from_json(text)
        except BaseException:
            native.abort()
            raise
        finally:
            for s in installed:
                loop.remove_signal_handler(s)
        if cancelled:
            raise asyncio.CancelledError
        return report


async def _handle(handler: Handler, d: Delivery) -> None:
    try:
        r = handler(d)
        if inspect.isawaitable(r):
            r = await r
    except asyncio.CancelledError:
        d._complete(error=Retry("handler cancelled"))
        raise
    except Exception as e:  # noqa: BLE001 - every failure retries, never stops the worker
        d._complete(error=e)
    else:
        d._complete(result=r)
