//! What a worker runs for each entry, and what the handler says back.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::entry::Entry;
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};

/// One delivery of an entry to a handler.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The entry, with its raw fields.
    pub entry: Entry,
    /// How many times it has been delivered, this time included (1 on the first
    /// delivery). Higher after a failure, a crash, or a reclaim.
    pub deliveries: u32,
}

impl Delivery {
    /// The decoded envelope, or `None` for raw entries (see [`Entry::envelope`]).
    pub fn envelope(&self) -> Result<Option<Envelope>> {
        self.entry.envelope()
    }

    /// The payload decoded into `T` (see [`Entry::decode`]). A decode error,
    /// returned as the handler's outcome (`Outcome::from`), dead-letters the entry
    /// at once: retrying cannot fix it.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.entry.decode()
    }
}

/// What a handler decided about one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: acknowledge it.
    Ack,
    /// Failed, try again later: it stays pending and is redelivered after the
    /// backoff for its delivery count (or after `delay`, if given), until
    /// `max_deliveries` is reached; then it is dead-lettered with `reason`.
    Retry {
        /// Wait at least this long before the next attempt.
        delay: Option<Duration>,
        /// Why it failed (kept for the dead-letter entry and logs).
        reason: String,
    },
    /// Cannot ever succeed: move it to the dead-letter stream now.
    DeadLetter {
        /// Why (stored with the dead letter).
        reason: String,
    },
}

impl Outcome {
    /// Retry after the configured backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            delay: None,
            reason: reason.into(),
        }
    }

    /// Retry, but not before `delay`.
    pub fn retry_after(delay: Duration, reason: impl Into<String>) -> Self {
        Outcome::Retry {
            delay: Some(delay),
            reason: reason.into(),
        }
    }

    /// Dead-letter now.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Outcome::DeadLetter {
            reason: reason.into(),
        }
    }
}

impl From<()> for Outcome {
    fn from(_: ()) -> Self {
        Outcome::Ack
    }
}

impl From<Error> for Outcome {
    /// Decode errors and bad input dead-letter at once; anything else is retried.
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Decode | ErrorKind::InvalidInput | ErrorKind::TooLarge => {
                Outcome::dead_letter(e.to_string())
            }
            _ => Outcome::retry(e.to_string()),
        }
    }
}

impl<T: Into<Outcome>, E: Into<Outcome>> From<std::result::Result<T, E>> for Outcome {
    fn from(r: std::result::Result<T, E>) -> Self {
        match r {
            Ok(v) => v.into(),
            Err(e) => e.into(),
        }
    }
}

/// Processes deliveries. Implemented for every
/// `Fn(Delivery) -> impl Future<Output = impl Into<Outcome>>` closure, so a handler
/// can return `Outcome`, `()`, or `Result<(), streambus::Error>`.
///
/// A panic in a handler, in its future or before it returns one, counts as a
/// failure of that delivery (retried like [`Outcome::Retry`]); other entries
/// are not affected.
///
/// A handler may run many times concurrently (up to the worker's concurrency),
/// and the same entry may be delivered more than once (at-least-once): make it
/// idempotent, or use the worker's idempotency guard.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Outcome> + Send;
}

impl<F, Fut, O> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send,
    O: Into<Outcome>,
{
    // An `async fn`: the closure is called when the future is first polled,
    // so a closure body that panics panics inside the future, where the
    // worker catches it (the worker also guards the call to `handle` itself,
    // for other `Handler` implementations).
    async fn handle(&self, delivery: Delivery) -> Outcome {
        self(delivery).await.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(Outcome::from(()), Outcome::Ack);
        let ok: std::result::Result<(), Error> = Ok(());
        assert_eq!(Outcome::from(ok), Outcome::Ack);
        let bad: std::result::Result<(), Error> = Err(Error::new(ErrorKind::Decode, "not json"));
        assert!(matches!(Outcome::from(bad), Outcome::DeadLetter { .. }));
        let flaky: std::result::Result<(), Error> = Err(Error::new(ErrorKind::Timeout, "slow"));
        assert!(matches!(
            Outcome::from(flaky),
            Outcome::Retry { delay: None, .. }
        ));
    }
}
