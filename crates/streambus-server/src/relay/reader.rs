//! The reader task of one feed: reads its stream with `XREAD` and broadcasts
//! each entry; retries after failures and notices when Redis lost data (see
//! the [module docs](super)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use streambus::{Client, Connection, EntryId};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{current, lock, Event, Feed, Label, Text, READ_BACKOFF};
use crate::chain::error_chain;
use crate::metrics as server_metrics;

/// Ids a reader remembers having relayed, to tell after Redis lost data
/// which of the stream's entries are old (relayed before) and which are new.
const RECENT_IDS: usize = 256;

/// The last [`RECENT_IDS`] ids a reader relayed, oldest first.
type RecentIds = std::collections::VecDeque<EntryId>;

/// Where to resume after the stream's ids went backwards. `tail`: the
/// stream's newest entries (at most `limit`, oldest first), all below the
/// last id relayed.
///
/// The newest of them that this reader relayed marks the end of the old data
/// (Redis came back from an older copy): resume after it. Entries after it
/// are new. If none was relayed, they are all new (Redis restarted empty and
/// they were written since): resume from `0-0`, or, when the tail is only the
/// last `limit` entries of a longer stream, from just before the tail, so
/// that at most `limit` entries of unknown age are sent.
fn resume_point(tail: &[EntryId], limit: usize, recent: &RecentIds) -> EntryId {
    if let Some(seen) = tail.iter().rev().find(|id| recent.contains(id)) {
        return *seen;
    }
    match tail.first() {
        Some(oldest) if tail.len() >= limit => just_before(*oldest),
        _ => EntryId::ZERO,
    }
}

/// The largest id below `id`.
fn just_before(id: EntryId) -> EntryId {
    match id.seq {
        0 if id.ms == 0 => EntryId::ZERO,
        0 => EntryId {
            ms: id.ms - 1,
            seq: u64::MAX,
        },
        seq => EntryId {
            ms: id.ms,
            seq: seq - 1,
        },
    }
}

/// The task that reads one stream and broadcasts its entries.
pub(super) struct Reader<T> {
    pub(super) stream: Arc<str>,
    /// For a partition: its logical stream and index, put into each entry.
    pub(super) label: Option<Label>,
    pub(super) client: Client,
    pub(super) tx: broadcast::Sender<Event<T>>,
    pub(super) position: Arc<Mutex<EntryId>>,
    pub(super) block: Duration,
    pub(super) count: usize,
    /// A configured stream: read until shutdown even with no clients.
    pub(super) pinned: bool,
    /// To remove its own feed when the last subscriber left (weak: the map owns
    /// the reader, not the other way round).
    pub(super) feeds: Weak<Mutex<HashMap<Arc<str>, Feed<T>>>>,
    pub(super) shutdown: CancellationToken,
}

