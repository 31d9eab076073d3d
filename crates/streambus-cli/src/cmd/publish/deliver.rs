//! Delivering the lines of stdin through faults.
//!
//! [`Delivery::chunk`] publishes one chunk of lines and returns when every
//! line is known to be in the stream, or when it gives up. Faults it waits
//! through, for up to `--retry-for` per chunk:
//!
//! - Redis refuses connections, or is silent (black-holed): the library's
//!   [`Producer::publish_batch_each`] sends again what could not be sent, for
//!   its `publish_timeout` (the time left of `--retry-for`).
//! - A pipeline was sent and no reply came (a reset, a timeout): its lines are
//!   `Unconfirmed`. After reconnecting, the stream is read back from the last
//!   entry id confirmed before that send (`XRANGE (ID +`, in pages), and the
//!   envelope ids of those lines are looked for: a line found was written (its
//!   entry id is printed), a line not found is published again with the same
//!   envelope id, so it is never in the stream twice.
//!   Without the right to read the stream (a producer with exactly the
//!   README's rules, `+xadd` and no `+xrange +xrevrange`), no read-back is
//!   possible: such lines are neither printed as written nor sent again (they
//!   could then be in the stream twice); it gives up, naming them as maybe
//!   written, and says which rules would have let it check.
//! - Redis answers `LOADING` (restarting) or another busy error: sent again.
//!
//! A permanent error (OOM with `noeviction`, NOPERM, WRONGTYPE, auth) stops at
//! once. When it gives up, every id known written has been printed, and the
//! error names the first line that was not published.
//!
//! The fast path costs nothing more than a plain `publish_batch_each`: one
//! check of the outcomes per chunk, no extra round trip.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use streambus::config::format_duration;
use streambus::{read, Connection, EntryId, Error, ErrorKind, Message, Producer, ProducerOptions};
use tokio::time::Instant;

use super::report::Report;
use crate::output::Lines;

mod give_up;
mod read_back;

use self::give_up::{give_up_message, slots_summary};
use self::read_back::read_back;

/// First pause before trying again; doubled per failed attempt.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause between attempts: once Redis is back, a chunk waits at most
/// about this long to notice (the library's resends use the same bound).
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// At most one "still waiting" warning per this interval, so that an outage
/// gives a few lines on stderr, not one per retry.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// How often the connection is looked at while a publish waits inside the
/// library; the first warning comes about two of these after the socket went.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// One line of input, with its line number and where its text is kept.
pub(super) struct Line {
    /// Line number in the input (1-based, blank lines counted).
    pub no: u64,
    /// The envelope; taken when sent, given back by failed outcomes.
    pub message: Option<Message>,
    /// The trimmed text, in [`super::Chunk::text`]: a line that was never sent
    /// (it was past the point where a batch stopped) is built again from it.
    pub text: std::ops::Range<usize>,
}

/// What is known about one line of the chunk being delivered.
struct Slot {
    line: Line,
    /// Index of its stream in [`Delivery::keys`].
    stream: usize,
    /// Its entry id, once known to be written.
    id: Option<EntryId>,
    /// The envelope id it was sent with, when the report shows it.
    envelope_id: Option<String>,
    /// Sent without a reply: maybe written. Resolved by the read-back.
    unconfirmed: bool,
}

/// Where the entries of the next send will be, in one stream: after the
/// newest id known to be in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Anchor {
    /// Entries written by the next send all come after this id (`None`: the
    /// stream was empty or missing at start).
    After(Option<EntryId>),
    /// Not known: the user may not read the stream (`XREVRANGE` was refused
    /// at start), and no line has been confirmed written since. Lines sent
    /// without a reply cannot be looked for.
    Unknown,
}

impl Anchor {
    /// The anchor at start: where `key` ends now, or [`Anchor::Unknown`] when
    /// the user may not read it (with the reason logged at info level).
    pub async fn at_start(conn: &mut Connection, key: &str) -> std::result::Result<Anchor, Error> {
        match read::last_id(conn, key).await {
            Ok(id) => Ok(Anchor::After(id)),
            Err(e) if e.kind() == ErrorKind::Permission => {
                tracing::info!(
                    stream = key,
                    error = %e,
                    "cannot read where the stream ends (XREVRANGE refused): a chunk sent without a reply will not be looked for in the stream, and publishing stops there"
                );
                Ok(Anchor::Unknown)
            }
            Err(e) => Err(e),
        }
    }
}

