"""Monitor, Scaler and dead letters (``streambus::admin`` in Rust), with results
as dataclasses (``dataclasses.asdict`` gives dicts)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

from . import _native
from ._core import Client

T = TypeVar("T")


def _build(cls: Type[T], d: Dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class ConsumerSnapshot:
    """One consumer of a group."""

    name: str
    pending: int
    idle_ms: int
    inactive_ms: Optional[int]
    #: ``OK``, ``IDLE``, ``STALLED`` or ``TOO_MANY_PENDING``.
    status: str

    @property
    def reference_status(self) -> str:
        """The status in the words of the redis-streams package's table."""
        return {
            "OK": "OK",
            "IDLE": "WARNING - idle for long time",
            "STALLED": "WARNING - stalled with pending items",
            "TOO_MANY_PENDING": "WARNING - too many pending items",
        }.get(self.status, self.status)


@dataclasses.dataclass(frozen=True)
class GroupSnapshot:
    """One consumer group: lag (``None`` when Redis cannot tell), pending, ages."""

    name: str
    pending: int
    lag: Optional[int]
    entries_read: Optional[int]
    last_delivered_id: str
    oldest_pending_id: Optional[str]
    oldest_pending_age_ms: Optional[int]
    oldest_pending_idle_ms: Optional[int]
    delivery_counts: Optional[Dict[str, int]]
    consumers: List[ConsumerSnapshot]

    def consumer(self, name: str) -> Optional[ConsumerSnapshot]:
        return next((c for c in self.consumers if c.name == name), None)


@dataclasses.dataclass(frozen=True)
class StreamSnapshot:
    """A stream, its groups and their consumers, at one moment."""

    stream: str
    server_time_ms: int
    length: int
    first_entry_id: Optional[str]
    first_entry_age_ms: Optional[int]
    last_entry_id: Optional[str]
    last_entry_age_ms: Optional[int]
    last_generated_id: str
    entries_added: Optional[int]
    max_deleted_entry_id: Optional[str]
    groups: List[GroupSnapshot]

    def group(self, name: str) -> Optional[GroupSnapshot]:
        return next((g for g in self.groups if g.name == name), None)

    @classmethod
    def _from_json(cls, text: str) -> "StreamSnapshot":
        d = json.loads(text)
        groups = []
        for g in d.get("groups", []):
            g = dict(g)
            g["consumers"] = [_build(ConsumerSnapshot, c) for c in g.get("consumers", [])]
            groups.append(_build(GroupSnapshot, g))
        d["groups"] = groups
        return _build(cls, d)


@dataclasses.dataclass(frozen=True)
class CleanupReport:
    """What a cleanup did (or would do, in a dry run)."""

    dry_run: bool
    #: ``{"from": consumer, "to": consumer, "count": n}`` per hand-over.
    moved: List[Dict[str, Any]]
    deleted: List[str]
    #: ``{"consumer", "pending", "reason"}`` for dead consumers left in place.
    skipped: List[Dict[str, Any]]
    vanished: int

    @property
    def moved_total(self) -> int:
        return sum(m.get("count", 0) for m in self.moved)


class Monitor:
    """Looks at streams: lag, pending, oldest pending age per group; idle time,
    pending and status per consumer. O(groups + consumers) commands, never the
    backlog. A consumer idle longer than ``idle_threshold`` seconds is ``IDLE``
    (``STALLED`` if it holds entries); one holding more than ``pending_warning``
    is ``TOO_MANY_PENDING``."""

    def __init__(
        self,
        client: Client,
        *,
        idle_threshold: float = 60.0,
        pending_warning: int = 100,
        delivery_sample: int = 10,
    ) -> None:
        self.client = client
        self.idle_threshold = idle_threshold
        self.pending_warning = pending_warning
        self.delivery_sample = delivery_sample

    def snapshot(self, stream: str, group: Optional[str] = None) -> StreamSnapshot:
        """A fresh snapshot of ``stream`` (only ``group`` if given). Raises
        ``NoGroupError`` if the stream does not exist."""
        text = _native.monitor_snapshot(
            self.client._native,
            stream,
            idle_threshold=self.idle_threshold,
            pending_warning=self.pending_warning,
            delivery_sample=self.delivery_sample,
            group=group,
        )
        return StreamSnapshot._from_json(text)

    def cleanup(self, stream: str, group: str, *, dry_run: bool = False) -> CleanupReport:
        """Hands the pending entries of dead consumers (idle above the threshold)
        to the least-loaded live one, and deletes a dead consumer only when its
        pending list is empty (checked and deleted atomically): never loses an
        entry, unlike a plain XGROUP DELCONSUMER."""
        text = _native.monitor_cleanup(
            self.client._native,
            stream,
            group,
            idle_threshold=self.idle_threshold,
            dry_run=dry_run,
        )
        return _build(CleanupReport, json.loads(text))