impl<T: Text> Reader<T> {
    pub(super) async fn run(self) {
        let mut jitter = streambus::Jitter::new();
        // Failed attempts in a row, and when the first of them failed.
        let mut failures = 0u32;
        let mut failing_since = std::time::Instant::now();
        let mut conn: Option<Connection> = None;
        let mut after = current(&self.position);
        let mut recent = RecentIds::with_capacity(RECENT_IDS);
        loop {
            if self.shutdown.is_cancelled() || self.stop_if_unused() {
                return;
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match self.client.connect_blocking(self.block).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        self.failed(&e, after, &mut failures, &mut failing_since);
                        self.pause(READ_BACKOFF.delay_with_jitter(failures, jitter.next_unit()))
                            .await;
                        continue;
                    }
                },
            };
            // The connection replaces a failed socket by itself; after a
            // failure, first check that the stream did not go backwards.
            let read = async {
                if failures > 0 {
                    self.check_rewind(c, &mut after, &recent).await?;
                }
                streambus::read::read_after(c, &self.stream, after, self.count, Some(self.block))
                    .await
            };
            let read = tokio::select! {
                r = read => r,
                _ = self.shutdown.cancelled() => return,
            };
            match read {
                Ok(entries) => {
                    if failures > 0 {
                        tracing::info!(
                            stream = %self.stream,
                            %after,
                            failures,
                            down_for = ?failing_since.elapsed(),
                            "relay reader reads again, after the last id it relayed"
                        );
                        failures = 0;
                    }
                    for e in &entries {
                        after = e.id;
                        self.set_position(after);
                        if recent.len() == RECENT_IDS {
                            recent.pop_front();
                        }
                        recent.push_back(after);
                        // Err means no subscriber right now: nothing to deliver.
                        let _ = self.tx.send(Event::of(e, self.label.as_ref()));
                    }
                    if !entries.is_empty() {
                        server_metrics::relayed(&self.stream, entries.len());
                    }
                }
                Err(e) => {
                    self.failed(&e, after, &mut failures, &mut failing_since);
                    self.pause(READ_BACKOFF.delay_with_jitter(failures, jitter.next_unit()))
                        .await;
                }
            }
        }
    }

    /// Counts a failed attempt; logs the first of a run at warn, the rest at
    /// debug (an outage is logged once, not every two seconds).
    fn failed(
        &self,
        e: &streambus::Error,
        after: EntryId,
        failures: &mut u32,
        since: &mut std::time::Instant,
    ) {
        if *failures == 0 {
            *since = std::time::Instant::now();
            tracing::warn!(stream = %self.stream, %after, error = %error_chain(e), "relay read failed; retrying, to resume after the last id relayed");
        } else {
            tracing::debug!(stream = %self.stream, %after, attempt = *failures + 1, error = %error_chain(e), "relay read failed again; retrying");
        }
        *failures = failures.saturating_add(1);
    }

    /// After a failure: if the stream's newest id is now below `after` (Redis
    /// lost data), moves `after` back to where the data this reader has not
    /// relayed begins (see [`resume_point`]), so that entries written since
    /// are not skipped, and tells the subscribers.
    async fn check_rewind(
        &self,
        c: &mut Connection,
        after: &mut EntryId,
        recent: &RecentIds,
    ) -> streambus::Result<()> {
        if *after == EntryId::ZERO {
            return Ok(());
        }
        let newest = streambus::read::last_id(c, &self.stream).await?;
        let (to, reason) = match newest {
            Some(id) if id >= *after => return Ok(()),
            None => (EntryId::ZERO, "stream_emptied"),
            Some(_) => {
                let tail: Vec<EntryId> = streambus::read::last(c, &self.stream, RECENT_IDS)
                    .await?
                    .iter()
                    .map(|e| e.id)
                    .collect();
                (
                    resume_point(&tail, RECENT_IDS, recent),
                    "stream_went_backwards",
                )
            }
        };
        tracing::warn!(
            stream = %self.stream,
            relayed_up_to = %after,
            newest = %newest.map_or_else(|| "none (empty or missing)".to_owned(), |id| id.to_string()),
            resume_after = %to,
            "the stream's newest entry id is below the last one relayed: Redis lost data (restarted without persistence or from an older copy, or a replica that was behind took over); relaying the entries after {to}, and telling clients so"
        );
        *after = to;
        self.set_position(to);
        // Err means no subscriber right now: nobody to tell.
        let _ = self
            .tx
            .send(Event::reset(&self.stream, self.label.as_ref(), to, reason));
        Ok(())
    }

    fn set_position(&self, id: EntryId) {
        *self
            .position
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = id;
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Removes the feed when no subscriber listens (not for configured streams).
    /// Subscriptions are made under the same lock, so none can slip in between.
    fn stop_if_unused(&self) -> bool {
        if self.pinned || self.tx.receiver_count() > 0 {
            return false;
        }
        let Some(feeds) = self.feeds.upgrade() else {
            return true;
        };
        let mut feeds = lock(&feeds);
        if self.tx.receiver_count() > 0 {
            return false;
        }
        tracing::debug!(stream = %self.stream, "relay reader stops: no subscribers");
        // Dropping the feed aborts this task at its next await; it returns first.
        let removed = feeds.remove(&self.stream);
        drop(feeds);
        drop(removed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EntryId {
        EntryId { ms, seq: 0 }
    }

    #[test]
    fn resume_point_after_redis_lost_data() {
        let recent: RecentIds = [id(5), id(6), id(7), id(8)].into();
        // An older copy: 5 and 6 were relayed, 20 and 21 are new. (7 and 8
        // were lost with the data.)
        assert_eq!(resume_point(&[id(4), id(5), id(6)], 10, &recent), id(6));
        // Restarted empty, then written: all new.
        assert_eq!(resume_point(&[id(1), id(2)], 10, &recent), EntryId::ZERO);
        // A long stream of unknown entries: at most the tail is sent.
        assert_eq!(
            resume_point(&[id(1), id(2)], 2, &recent),
            EntryId {
                ms: 0,
                seq: u64::MAX
            }
        );
        assert_eq!(
            just_before(EntryId { ms: 3, seq: 2 }),
            EntryId { ms: 3, seq: 1 }
        );
        assert_eq!(just_before(EntryId::ZERO), EntryId::ZERO);
    }
}
