//! The idempotency guard: one marker per envelope id and group, taken as a
//! lease *before* the handler runs (claim before you act), confirmed as done
//! after a success, released after a failure.
//!
//! The marker's value says what it is: `lease:<consumer>:<entry id>` while a
//! delivery holds it (for the visibility timeout at most), `1` once handled
//! (for `idempotency_ttl`). Only deliveries with the guard on pay its round
//! trips: one before the handler, one after it.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::id::EntryId;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/idempotency_acquire.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/idempotency_release.lua")));

/// The value of a marker whose envelope was handled (what earlier versions
/// wrote too).
const DONE: &str = "1";

/// What [`acquire`] found.
#[derive(Debug)]
pub(super) enum Acquired {
    /// The lease is ours: run the handler.
    Held(Lease),
    /// Handled before: acknowledge without running it.
    Done,
    /// Another delivery of this envelope holds the lease now: do not run it
    /// at the same time.
    Busy,
}

/// A lease held on a marker.
#[derive(Debug)]
pub(super) struct Lease {
    key: String,
    token: String,
}

/// The lease token of one delivery: unique per consumer and entry, so that
/// only its holder can release it, and a restart under the same name finds
/// its own lease.
pub(super) fn token(consumer: &str, id: EntryId) -> String {
    format!("lease:{consumer}:{id}")
}

fn millis(d: Duration) -> u64 {
    (d.as_millis().min(u64::MAX as u128) as u64).max(1)
}

/// Takes the marker `key` for `lease_for`, atomically.
pub(super) async fn acquire(
    conn: &Connection,
    key: String,
    token: String,
    lease_for: Duration,
) -> Result<Acquired> {
    let mut conn = conn.clone();
    let n: i64 = ACQUIRE
        .key(&key)
        .arg(&token)
        .arg(millis(lease_for))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| Error::redis(format!("cannot take the idempotency marker {key:?}"), e))?;
    Ok(match n {
        1 => Acquired::Held(Lease { key, token }),
        0 => Acquired::Done,
        _ => Acquired::Busy,
    })
}

impl Lease {
    /// Marks the envelope handled, for `ttl`.
    pub(super) async fn done(self, conn: &Connection, ttl: Duration) -> Result<()> {
        let mut conn = conn.clone();
        redis::cmd("SET")
            .arg(&self.key)
            .arg(DONE)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| Error::redis(format!("cannot mark {:?} done", self.key), e))
    }

    /// Gives the lease back, if it is still ours.
    pub(super) async fn release(self, conn: &Connection) -> Result<()> {
        let mut conn = conn.clone();
        RELEASE
            .key(&self.key)
            .arg(&self.token)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| Error::redis(format!("cannot release {:?}", self.key), e))
    }
}