/// Delivers chunks of stdin lines to one stream or to the partitions of one.
pub(super) struct Delivery<'a> {
    pub conn: Connection,
    /// `publish_timeout` = `--retry-for`.
    pub producer: Producer,
    /// The streams written to: one, or the partitions.
    pub keys: Vec<String>,
    /// What is printed for each line written.
    pub report: Report,
    /// Per stream, where the entries of the next send will be.
    pub anchors: Vec<Anchor>,
    pub retry_for: Duration,
    /// The Redis URL (password masked), for warnings.
    pub url: String,
    /// The stream as the user named it, for the "resume with" hint.
    pub stream: String,
    /// Builds the envelope of a line again (same `--type` and `--key`).
    pub envelope: &'a dyn Fn(String) -> Result<Message>,
    /// Round-robin position for unkeyed lines to partitions.
    pub next_partition: usize,
    pub warnings: Throttle,
}

/// Why a chunk is not published yet, for the warning line.
struct Trouble {
    /// "unreachable", "busy" ...
    state: &'static str,
    reason: String,
}

impl Delivery<'_> {
    /// The stream index of a message: the only one, or its partition (by key,
    /// else in turn).
    fn route(&mut self, m: &Message) -> usize {
        if self.keys.len() == 1 {
            return 0;
        }
        match m.key() {
            Some(k) => usize::from(streambus::keys::crc16(k.as_bytes())) % self.keys.len(),
            None => {
                self.next_partition = (self.next_partition + 1) % self.keys.len();
                self.next_partition
            }
        }
    }

    /// Publishes `lines` (in order) and prints the report line of each, in order.
    /// On giving up, prints the ids of the lines that were written and fails
    /// with the first line number that was not.
    pub async fn chunk(&mut self, lines: Vec<Line>, text: &str, out: &mut Lines) -> Result<()> {
        let mut slots: Vec<Slot> = Vec::with_capacity(lines.len());
        for line in lines {
            let stream = match &line.message {
                Some(m) => self.route(m),
                None => 0,
            };
            slots.push(Slot {
                line,
                stream,
                id: None,
                envelope_id: None,
                unconfirmed: false,
            });
        }
        let deadline = Instant::now() + self.retry_for;
        let mut first_trouble = Episode::default();
        let mut pause = FIRST_PAUSE;
        let mut attempt = 0u32;
        let gave_up = loop {
            let producer = if attempt == 0 {
                self.producer.clone()
            } else {
                // The library waits up to its publish_timeout per call: give
                // it only what is left of this chunk's time.
                self.producer.with_options(ProducerOptions {
                    publish_timeout: left(deadline).max(Duration::from_millis(1)),
                    ..self.producer.options().clone()
                })
            };
            attempt += 1;
            let anchors = self.anchors.clone();
            let sent = self
                .send(&producer, &mut slots, text, deadline, &mut first_trouble)
                .await;
            let (mut permanent, mut trouble) = match sent {
                Ok(t) => (None, t),
                Err(e) => (Some(e), None),
            };
            // Resolve what was sent without a reply before anything else: a
            // line found in the stream must not be sent again.
            while slots.iter().any(|s| s.unconfirmed) {
                match read_back(&mut self.conn, &self.keys, &mut slots, &anchors).await {
                    Ok(()) => break,
                    Err(e)
                        if e.is_retryable() && permanent.is_none() && Instant::now() < deadline =>
                    {
                        let t = trouble_of(&e);
                        self.warn(&t, &slots, deadline, &mut first_trouble);
                        trouble = Some(t);
                        tokio::time::sleep(pause.min(left(deadline))).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                    Err(e) => {
                        // Cannot tell; the give-up message says so.
                        if permanent.is_none() && !e.is_retryable() {
                            permanent = Some(e);
                        }
                        break;
                    }
                }
            }
            self.note_written(&slots);
            if slots.iter().all(|s| s.id.is_some()) {
                break None;
            }
            if let Some(e) = permanent {
                // Its message already says what Redis said.
                break Some(e.to_string());
            }
            let trouble = trouble.unwrap_or(Trouble {
                state: "unreachable",
                reason: "no reply".to_owned(),
            });
            if Instant::now() >= deadline {
                break Some(format!(
                    "Redis at {} {} for the --retry-for of {} ({})",
                    self.url,
                    trouble.state,
                    format_duration(self.retry_for),
                    trouble.reason
                ));
            }
            self.warn(&trouble, &slots, deadline, &mut first_trouble);
            tokio::time::sleep(pause.min(left(deadline))).await;
            pause = (pause * 2).min(MAX_PAUSE);
        };
        if attempt > 1 {
            self.check_order(&slots);
        }
        for s in &slots {
            if let Some(id) = s.id {
                self.report
                    .print(out, s.stream, id, s.envelope_id.as_deref())?;
            }
        }
        out.flush()?;
        if let Some(e) = gave_up {
            return Err(anyhow::anyhow!(give_up_message(
                &slots_summary(&slots),
                &e,
                &self.stream
            )));
        }
        if let (Some(since), true) = (first_trouble.since, first_trouble.warned) {
            let first = slots.first().map_or(0, |s| s.line.no);
            eprintln!(
                "note: Redis at {} answers again; publishing goes on (waited {}, from line {first})",
                self.url,
                format_duration(since.elapsed())
            );
        }
        Ok(())
    }

    /// One attempt: publishes every line not yet written (nor unconfirmed),
    /// per stream, in order. Records each outcome in its slot. `Ok(trouble)`
    /// when every failure may mend by waiting; `Err` on a permanent one.
    async fn send(
        &mut self,
        producer: &Producer,
        slots: &mut [Slot],
        text: &str,
        deadline: Instant,
        first_trouble: &mut Episode,
    ) -> std::result::Result<Option<Trouble>, Error> {
        let mut groups: Vec<(Vec<usize>, Vec<Message>)> =
            (0..self.keys.len()).map(|_| Default::default()).collect();
        for (i, s) in slots.iter_mut().enumerate() {
            if s.id.is_some() || s.unconfirmed {
                continue;
            }
            let m = match s.line.message.take() {
                Some(m) => m,
                // Never sent: a new envelope is as good as the first.
                None => (self.envelope)(text[s.line.text.clone()].to_owned()).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("line {}: {e:#}", s.line.no),
                    )
                })?,
            };
            if self.report.shows_envelope_ids() {
                s.envelope_id = m.envelope_id().map(str::to_owned);
            }
            groups[s.stream].0.push(i);
            groups[s.stream].1.push(m);
        }
        let keys = &self.keys;
        let sends = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.0.is_empty())
            .map(|(stream, (positions, messages))| async move {
                let outcomes = producer.publish_batch_each(&keys[stream], messages).await;
                (positions, outcomes)
            });
        let first_line = slots
            .iter()
            .find(|s| s.id.is_none())
            .map_or(0, |s| s.line.no);
        let results = watch(
            futures_util::future::join_all(sends),
            &self.conn,
            &self.url,
            &mut self.warnings,
            first_line,
            deadline,
            first_trouble,
        )
        .await;
        let mut permanent = None;
        let mut trouble = None;
        for (positions, outcomes) in results {
            let outcomes = match outcomes {
                Ok(o) => o,
                // Only the checks fail a whole batch; they passed before.
                Err(e) => return Err(e),
            };
            // Positions past the outcomes were not sent: their slots keep no
            // message and are built again from the text.
            for (i, outcome) in positions.into_iter().zip(outcomes) {
                let slot = &mut slots[i];
                match outcome {
                    Ok(id) => slot.id = Some(id),
                    Err(mut e) => {
                        slot.line.message = e.take_unpublished();
                        match e.kind() {
                            ErrorKind::Unconfirmed | ErrorKind::Timeout | ErrorKind::Connection => {
                                slot.unconfirmed = true;
                                trouble.get_or_insert_with(|| trouble_of(&e));
                            }
                            _ if e.is_retryable() => {
                                trouble.get_or_insert_with(|| trouble_of(&e));
                            }
                            _ => {
                                permanent.get_or_insert(e);
                            }
                        }
                    }
                }
            }
        }
        match permanent {
            Some(e) => Err(e),
            None => Ok(trouble),
        }
    }

    /// Moves each stream's anchor to the newest id known written.
    fn note_written(&mut self, slots: &[Slot]) {
        for s in slots {
            if let Some(id) = s.id {
                let a = &mut self.anchors[s.stream];
                match a {
                    Anchor::After(Some(known)) if *known >= id => {}
                    _ => *a = Anchor::After(Some(id)),
                }
            }
        }
    }

    /// Warns (at most every [`WARN_EVERY`]) that Redis is away.
    fn warn(
        &mut self,
        trouble: &Trouble,
        slots: &[Slot],
        deadline: Instant,
        first_trouble: &mut Episode,
    ) {
        let line = slots
            .iter()
            .find(|s| s.id.is_none())
            .map_or(0, |s| s.line.no);
        warn_line(
            &mut self.warnings,
            &self.url,
            trouble,
            line,
            deadline,
            first_trouble,
        );
    }

    /// After a retry, a line can have been written after a later one (the
    /// later one's pipeline went out on a new connection first). Said once
    /// per chunk: the ids on stdout stay in input order.
    fn check_order(&self, slots: &[Slot]) {
        let mut last: Vec<Option<EntryId>> = vec![None; self.keys.len()];
        for s in slots {
            let Some(id) = s.id else { continue };
            if last[s.stream].is_some_and(|l| l > id) {
                eprintln!(
                    "warning: line {} was written after a later line (it was retried across a reconnect): in the stream it comes after it",
                    s.line.no
                );
                return;
            }
            last[s.stream] = Some(id);
        }
    }
}

