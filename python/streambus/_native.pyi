"""Type stubs of the native extension ``streambus._native`` (PyO3). Use the
public API in :mod:`streambus`; this module is its engine."""

from os import PathLike
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

__version__: str

class StreambusError(Exception):
    """Base class of every streambus error."""

    #: The library's ErrorKind: ``connection``, ``timeout``, ``auth``, ``permission``,
    #: ``no_group``, ``no_stream``, ``wrong_type``, ``decode``, ``too_large``,
    #: ``invalid_input``, ``busy``, ``redis``, ...
    kind: str
    #: Whether trying again later may succeed.
    retryable: bool

class ConnectError(StreambusError): ...
class AuthError(StreambusError): ...
class NoGroupError(StreambusError): ...
class DecodeError(StreambusError): ...
class InvalidInputError(StreambusError): ...
class RedisError(StreambusError): ...

def _register(retry: type, dead_letter: type, json_loads: Any) -> None: ...
def to_json(obj: Any) -> str:
    """``obj`` as JSON text, as ``publish`` encodes payloads."""

def command(client: Client, args: List[Union[str, bytes, int, float]]) -> Any:
    """One raw command on the client's shared connection."""

class Client:
    @staticmethod
    def open(
        url: str,
        *,
        ca_file: Optional[Union[str, "PathLike[str]"]] = None,
        client_cert_file: Optional[Union[str, "PathLike[str]"]] = None,
        client_key_file: Optional[Union[str, "PathLike[str]"]] = None,
        insecure_skip_verify: bool = False,
        connect_timeout: Optional[float] = None,
        response_timeout: Optional[float] = None,
    ) -> Client: ...
    @property
    def url(self) -> str: ...
    @property
    def is_cluster(self) -> bool: ...
    def ping(self) -> None: ...

class Entry:
    """One stream entry: id, raw fields and the envelope decoded from them."""

    @property
    def id(self) -> str: ...
    @property
    def stream(self) -> str: ...
    @property
    def fields(self) -> Dict[str, bytes]:
        """The raw field map, values as bytes."""
    @property
    def text_fields(self) -> Dict[str, str]:
        """The raw field map, values decoded as UTF-8 (invalid bytes replaced)."""
    @property
    def is_envelope(self) -> bool:
        """Whether the entry has the envelope's ``id`` and ``data`` fields."""
    @property
    def data(self) -> Any:
        """The envelope payload decoded from JSON; ``None`` for raw entries.
        Raises ``DecodeError`` if ``data`` is not valid JSON."""
    @property
    def data_text(self) -> Optional[str]: ...
    @property
    def message_id(self) -> Optional[str]:
        """The envelope's UUID."""
    @property
    def timestamp(self) -> Optional[str]: ...
    @property
    def type(self) -> Optional[str]: ...
    @property
    def key(self) -> Optional[str]: ...
    @property
    def traceparent(self) -> Optional[str]: ...
    def to_dict(self) -> Dict[str, Any]: ...

class Delivery(Entry):
    """An entry handed to a worker's handler."""

    @property
    def deliveries(self) -> int:
        """How many times it has been delivered, this time included (1 at first)."""
    def _complete(self, result: Any = None, error: Optional[BaseException] = None) -> bool: ...

class Producer:
    def __init__(
        self,
        client: Client,
        *,
        maxlen: Optional[int] = None,
        exact: bool = False,
        max_age: Optional[float] = None,
        max_message_bytes: Optional[int] = None,
        publish_timeout: Optional[float] = None,
    ) -> None: ...
    def publish(
        self,
        stream: str,
        data: Any,
        *,
        key: Optional[str] = None,
        type: Optional[str] = None,
        id: Optional[str] = None,
    ) -> str: ...
    def publish_raw(self, stream: str, fields: Dict[str, Any]) -> str: ...
    def publish_batch(
        self, stream: str, items: Iterable[Any], *, key: Optional[str] = None,
        type: Optional[str] = None,
    ) -> List[str]: ...

class Consumer:
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
    ) -> None: ...
    @property
    def stream(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def name(self) -> str: ...
    def next_batch(self) -> List[Entry]: ...
    def read(self, count: int, block: Optional[float] = None) -> List[Entry]: ...
    def ack(self, ids: List[str]) -> int: ...
    def ack_and_delete(self, ids: List[str]) -> int: ...

class Worker:
    def __init__(
        self,
        client: Client,
        stream: str,
        group: str,
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
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def stream(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def stopping(self) -> bool: ...
    def start(self) -> None: ...
    def dispatch(self, handler: Any, max: int = 512, timeout: float = 0.1) -> bool: ...
    def next_batch(self, max: int = 512, timeout: float = 0.1) -> Optional[List[Delivery]]: ...
    def stop(self) -> None: ...
    def abort(self) -> None: ...
    def join(self) -> str: ...

def monitor_snapshot(
    client: Client, stream: str, *, idle_threshold: float = 60.0, pending_warning: int = 100,
    delivery_sample: int = 10, group: Optional[str] = None,
) -> str: ...
def monitor_cleanup(
    client: Client, stream: str, group: str, *, idle_threshold: float = 60.0, dry_run: bool = False,
) -> str: ...
def scale_decision(
    undelivered: int, pending: int, consumers: int, scale_out: float = 50.0, scale_in: float = 10.0,
) -> Tuple[float, str, str]: ...
def scaler_sample(client: Client, stream: str, group: str) -> str: ...
def dead_letter_list(client: Client, stream: str, *, count: int = 100, after: Optional[str] = None) -> str: ...
def dead_letter_count(client: Client, stream: str) -> int: ...
def dead_letter_replay(client: Client, stream: str, id: str) -> Optional[str]: ...
def dead_letter_replay_all(client: Client, stream: str) -> int: ...
def dead_letter_purge(client: Client, stream: str) -> int: ...
def dead_letter_delete(client: Client, stream: str, ids: List[str]) -> int: ...
