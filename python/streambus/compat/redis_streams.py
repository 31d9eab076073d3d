"""Drop-in replacement of the ``redis-streams`` PyPI package (0.3.0): ``Producer``,
``Consumer``, ``Monitor`` and ``Scaler`` with the same constructor arguments,
methods and output. Change only the imports::

    from streambus.compat.redis_streams import Consumer, Monitor, Producer, Scaler

The ``redis_conn`` argument is a ``redis.Redis``; streambus takes its address,
credentials and db from it and talks to Redis over its own connection.

Differences, on purpose:

- ``Monitor`` cleanup is the safe one: a consumer counts as dead when it has
  been idle past ``idle_time_ms_warning_threshold``; its pending entries are
  handed to the least-loaded healthy consumer and it is deleted only once its
  pending list is empty (checked and deleted atomically). The original also
  deleted busy consumers ("too many pending items") and could drop entries
  with ``XGROUP DELCONSUMER``; here no entry is ever lost.
- ``Scaler`` counts undelivered entries from the group's lag (O(1)) instead of
  an ``XRANGE`` over the backlog, and always uses fresh counts (the original
  could answer from stale ones). The rate, the suggestion and the printed
  sentence are the same, bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from enum import Enum
from typing import Any, Dict, List, Optional, Tuple, Union

from .. import _native
from .._admin import Monitor as _Monitor
from ._redis_py import client_from_redis


def _decode(conn: Any) -> bool:
    return bool(conn.connection_pool.connection_kwargs.get("decode_responses"))


def _text(v: Any, decode: bool) -> Any:
    if decode and isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


class _Base:
    def __init__(self, redis_conn: Any, stream: str, consumer_group: str) -> None:
        self.redis_conn = redis_conn
        self.stream = stream
        self.consumer_group = consumer_group
        self._decode = _decode(redis_conn)
        self._client = client_from_redis(redis_conn, response_timeout=self._response_timeout())
        self._create_consumer_group()

    def _response_timeout(self) -> float:
        return 3.0

    def _cmd(self, *args: Any) -> Any:
        return _native.command(self._client._native, list(args))

    def _create_consumer_group(self) -> None:
        try:
            self._cmd("XGROUP", "CREATE", self.stream, self.consumer_group, "0-0", "MKSTREAM")
        except _native.RedisError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def get_pending_items_of_consumer(self, item_count: int, consumer_id: str) -> List[Dict[str, Any]]:
        """The consumer's pending entries, as redis-py's ``xpending_range`` gives them."""
        rows = self._cmd("XPENDING", self.stream, self.consumer_group, "-", "+", item_count,
                         consumer_id)
        return [
            {
                "message_id": _text(r[0], self._decode),
                "consumer": _text(r[1], self._decode),
                "time_since_delivered": r[2],
                "times_delivered": r[3],
            }
            for r in rows
        ]


class Producer:
    """Publishes raw entries (field maps) to ``stream``, trimmed to about
    ``maxlen`` entries in the same XADD when given."""

    def __init__(self, redis_conn: Any, stream: str, maxlen: Optional[int] = None) -> None:
        from .._core import Producer as _Producer

        self.redis_conn = redis_conn
        self.stream = stream
        self.maxlen = maxlen
        self._decode = _decode(redis_conn)
        self._producer = _Producer(client_from_redis(redis_conn), maxlen=maxlen)

    def add(self, data: Dict[str, Union[str, int, float, bytes]]) -> Union[str, bytes]:
        """Publishes one message; returns its id (``bytes`` unless the connection
        decodes responses, as redis-py returns it)."""
        msg_id = self._producer.publish_raw(self.stream, data)
        return msg_id if self._decode else msg_id.encode()

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(redis_conn={self.redis_conn},"
                f"stream={self.stream},maxlen={self.maxlen})")


class RedisMsg:
    """One message: its id and its field map."""

    def __init__(self, msgid: Any, content: Dict[Any, Any]) -> None:
        self.msgid = msgid
        self.content = content

    def __str__(self) -> str:
        return f"id: {self.msgid}, content: {self.content}"

    def __repr__(self) -> str:
        return f"RedisMsg(msgid={self.msgid}, content={self.content})"


class MsgId(Enum):
    never_delivered = ">"
    already_delivered = "0"


class Consumer(_Base):
    """Collects batches for a member of ``consumer_group``.

    ``get_items`` returns up to ``batch_size`` messages: first those already
    assigned to this consumer and not yet removed (a failed message is part of
    the next batch), then new ones, waiting up to ``max_wait_time_ms`` for the
    batch to fill (polling every ``poll_time_ms``).
    """

    def __init__(
        self,
        redis_conn: Any,
        stream: str,
        consumer_group: str,
        consumer_id: Union[str, int] = f"{os.getpid()}{threading.get_ident()}",
        batch_size: int = 2,
        max_wait_time_ms: int = 10000,
        poll_time_ms: int = 1000,
        cleanup_on_exit: bool = True,
    ) -> None:
        self.poll_time_ms = poll_time_ms
        super().__init__(redis_conn, stream, consumer_group)
        self.consumer_id = consumer_id
        self.batch_size = batch_size
        self.max_wait_time_ms = max_wait_time_ms
        self.cleanup_on_exit = cleanup_on_exit
        self.assigned_messages = 0

    def _response_timeout(self) -> float:
        return self.poll_time_ms / 1000 + 3.0  # a blocking read waits up to poll_time_ms

    def _read(self, start: str, count: int, block: Optional[int]) -> List[RedisMsg]:
        args: List[Any] = ["XREADGROUP", "GROUP", self.consumer_group, str(self.consumer_id),
                           "COUNT", max(1, count)]
        if block is not None:
            args += ["BLOCK", block]
        args += ["STREAMS", self.stream, start]
        try:
            reply = self._cmd(*args)
        except _native.RedisError:
            return []  # as the original: a failed read is an empty one
        msgs = []
        for _stream, entries in reply or []:
            for msg_id, fields in entries:
                if fields is None:
                    continue  # deleted from the stream while pending
                it = iter(fields)
                content = {_text(k, self._decode): _text(v, self._decode) for k, v in zip(it, it)}
                msgs.append(RedisMsg(_text(msg_id, self._decode), content))
        return msgs

    def get_items(self) -> List[RedisMsg]:
        """A batch: this consumer's pending messages, then new ones."""
        deadline = time.monotonic() + self.max_wait_time_ms / 1000
        self.assigned_messages = len(
            self.get_pending_items_of_consumer(self.batch_size, str(self.consumer_id))
        )
        while time.monotonic() <= deadline and self.assigned_messages < self.batch_size:
            wanted = max(1, self.batch_size - self.assigned_messages)
            self.assigned_messages += len(self._read(">", wanted, self.poll_time_ms))
        return self._read("0", self.batch_size, None)

    def remove_item_from_consumer_group(self, item_id: Any) -> None:
        """Acknowledges a message (XACK): it leaves the pending list; it stays in
        the stream."""
        self._cmd("XACK", self.stream, self.consumer_group, item_id)

    def remove_item_from_stream(self, item_id: Any) -> None:
        """Deprecated name of :meth:`remove_item_from_consumer_group`."""
        import warnings

        warnings.warn("remove_item_from_stream() only acknowledges the message; use "
                      "remove_item_from_consumer_group()", DeprecationWarning, stacklevel=2)
        self.remove_item_from_consumer_group(item_id)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(redis_conn={self.redis_conn},stream={self.stream},"
                f"consumer_group={self.consumer_group},consumer_id={self.consumer_id},"
                f"batch_size={self.batch_size},max_wait_time_ms={self.max_wait_time_ms},"
                f"poll_time_ms={self.poll_time_ms})")