/// Awaits `fut` (a publish, which may wait inside the library while no
/// connection can be made) and meanwhile warns when the connection is down:
/// a `PING` of its own then says why (it dials for everyone, so it also
/// finds out when Redis is back).
async fn watch<F: Future>(
    fut: F,
    conn: &Connection,
    url: &str,
    warnings: &mut Throttle,
    line: u64,
    deadline: Instant,
    first_trouble: &mut Episode,
) -> F::Output {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval_at(Instant::now() + WATCH_EVERY, WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_ticks = 0u32;
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            _ = tick.tick() => {}
        }
        if conn.is_connected() {
            down_ticks = 0;
            continue;
        }
        down_ticks += 1;
        // Once is a socket being replaced; twice in a row is an outage.
        if down_ticks < 2 || !warnings.due(Instant::now()) {
            continue;
        }
        let mut probe = conn.clone();
        let ping = async move { redis::cmd("PING").query_async::<()>(&mut probe).await };
        tokio::select! {
            biased;
            out = &mut fut => return out,
            pinged = ping => {
                if let Err(e) = pinged {
                    let e = Error::from_redis("PING", e);
                    let t = trouble_of(&e);
                    warn_line(warnings, url, &t, line, deadline, first_trouble);
                }
            }
        }
    }
}

