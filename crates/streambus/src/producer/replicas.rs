//! `min_replicas`: a publish succeeds only once that many replicas hold it.
//!
//! Every pipeline of XADDs ends with `WAIT numreplicas timeout`: Redis answers
//! it once that many replicas have acknowledged everything this connection
//! wrote before it (or the timeout passed), with the number that did. Short
//! of the number, each entry of the pipeline fails with
//! [`ErrorKind::NotReplicated`]: it is on the primary, under the id the error
//! names, but a failover now could lose it.
//!
//! One WAIT per pipeline, not per entry: the pipeline's entries are confirmed
//! together, at the cost of one replication round trip per pipeline. WAIT
//! blocks this connection on the server while it waits, so pipelines queued
//! behind it wait too (see BENCHMARKS.md, "min_replicas").

use std::time::Duration;

use redis::Value;

use crate::error::{Error, ErrorKind};
use crate::id::EntryId;

/// The replication a publish waits for.
#[derive(Clone, Copy, Debug)]
pub(super) struct MinReplicas {
    pub(super) replicas: u32,
    pub(super) timeout: Duration,
}

impl MinReplicas {
    /// Ends `pipe` with the WAIT. A timeout of 0 would make WAIT wait for
    /// ever: never less than 1 ms.
    pub(super) fn add_wait(&self, pipe: &mut redis::Pipeline) {
        let ms = u64::try_from(self.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        pipe.cmd("WAIT").arg(self.replicas).arg(ms);
    }

    /// The replies of the XADDs: all but the WAIT's.
    pub(super) fn xadds<'a>(&self, replies: &'a [Value]) -> &'a [Value] {
        &replies[..replies.len().saturating_sub(1)]
    }

    /// Takes the WAIT's reply off the end of `replies`: `None` when enough
    /// replicas confirmed, else why not.
    pub(super) fn take_reply(&self, replies: &mut Vec<Value>) -> Option<String> {
        match replies.pop() {
            Some(Value::Int(n)) if n >= i64::from(self.replicas) => None,
            Some(Value::Int(n)) => Some(format!(
                "{n} of {} replicas confirmed it within {:?}",
                self.replicas, self.timeout
            )),
            Some(Value::ServerError(e)) => Some(format!(
                "WAIT failed: {} {}",
                e.code(),
                e.details().unwrap_or_default()
            )),
            other => Some(format!("unexpected WAIT reply: {other:?}")),
        }
    }

    /// The error of entry `id`, written to `stream` on the primary but not
    /// confirmed by enough replicas.
    pub(super) fn not_replicated(&self, stream: &str, id: EntryId, why: &str) -> Error {
        Error::new(
            ErrorKind::NotReplicated,
            format!(
                "written to {stream} as {id} on the primary, but not yet replicated: {why} (min_replicas); a failover now could lose it. Publishing it again writes a second copy with the same envelope id, which the idempotency guard drops"
            ),
        )
    }
}
