"""A streambus :class:`~streambus.Client` for the server a redis-py connection
talks to (its host, port, unix socket, db, username, password and TLS files)."""

from __future__ import annotations

from typing import Any, Dict
from urllib.parse import quote

from .._core import Client


def _kwargs(conn: Any) -> Dict[str, Any]:
    pool = getattr(conn, "connection_pool", None)
    if pool is None:
        raise TypeError(
            f"expected a redis-py connection (redis.Redis or redis.asyncio.Redis), got {conn!r}"
        )
    kw = dict(pool.connection_kwargs)
    kw["_class"] = getattr(pool, "connection_class", None)
    return kw


def redis_url(conn: Any) -> str:
    """The streambus URL of a redis-py connection (password included)."""
    kw = _kwargs(conn)
    user = kw.get("username") or ""
    password = kw.get("password") or ""
    auth = ""
    if password:
        auth = f"{quote(str(user), safe='')}:{quote(str(password), safe='')}@"
    elif user:
        auth = f"{quote(str(user), safe='')}@"
    db = int(kw.get("db") or 0)
    if kw.get("path"):
        return f"redis+unix://{auth}{kw['path']}" + (f"?db={db}" if db else "")
    cls = kw.get("_class")
    tls = cls is not None and "SSL" in getattr(cls, "__name__", "")
    scheme = "rediss" if tls else "redis"
    host = kw.get("host") or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = int(kw.get("port") or 6379)
    return f"{scheme}://{auth}{host}:{port}/{db}"


def client_from_redis(conn: Any, **options: Any) -> Client:
    """Opens a streambus client to the same server, with the same credentials,
    database and TLS certificates as the redis-py connection ``conn``."""
    kw = _kwargs(conn)
    if kw.get("ssl_ca_certs") and "ca_file" not in options:
        options["ca_file"] = kw["ssl_ca_certs"]
    if kw.get("ssl_certfile") and "client_cert_file" not in options:
        options["client_cert_file"] = kw["ssl_certfile"]
    if kw.get("ssl_keyfile") and "client_key_file" not in options:
        options["client_key_file"] = kw["ssl_keyfile"]
    if kw.get("ssl_cert_reqs") in ("none", 0) and "insecure_skip_verify" not in options:
        options["insecure_skip_verify"] = True
    return Client.open(redis_url(conn), **options)