class Status(Enum):
    OK = "OK"
    PENDING = "WARNING - too many pending items"
    IDLE = "WARNING - idle for long time"


class ConsumerMetrics:
    def __init__(self, consumer_id: Any, pending_items: int, idle_time: int, status: str) -> None:
        self.consumer_id = consumer_id
        self.pending_items = pending_items
        self.idle_time = idle_time
        self.status = status

    def __repr__(self) -> str:
        return (f'ConsumerMetrics(consumer_id="{self.consumer_id}", '
                f'pending_items={self.pending_items}", idle_time={self.idle_time}", '
                f'status="{self.status}")')

    def __str__(self) -> str:
        return json.dumps({"consumer_id": str(self.consumer_id), "pending_items": self.pending_items,
                           "idle_time": self.idle_time, "status": self.status})


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def grid_table(rows: List[List[Any]], headers: List[str]) -> str:
    """The table ``tabulate(rows, headers, tablefmt="grid")`` prints: numeric
    columns right-aligned, text left-aligned, a ``=`` rule under the headers."""
    cols = len(headers)
    cells = [[str(c) for c in row] for row in rows]
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(cols)]
    # tabulate's MIN_PADDING: a column is at least its header plus 2 wide.
    widths = [max([len(headers[i]) + 2] + [len(r[i]) for r in cells]) for i in range(cols)]

    def line(values: List[str]) -> str:
        parts = [v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i])
                 for i, v in enumerate(values)]
        return "| " + " | ".join(parts) + " |"

    def rule(ch: str) -> str:
        return "+" + "+".join(ch * (w + 2) for w in widths) + "+"

    out = [rule("-"), line(headers), rule("=")]
    for r in cells:
        out += [line(r), rule("-")]
    if not cells:
        out = [rule("-"), line(headers), rule("=")]
    return "\n".join(out)