@dataclasses.dataclass(frozen=True)
class ScaleDecision:
    """The redis-streams package's scale rule, on fresh counts."""

    #: ``undelivered / pending * 100`` clamped to 1..100, rounded to 4 places; 0
    #: when nothing is pending.
    rate: float
    #: ``IN``, ``OUT`` or ``NO_SCALE``.
    suggestion: str
    #: ``Consumers should be IN as stream length (11) / pending (83) rate is 13.253%``
    sentence: str
    #: Entries not yet delivered to the group (its lag).
    undelivered: int
    pending: int
    consumers: int


class Scaler:
    """How many consumers a group should have: the redis-streams rule (rate and
    ``IN``/``OUT``/``NO_SCALE``) on the group's lag and pending count."""

    def __init__(
        self,
        client: Client,
        stream: str,
        group: str,
        *,
        scale_out: float = 50.0,
        scale_in: float = 10.0,
    ) -> None:
        _native.scale_decision(0, 0, 0, scale_out, scale_in)  # validates the thresholds
        self.client = client
        self.stream = stream
        self.group = group
        self.scale_out = scale_out
        self.scale_in = scale_in

    def sample(self) -> Dict[str, Optional[int]]:
        """The group's counters: ``entries_added``, ``entries_read``, ``lag``,
        ``pending``, ``consumers`` (two O(1) commands)."""
        return json.loads(_native.scaler_sample(self.client._native, self.stream, self.group))

    def decision(
        self, *, scale_out: Optional[float] = None, scale_in: Optional[float] = None
    ) -> ScaleDecision:
        """The decision on fresh counts. Raises ``RedisError`` when Redis cannot
        tell the group's lag (streambus does not guess it)."""
        s = self.sample()
        if s.get("lag") is None:
            raise _native.RedisError(
                f"Redis cannot tell the lag of group {self.group!r} (entries deleted mid-stream?)"
            )
        return self._decide(int(s["lag"] or 0), int(s["pending"] or 0), int(s["consumers"] or 0),
                            scale_out, scale_in)

    def _decide(
        self, undelivered: int, pending: int, consumers: int,
        scale_out: Optional[float], scale_in: Optional[float],
    ) -> ScaleDecision:
        rate, suggestion, sentence = _native.scale_decision(
            undelivered,
            pending,
            consumers,
            self.scale_out if scale_out is None else scale_out,
            self.scale_in if scale_in is None else scale_in,
        )
        return ScaleDecision(rate, suggestion, sentence, undelivered, pending, consumers)


@dataclasses.dataclass(frozen=True)
class DeadLetterRecord:
    """One entry of a dead-letter stream."""

    #: Its id in the dead-letter stream (what replay and delete take).
    id: str
    reason: Optional[str]
    group: Optional[str]
    consumer: Optional[str]
    deliveries: Optional[int]
    #: Its id in the original stream.
    source_id: Optional[str]
    #: The original fields (text).
    fields: Dict[str, str]

    @property
    def data(self) -> Any:
        """The original envelope's payload, decoded; ``None`` for raw entries."""
        text = self.fields.get("data")
        return None if text is None else json.loads(text)


class DeadLetters:
    """The dead-letter stream ``{stream}:dlq`` of ``stream``: list, replay, purge."""

    def __init__(self, client: Client, stream: str) -> None:
        self.client = client
        self.stream = stream

    def list(self, count: int = 100, after: Optional[str] = None) -> List[DeadLetterRecord]:
        """Up to ``count`` dead letters, oldest first, after id ``after``."""
        text = _native.dead_letter_list(self.client._native, self.stream, count=count, after=after)
        return [_build(DeadLetterRecord, d) for d in json.loads(text)]

    def count(self) -> int:
        return _native.dead_letter_count(self.client._native, self.stream)

    def replay(self, id: str) -> Optional[str]:
        """Puts dead letter ``id`` back onto the stream (original fields) and
        removes it, atomically; returns the new entry id (``None``: no such letter)."""
        return _native.dead_letter_replay(self.client._native, self.stream, id)

    def replay_all(self) -> int:
        """Replays every dead letter; returns how many."""
        return _native.dead_letter_replay_all(self.client._native, self.stream)

    def delete(self, ids: List[str]) -> int:
        """Deletes single dead letters; returns how many existed."""
        return _native.dead_letter_delete(self.client._native, self.stream, list(ids))

    def purge(self) -> int:
        """Deletes the dead-letter stream; returns how many letters it held."""
        return _native.dead_letter_purge(self.client._native, self.stream)
