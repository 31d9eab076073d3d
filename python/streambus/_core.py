"""Client, Producer and Consumer: thin wrappers of the native classes, with
``*_async`` twins that run the blocking call on a thread (the GIL is released
while Rust waits, so the event loop keeps running)."""

from __future__ import annotations

import asyncio
import functools
from os import PathLike
from typing import Any, Iterable, List, Mapping, Optional, Sequence, TypeVar, Union

from . import _native
from ._native import Entry

T = TypeVar("T")


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


class Client:
    """Where Redis is, and a shared connection that reconnects by itself.

    Made with :meth:`Client.open`, which connects and checks the connection with
    ``PING``: a bad URL raises ``InvalidInputError``, an unreachable server
    ``ConnectError``, a wrong password ``AuthError``.
    """

    __slots__ = ("_native",)

    def __init__(self, native: "_native.Client") -> None:
        self._native = native

    @classmethod
    def open(
        cls,
        url: str,
        *,
        ca_file: Optional[Union[str, "PathLike[str]"]] = None,
        client_cert_file: Optional[Union[str, "PathLike[str]"]] = None,
        client_key_file: Optional[Union[str, "PathLike[str]"]] = None,
        insecure_skip_verify: bool = False,
        connect_timeout: Optional[float] = None,
        response_timeout: Optional[float] = None,
    ) -> "Client":
        """Connects to ``url``: ``redis://[user:password@]host[:port][/db]``,
        ``rediss://...`` (TLS; certificates also as ``?ca=…&cert=…&key=…``),
        ``redis+unix:///path``, or a cluster ``redis+cluster://h1:p1,h2:p2``.
        Timeouts are in seconds (defaults 3 s)."""
        return cls(
            _native.Client.open(
                url,
                ca_file=ca_file,
                client_cert_file=client_cert_file,
                client_key_file=client_key_file,
                insecure_skip_verify=insecure_skip_verify,
                connect_timeout=connect_timeout,
                response_timeout=response_timeout,
            )
        )

    @classmethod
    async def open_async(cls, url: str, **options: Any) -> "Client":
        """:meth:`open` for asyncio."""
        return await _in_thread(cls.open, url, **options)

    @property
    def url(self) -> str:
        """The URL with its password masked."""
        return self._native.url

    @property
    def is_cluster(self) -> bool:
        return self._native.is_cluster

    def ping(self) -> None:
        """``PING``; raises ``ConnectError`` if Redis does not answer."""
        self._native.ping()

    async def ping_async(self) -> None:
        await _in_thread(self._native.ping)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


class Producer:
    """Publishes envelopes (``id``, ``timestamp``, ``data`` = the payload as JSON,
    optional ``type`` and ``key``) or raw entries.

    Retention is part of the same XADD: ``maxlen`` (``MAXLEN ~ n``; exact with
    ``exact=True``) or ``max_age`` seconds (``MINID ~``). Safe to share between
    threads: concurrent publishes are pipelined.
    """

    __slots__ = ("_native", "client")

    def __init__(
        self,
        client: Client,
        *,
        maxlen: Optional[int] = None,
        exact: bool = False,
        max_age: Optional[float] = None,
        max_message_bytes: Optional[int] = None,
        publish_timeout: Optional[float] = None,
    ) -> None:
        self.client = client
        self._native = _native.Producer(
            client._native,
            maxlen=maxlen,
            exact=exact,
            max_age=max_age,
            max_message_bytes=max_message_bytes,
            publish_timeout=publish_timeout,
        )

    def publish(
        self,
        stream: str,
        data: Any,
        *,
        key: Optional[str] = None,
        type: Optional[str] = None,
        id: Optional[str] = None,
    ) -> str:
        """Publishes ``data`` (anything ``json.dumps`` takes) as one envelope;
        returns the entry id. ``id`` overrides the envelope's UUID (to re-publish
        with the original id). A payload that is not JSON serializable raises
        ``TypeError`` (``ValueError`` for NaN/infinity), and nothing is written."""
        return self._native.publish(stream, data, key=key, type=type, id=id)

    def publish_raw(self, stream: str, fields: Mapping[str, Union[str, bytes, int, float]]) -> str:
        """Publishes a raw entry with exactly these fields (no envelope)."""
        return self._native.publish_raw(stream, dict(fields))

    def publish_batch(
        self,
        stream: str,
        items: Iterable[Any],
        *,
        key: Optional[str] = None,
        type: Optional[str] = None,
    ) -> List[str]:
        """Publishes many payloads as envelopes in pipelines (one round trip per
        few hundred); returns their entry ids, in order."""
        return self._native.publish_batch(stream, items, key=key, type=type)

    async def publish_async(self, stream: str, data: Any, **kw: Any) -> str:
        """:meth:`publish` for asyncio; concurrent calls share round trips."""
        return await _in_thread(self._native.publish, stream, data, **kw)

    async def publish_raw_async(self, stream: str, fields: Mapping[str, Any]) -> str:
        return await _in_thread(self._native.publish_raw, stream, dict(fields))

    async def publish_batch_async(self, stream: str, items: Iterable[Any], **kw: Any) -> List[str]:
        items = list(items)
        return await _in_thread(self._native.publish_batch, stream, items, **kw)