class Monitor(_Base):
    """Checks the consumers of the stream's groups: ``WARNING - too many pending
    items`` above ``batch_size`` pending, ``WARNING - idle for long time`` above
    ``idle_time_ms_warning_threshold`` ms idle; cleans up dead consumers safely."""

    def __init__(
        self,
        redis_conn: Any,
        stream: str,
        consumer_group: str,
        batch_size: int = 2,
        min_wait_time_ms: int = 1000,
        idle_time_ms_warning_threshold: int = 30000,
    ) -> None:
        super().__init__(redis_conn, stream, consumer_group)
        self.batch_size = batch_size
        self.min_wait_time_ms = min_wait_time_ms
        self.idle_time_ms_warning_threshold = idle_time_ms_warning_threshold
        self.collected_consumers_data: List[ConsumerMetrics] = []
        self.unhealthy_consumers: Dict[str, Dict[Any, int]] = {}
        self.consumer_to_assign: Any = ""
        self._monitor = _Monitor(self._client, idle_threshold=idle_time_ms_warning_threshold / 1000,
                                 pending_warning=batch_size, delivery_sample=0)

    def _get_status_by_metrics(self, pending: int, idle: int) -> str:
        if pending > self.batch_size:
            return Status.PENDING.value
        if idle > self.idle_time_ms_warning_threshold:
            return Status.IDLE.value
        return Status.OK.value

    def collect_monitoring_data(self, auto_cleanup: bool = True) -> None:
        """Collects each consumer's idle time, pending count and status (see
        :meth:`print_monitoring_data`); with ``auto_cleanup`` then runs the safe
        :meth:`cleanup`."""
        self.collected_consumers_data = []
        self.unhealthy_consumers = {}
        self.consumer_to_assign = ""
        snap = self._monitor.snapshot(self.stream)
        best: Optional[int] = None
        for g in snap.groups:
            for c in g.consumers:
                name = c.name if self._decode else c.name.encode()
                status = self._get_status_by_metrics(c.pending, c.idle_ms)
                if status != Status.OK.value:
                    self.unhealthy_consumers.setdefault(g.name, {})[name] = c.pending
                elif best is None or c.pending < best:
                    self.consumer_to_assign, best = name, c.pending
                self.collected_consumers_data.append(
                    ConsumerMetrics(consumer_id=name, pending_items=c.pending,
                                    idle_time=c.idle_ms, status=status))
        if auto_cleanup and self.consumer_to_assign and self.unhealthy_consumers:
            self.cleanup()

    def cleanup(self) -> Dict[str, Any]:
        """Hands the pending entries of consumers idle past the threshold to the
        least-loaded healthy consumer, and deletes each only once its pending list
        is empty: never loses an entry. Returns the report per group."""
        reports = {}
        for group in list(self.unhealthy_consumers) or [self.consumer_group]:
            reports[group] = self._monitor.cleanup(self.stream, group)
        return reports

    def _generate_table(self) -> str:
        rows = [[r.consumer_id, r.idle_time, r.pending_items, r.status]
                for r in self.collected_consumers_data]
        return grid_table(rows, ["Consumer id", "Idle time", "Pending items", "Status"])

    def print_monitoring_data(self, output_stream: Any = None) -> None:
        """Writes the consumer table (the original's ``tabulate`` grid) to
        ``output_stream`` (default: ``sys.stdout`` at the time of the call)."""
        if output_stream is None:
            output_stream = sys.stdout
        if hasattr(output_stream, "write"):
            output_stream.write(self._generate_table())
        else:
            print(self._generate_table())


