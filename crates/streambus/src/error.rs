//! The one error type of the library.
//!
//! Every fallible operation returns [`Error`]. Callers branch on [`Error::kind`]
//! (a small `Copy` enum) and ask [`Error::is_retryable`] whether doing the same
//! thing again can succeed. Redis error codes (`NOGROUP`, `BUSYGROUP`, `WRONGTYPE`,
//! `NOPERM`, ...) are classified by their code, never by message text.

use std::fmt;

/// What went wrong, in a form callers can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Redis could not be reached, or the connection was lost mid-command.
    Connection,
    /// Redis did not answer in time. The request was sent: it may have been
    /// carried out. Its connection was retired (see [`crate::Connection`]).
    Timeout,
    /// A publish was sent, but no reply came (no answer in time, or the
    /// connection failed first): the entry may or may not be in the stream. The
    /// error gives the message back ([`Error::unpublished`]); publishing it again
    /// keeps its envelope id, so a consumer with the idempotency guard drops the
    /// copy if both were written.
    Unconfirmed,
    /// Redis stayed unreachable for the whole `publish_timeout`: nothing was
    /// written. The error gives the message back ([`Error::unpublished`]).
    Unavailable,
    /// With `ProducerOptions::min_replicas`: the entry was written on the
    /// primary (the message names its id), but fewer replicas than asked
    /// confirmed it in time, so a failover could still lose it. The error
    /// gives the message back; publishing it again writes a second copy with
    /// the same envelope id.
    NotReplicated,
    /// Redis refused the credentials (`WRONGPASS`) or wants some (`NOAUTH`).
    Auth,
    /// The ACL user lacks a permission (`NOPERM`).
    Permission,
    /// The consumer group (or its stream) does not exist (`NOGROUP`).
    NoGroup,
    /// The stream does not exist.
    NoStream,
    /// The key exists but is not a stream (`WRONGTYPE`).
    WrongType,
    /// An entry or payload could not be decoded (not JSON, missing fields, bad id).
    Decode,
    /// A payload is larger than the configured limit; nothing was sent to Redis.
    TooLarge,
    /// On Redis Cluster, one command or script touched keys in different hash
    /// slots (`CROSSSLOT`).
    CrossSlot,
    /// An argument or setting is invalid (bad URL, bad duration, bad id, empty name).
    InvalidInput,
    /// Redis is loading its data set or is otherwise temporarily busy (`LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`).
    Busy,
    /// Any other error Redis returned.
    Redis,
}