def _ids(items: Union[str, Entry, Iterable[Union[str, Entry]]]) -> List[str]:
    if isinstance(items, (str, Entry)):
        items = [items]
    return [i.id if isinstance(i, Entry) else str(i) for i in items]


class Consumer:
    """One named member of a consumer group, read and acknowledged by hand.

    The group (and stream) is created if missing (from ``start``: ``"0"``, ``"$"``
    or an entry id). A consumer restarted under the same ``name`` first re-reads
    its own pending entries, then new ones. For automatic retries, reclaim and
    dead letters use :class:`Worker`.
    """

    __slots__ = ("_native", "client")

    def __init__(
        self,
        client: Client,
        stream: str,
        group: str,
        *,
        name: Optional[str] = None,
        batch_size: int = 10,
        max_wait: float = 2.0,
        start: str = "0",
        create_group: bool = True,
    ) -> None:
        self.client = client
        self._native = _native.Consumer(
            client._native,
            stream,
            group,
            name=name,
            batch_size=batch_size,
            max_wait=max_wait,
            start=start,
            create_group=create_group,
        )

    @property
    def stream(self) -> str:
        return self._native.stream

    @property
    def group(self) -> str:
        return self._native.group

    @property
    def name(self) -> str:
        """The consumer's name in the group."""
        return self._native.name

    def next_batch(self) -> List[Entry]:
        """``batch_size`` entries, or what arrived within ``max_wait`` seconds."""
        return self._native.next_batch()

    def read(self, count: int, block: Optional[float] = None) -> List[Entry]:
        """One read of up to ``count`` entries, waiting up to ``block`` seconds."""
        return self._native.read(count, block)

    def ack(self, entries: Union[str, Entry, Iterable[Union[str, Entry]]]) -> int:
        """Acknowledges entries (or ids) in one XACK; returns how many were pending."""
        return self._native.ack(_ids(entries))

    def ack_and_delete(self, entries: Union[str, Entry, Iterable[Union[str, Entry]]]) -> int:
        """Acknowledges and deletes entries (XACK + XDEL)."""
        return self._native.ack_and_delete(_ids(entries))

    async def next_batch_async(self) -> List[Entry]:
        return await _in_thread(self._native.next_batch)

    async def read_async(self, count: int, block: Optional[float] = None) -> List[Entry]:
        return await _in_thread(self._native.read, count, block)

    async def ack_async(self, entries: Union[str, Entry, Sequence[Union[str, Entry]]]) -> int:
        return await _in_thread(self._native.ack, _ids(entries))

    def __repr__(self) -> str:
        return f"Consumer(stream={self.stream!r}, group={self.group!r}, name={self.name!r})"
