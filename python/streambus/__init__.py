"""streambus: a reliable event bus on Redis Streams, for Python.

The engine is the streambus Rust library (PyO3 extension ``streambus._native``,
with its own tokio runtime); this package is a thin, typed layer over it.
Every call that waits on Redis releases the GIL. Each blocking method has an
``*_async`` twin for asyncio (run on a worker thread, GIL released while Rust
waits).

    >>> from streambus import Client, Producer, Worker
    >>> client = Client.open("redis://127.0.0.1:6379")
    >>> Producer(client).publish("aurora:alerts", {"host": "web-1"})
    >>> Worker(client, "aurora:alerts", "alert-processor", print).run()  # Ctrl-C stops it

Guarantee: at-least-once. An entry leaves a group only by an acknowledgement
after its handler returned, or by an atomic move to the dead-letter stream.
"""

from __future__ import annotations

import json as _json

try:
    from . import _native
except ImportError as _e:  # pragma: no cover - a source tree without the build
    raise ImportError(
        "streambus._native (the compiled extension) is missing: install the package with "
        "`pip install ./python` and import it from outside the source directory"
    ) from _e
from ._outcome import DeadLetter, Retry

_native._register(Retry, DeadLetter, _json.loads)

from ._native import (  # noqa: E402
    AuthError,
    ConnectError,
    DecodeError,
    Delivery,
    Entry,
    InvalidInputError,
    NoGroupError,
    RedisError,
    StreambusError,
)
from ._core import Client, Consumer, Producer  # noqa: E402
from ._worker import Worker, WorkerReport  # noqa: E402
from ._admin import (  # noqa: E402
    CleanupReport,
    ConsumerSnapshot,
    DeadLetterRecord,
    DeadLetters,
    GroupSnapshot,
    Monitor,
    ScaleDecision,
    Scaler,
    StreamSnapshot,
)

__version__: str = _native.__version__

__all__ = [
    "AuthError",
    "CleanupReport",
    "Client",
    "ConnectError",
    "Consumer",
    "ConsumerSnapshot",
    "DeadLetter",
    "DeadLetterRecord",
    "DeadLetters",
    "DecodeError",
    "Delivery",
    "Entry",
    "GroupSnapshot",
    "InvalidInputError",
    "Monitor",
    "NoGroupError",
    "Producer",
    "RedisError",
    "Retry",
    "ScaleDecision",
    "Scaler",
    "StreamSnapshot",
    "StreambusError",
    "Worker",
    "WorkerReport",
]