class Scale(Enum):
    OUT = "OUT"
    IN = "IN"
    NOSCALE = "NO_SCALE"


class Scaler(_Base):
    """The utilization rate ``undelivered / pending * 100`` (clamped to 1..100,
    4 places) and the ``IN`` / ``OUT`` / ``NO_SCALE`` suggestion."""

    def __init__(self, redis_conn: Any, stream: str, consumer_group: str) -> None:
        super().__init__(redis_conn, stream, consumer_group)
        self.stream_lenght = 0
        self.stream_pending = 0
        self.lenght_pending_rate: Union[int, float] = 0
        self.consumers_of_group = 0

    def collect_metrics(self) -> Tuple[int, int]:
        """Fresh counts: (undelivered entries, pending entries) of the group."""
        s = json.loads(_native.scaler_sample(self._client._native, self.stream,
                                             self.consumer_group))
        self.stream_pending = int(s["pending"])
        self.consumers_of_group = int(s["consumers"])
        if s["lag"] is None:
            raise _native.RedisError(
                f"Redis cannot tell the lag of group {self.consumer_group!r}")
        self.stream_lenght = int(s["lag"])
        return self.stream_lenght, self.stream_pending

    def get_scale_decision(self, scale_out_rate: int = 50, scale_in_rate: int = 10
                           ) -> Tuple[Union[int, float], str]:
        """``(rate, suggestion)`` on fresh counts; ``ValueError`` for bad thresholds."""
        if scale_in_rate > scale_out_rate:
            raise ValueError("Scale out rate must be bigger than scale in rate")
        if scale_in_rate < 0 or scale_in_rate > 100:
            raise ValueError("Scale in rate must be within 0 and 100")
        if scale_out_rate < 0 or scale_out_rate > 100:
            raise ValueError("Scale in rate must be within 0 and 100")
        self.collect_metrics()
        rate, suggestion, sentence = _native.scale_decision(
            self.stream_lenght, self.stream_pending, self.consumers_of_group,
            float(scale_out_rate), float(scale_in_rate))
        # Python's own value: an int where the original's min/max/0 gave one.
        text = sentence.rsplit(" ", 1)[-1].rstrip("%")
        self.lenght_pending_rate = int(text) if "." not in text else rate
        return self.lenght_pending_rate, suggestion


__all__ = ["Consumer", "ConsumerMetrics", "Monitor", "MsgId", "Producer", "RedisMsg", "Scale",
           "Scaler", "Status", "grid_table"]