fn warn_line(
    warnings: &mut Throttle,
    url: &str,
    trouble: &Trouble,
    line: u64,
    deadline: Instant,
    first_trouble: &mut Episode,
) {
    let now = Instant::now();
    first_trouble.since.get_or_insert(now);
    if !warnings.take(now) {
        return;
    }
    first_trouble.warned = true;
    let left = format_duration(deadline.saturating_duration_since(now));
    eprintln!(
        "warning: Redis at {url} {} ({}); retrying for up to {left}, line {line} not yet published",
        trouble.state, trouble.reason
    );
}

/// Time left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// What a retryable error says about Redis, in a few words.
fn trouble_of(e: &Error) -> Trouble {
    let state = match e.kind() {
        ErrorKind::Busy => "busy",
        _ => "unreachable",
    };
    Trouble {
        state,
        reason: innermost(e),
    }
}

/// The deepest cause's text (what the socket or the server said), else the
/// error's own message.
fn innermost(e: &Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    let text = text.trim();
    if text.is_empty() {
        e.message().to_owned()
    } else {
        text.replace(['\n', '\r'], " ")
    }
}

/// The trouble met by one chunk.
#[derive(Default)]
pub(super) struct Episode {
    /// When it first failed.
    since: Option<Instant>,
    /// Whether a warning was printed for it: then its end is noted too.
    warned: bool,
}

/// Lets one warning through per [`WARN_EVERY`].
pub(super) struct Throttle {
    last: Option<Instant>,
    every: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            last: None,
            every: WARN_EVERY,
        }
    }
}

impl Throttle {
    /// Whether a warning may go out now.
    fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|l| now.duration_since(l) >= self.every)
    }

    /// Whether a warning may go out now; if so, counts it.
    fn take(&mut self, now: Instant) -> bool {
        let due = self.due(now);
        if due {
            self.last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_throttled() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert!(t.take(t0));
        assert!(!t.take(t0 + Duration::from_secs(1)));
        assert!(!t.due(t0 + Duration::from_millis(4999)));
        assert!(t.take(t0 + WARN_EVERY));
        assert!(!t.take(t0 + WARN_EVERY + Duration::from_secs(4)));
    }
}