impl ErrorKind {
    /// A short lowercase name, used in messages and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unconfirmed => "unconfirmed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NotReplicated => "not replicated",
            ErrorKind::Auth => "auth",
            ErrorKind::Permission => "permission",
            ErrorKind::NoGroup => "no such group",
            ErrorKind::NoStream => "no such stream",
            ErrorKind::WrongType => "wrong type",
            ErrorKind::Decode => "decode",
            ErrorKind::TooLarge => "too large",
            ErrorKind::CrossSlot => "cross slot",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Busy => "busy",
            ErrorKind::Redis => "redis",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of every streambus operation.
///
/// Its `Display` says what was being done and what to do about it; the Redis error
/// underneath, if any, is its [`source`](std::error::Error::source).
pub struct Error {
    /// Boxed so that `Result<T, Error>` stays one pointer wide on the hot path.
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// A publish that failed gives its message back, so that the caller can
    /// retry it with the same envelope id.
    unpublished: Option<crate::envelope::Message>,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message that says what happened and what to do.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                source: None,
                unpublished: None,
            }),
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// Attaches the message of a failed publish.
    pub(crate) fn with_unpublished(mut self, message: crate::envelope::Message) -> Self {
        self.inner.unpublished = Some(message);
        self
    }

    /// The message of a failed publish, to publish again (with its envelope id
    /// kept): set for `Unconfirmed` and `Unavailable` errors of
    /// [`Producer::publish`](crate::Producer::publish).
    pub fn unpublished(&self) -> Option<&crate::envelope::Message> {
        self.inner.unpublished.as_ref()
    }

    /// Takes the message of a failed publish out of the error.
    pub fn take_unpublished(&mut self) -> Option<crate::envelope::Message> {
        self.inner.unpublished.take()
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message without the cause chain.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether doing the same thing again, later, can succeed.
    ///
    /// True for lost connections, timeouts and a busy server; false for bad input,
    /// missing permissions and decode failures, which fail the same way every time.
    /// `NoGroup` is not retryable as such: the worker recreates the group first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Connection
                | ErrorKind::Timeout
                | ErrorKind::Busy
                | ErrorKind::Unconfirmed
                | ErrorKind::Unavailable
        )
    }

    /// Classifies a redis-rs error by its Redis error code, prefixing `context`
    /// (what was being done) and adding a hint where one helps: for code that
    /// sends its own commands and wants streambus's error kinds.
    pub fn from_redis(context: impl fmt::Display, err: redis::RedisError) -> Self {
        Self::redis(context, err)
    }

    /// Classifies a Redis error, prefixing `context` (what streambus was doing).
    pub(crate) fn redis(context: impl fmt::Display, err: redis::RedisError) -> Self {
        let kind = classify(&err);
        let hint = match kind {
            ErrorKind::Auth => {
                " (check the user name and password in the Redis URL: redis://USER:PASSWORD@HOST:PORT)"
            }
            ErrorKind::Permission => " (the Redis ACL user lacks a permission for this command or key)",
            ErrorKind::NoGroup => {
                " (create the group first: XGROUP CREATE, or a consumer or worker, which create it unless told not to)"
            }
            ErrorKind::WrongType => " (the key exists and is not a stream)",
            ErrorKind::CrossSlot => {
                " (on Redis Cluster one command or script may only touch keys of one hash slot: give related keys a common {hash tag}, or use a partitioned stream)"
            }
            ErrorKind::Connection if describe(&err).to_lowercase().contains("certificate") => {
                " (the TLS certificate was not accepted: give the CA that signed the server's certificate with ?ca=/path/ca.crt in the URL (or TlsOptions), and a client certificate with ?cert=&key= if the server requires one)"
            }
            ErrorKind::Connection => " (is Redis running and reachable at that address?)",
            ErrorKind::Redis if err.code() == Some("OOM") => {
                " (Redis is at its maxmemory limit and evicts nothing: free memory, raise maxmemory, or trim streams)"
            }
            _ => "",
        };
        Error::new(kind, format!("{context}: {}{hint}", describe(&err))).with_source(err)
    }
}

/// One line for a Redis error. redis-rs's own `Display` repeats the code and
/// category; this keeps it to what the server or the socket said.
fn describe(err: &redis::RedisError) -> String {
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    }
}

/// Maps a redis-rs error to a kind, by error code where the server sent one.
pub(crate) fn classify(err: &redis::RedisError) -> ErrorKind {
    use redis::ErrorKind as K;
    if let Some(code) = err.code() {
        match code {
            "NOGROUP" => return ErrorKind::NoGroup,
            "WRONGTYPE" => return ErrorKind::WrongType,
            "NOPERM" => return ErrorKind::Permission,
            "NOAUTH" | "WRONGPASS" => return ErrorKind::Auth,
            "CROSSSLOT" => return ErrorKind::CrossSlot,
            "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" => {
                return ErrorKind::Busy
            }
            _ => {}
        }
    }
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    match err.kind() {
        K::AuthenticationFailed => ErrorKind::Auth,
        K::Io | K::ClusterConnectionNotFound => ErrorKind::Connection,
        K::InvalidClientConfig => ErrorKind::InvalidInput,
        _ if err.is_connection_dropped() || err.is_connection_refusal() => ErrorKind::Connection,
        _ => ErrorKind::Redis,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("source", &self.inner.source)
            .field("unpublished", &self.inner.unpublished.is_some())
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(Error::new(ErrorKind::Connection, "x").is_retryable());
        assert!(Error::new(ErrorKind::Timeout, "x").is_retryable());
        assert!(!Error::new(ErrorKind::TooLarge, "x").is_retryable());
        assert!(!Error::new(ErrorKind::Decode, "x").is_retryable());
        assert!(!Error::new(ErrorKind::NoGroup, "x").is_retryable());
    }

    #[test]
    fn error_is_small() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
