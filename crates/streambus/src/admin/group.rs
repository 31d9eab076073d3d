//! Consumer group administration: create, destroy, list.

use redis::Value;
use serde::Serialize;

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::id::{EntryId, StartId};
use crate::keys;
use crate::reply;

/// Creates `group` on `stream` starting at `start`, creating the stream if it does
/// not exist (MKSTREAM). Returns `true` if it was created, `false` if it existed
/// (which is not an error: setup is idempotent).
pub async fn create_group(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    start: StartId,
) -> Result<bool> {
    keys::validate_name("stream", stream)?;
    keys::validate_name("group", group)?;
    let res = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start.as_arg())
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await;
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(Error::redis(
            format!("cannot create group {group:?} on stream {stream:?}"),
            e,
        )),
    }
}

/// Destroys `group` on `stream`, with its pending entries list. Returns `false` if
/// there was no such group.
///
/// The entries stay in the stream; only the group's position and its record of
/// pending (delivered, unacknowledged) entries are gone.
pub async fn destroy_group(conn: &mut Connection, stream: &str, group: &str) -> Result<bool> {
    require_stream(conn, stream).await?;
    let n: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot destroy group {group:?} on {stream:?}"), e))?;
    Ok(n > 0)
}

/// What `XINFO GROUPS` says about one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Entries delivered and not yet acknowledged (the PEL size).
    pub pending: u64,
    /// The last id delivered to the group.
    pub last_delivered_id: EntryId,
    /// Entries read by the group so far (`entries-read`, Redis 7+), if known.
    pub entries_read: Option<u64>,
    /// Entries in the stream not yet delivered to the group. `None` when Redis
    /// cannot tell (e.g. after deletions or before 7.0): streambus does not guess.
    pub lag: Option<u64>,
}

/// Lists the groups of `stream`. Fails with `NoStream` if the stream does not exist.
pub async fn list_groups(conn: &mut Connection, stream: &str) -> Result<Vec<GroupInfo>> {
    require_stream(conn, stream).await?;
    let v: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot list the groups of {stream:?}"), e))?;
    // The one XINFO GROUPS parser (malformed replies are errors).
    reply::groups(v)
}

/// Fails with `NoStream` when the key does not exist and `WrongType` when it is
/// not a stream, with a message that names it.
pub async fn require_stream(conn: &mut Connection, stream: &str) -> Result<()> {
    keys::validate_name("stream", stream)?;
    let t: String = redis::cmd("TYPE")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| Error::redis(format!("cannot look up stream {stream:?}"), e))?;
    match t.as_str() {
        "stream" => Ok(()),
        "none" => Err(Error::new(
            ErrorKind::NoStream,
            format!("stream {stream:?} does not exist (publish to it, or create a group on it, which creates the stream)"),
        )),
        other => Err(Error::new(
            ErrorKind::WrongType,
            format!("key {stream:?} is a {other}, not a stream"),
        )),
    }
}
