//! [`Sampler`]: feeds the scaler's advisors on a fixed interval of its own.
//!
//! Every [`ServerConfig::scale_interval`](crate::ServerConfig::scale_interval)
//! one task (owned by the [`AppState`](crate::AppState)) samples every group of
//! every shown stream, plus the streams asked for at `/scale`, and feeds each
//! group's [`Advisor`]. Requests only read the latest advice: how often
//! `/metrics`, `/api/streams` or `/scale` are asked changes nothing (before,
//! each request fed the advisor, so a dashboard polling every second and a
//! scrape every minute gave different advice).
//!
//! No HTTP types; the sampling itself is a function the task is given, so the
//! timing is tested under `tokio::time::pause()` without Redis.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use streambus::admin::monitor::MonitorOptions;
use streambus::admin::monitor::StreamSnapshot;
use streambus::admin::scaler::{Advice, Advisor, AdvisorConfig, Sample};
use streambus::{Connection, ErrorKind};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::chain::error_chain;

/// Most (stream, group) pairs whose history is kept; beyond it the pair
/// sampled least recently is forgotten. Each is a few hundred bytes.
const MAX_GROUPS: usize = 1024;

/// Most streams remembered from `/scale` requests (streams the service does
/// not list, e.g. beyond the `SCAN` limit); beyond it the oldest is dropped.
const MAX_ASKED: usize = 256;

/// How long a group's history (or a stream asked for) is kept without a
/// sample (or a request): groups deleted, streams no longer asked for.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The samples of one tick: per stream, each group's sample.
pub(crate) type Round = Vec<(String, Vec<(String, Sample)>)>;

/// The advisors of every sampled group. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct Sampler {
    inner: Arc<Inner>,
}

struct Inner {
    config: AdvisorConfig,
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    groups: HashMap<(String, String), GroupState>,
    /// Streams asked for at `/scale`, and when last.
    asked: HashMap<String, Instant>,
}

/// The scaler's memory for one group.
struct GroupState {
    advisor: Advisor,
    /// The previous sample: rates are over the interval since it.
    prev: Sample,
    last: Option<Advice>,
    /// Samples taken, the first included (for tests and diagnostics).
    samples: u64,
}

/// The clock of samples: tokio's, so that tests can pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Sampler {
    pub(crate) fn new(config: AdvisorConfig, interval: Duration) -> Self {
        Sampler {
            inner: Arc::new(Inner {
                config,
                interval,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The interval between two samples.
    pub(crate) fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// The latest advice for `group`; `None` before its second sample.
    pub(crate) fn advice(&self, stream: &str, group: &str) -> Option<Advice> {
        let key = (stream.to_owned(), group.to_owned());
        self.lock().groups.get(&key).and_then(|g| g.last.clone())
    }

    /// Samples taken of `group` so far.
    pub(crate) fn samples(&self, stream: &str, group: &str) -> u64 {
        let key = (stream.to_owned(), group.to_owned());
        self.lock().groups.get(&key).map_or(0, |g| g.samples)
    }

    /// A `/scale` request for `stream`: sample it from the next tick on, if
    /// the service does not list it. Takes no sample.
    pub(crate) fn ask(&self, stream: &str) {
        let mut state = self.lock();
        if !state.asked.contains_key(stream) && state.asked.len() >= MAX_ASKED {
            if let Some(oldest) = oldest(&state.asked) {
                state.asked.remove(&oldest);
            }
        }
        state.asked.insert(stream.to_owned(), now());
    }

    /// The streams asked for recently.
    fn asked(&self) -> Vec<String> {
        let mut state = self.lock();
        let t = now();
        state
            .asked
            .retain(|_, at| t.saturating_duration_since(*at) < FORGET_AFTER);
        state.asked.keys().cloned().collect()
    }

    /// Feeds one tick's samples to the advisors, and forgets groups not
    /// sampled for [`FORGET_AFTER`].
    fn record(&self, round: Round) {
        let mut state = self.lock();
        for (stream, groups) in round {
            for (group, cur) in groups {
                let key = (stream.clone(), group);
                if !state.groups.contains_key(&key) && state.groups.len() >= MAX_GROUPS {
                    let least = state
                        .groups
                        .iter()
                        .min_by_key(|(_, g)| g.prev.at)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = least {
                        state.groups.remove(&k);
                    }
                }
                match state.groups.get_mut(&key) {
                    None => {
                        let advisor = Advisor::new(self.inner.config.clone());
                        let first = GroupState {
                            advisor,
                            prev: cur,
                            last: None,
                            samples: 1,
                        };
                        state.groups.insert(key, first);
                    }
                    Some(g) => {
                        let advice = g.advisor.advise(&g.prev, &cur, cur.at);
                        advice.record_metrics(&key.0, &key.1);
                        g.prev = cur;
                        g.last = Some(advice);
                        g.samples += 1;
                    }
                }
            }
        }
        let t = now();
        state
            .groups
            .retain(|_, g| t.saturating_duration_since(g.prev.at) < FORGET_AFTER);
    }

    /// Samples every [`interval`](Sampler::interval), the first at once,
    /// until `shutdown`. `take` is given the streams asked for at `/scale` and
    /// returns the tick's samples; a tick that takes longer than the interval
    /// delays the next one (no burst of catch-up samples).
    pub(crate) async fn run<F, Fut>(self, mut take: F, shutdown: CancellationToken)
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: Future<Output = Round>,
    {
        let mut tick = tokio::time::interval(self.inner.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let round = tokio::select! {
                r = take(self.asked()) => r,
                _ = shutdown.cancelled() => return,
            };
            self.record(round);
        }
    }
}

fn oldest(asked: &HashMap<String, Instant>) -> Option<String> {
    asked
        .iter()
        .min_by_key(|(_, at)| **at)
        .map(|(s, _)| s.clone())
}

/// One tick of the service's sampler: a snapshot of each shown plain stream
/// and of each stream in `asked`, and a sample of each of its groups.
/// Partitioned streams have no advisor (their groups are per partition). A
/// stream that cannot be inspected is skipped this tick (Redis away: the
/// health watcher logs the outage; the advisor sees a longer interval).
pub(crate) async fn take(
    catalog: &Catalog,
    mut conn: Connection,
    options: &MonitorOptions,
    asked: Vec<String>,
) -> Round {
    let mut names = match catalog.names(&mut conn).await {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %error_chain(&e), "scaler: cannot list the streams");
            Vec::new()
        }
    };
    for s in asked {
        if !names.contains(&s) {
            names.push(s);
        }
    }
    let mut round = Vec::with_capacity(names.len());
    for name in names {
        if catalog.partitions(&name).is_some() {
            continue;
        }
        match streambus::admin::monitor::snapshot(&mut conn, &name, options).await {
            Ok(snap) => round.push((name, samples(&snap, now()))),
            Err(e) if e.kind() == ErrorKind::NoStream => {}
            Err(e) => {
                tracing::debug!(stream = %name, error = %error_chain(&e), "scaler: cannot sample")
            }
        }
    }
    round
}

/// A sample of each group of `snap`.
fn samples(snap: &StreamSnapshot, at: Instant) -> Vec<(String, Sample)> {
    snap.groups
        .iter()
        .filter_map(|g| Some((g.name.clone(), Sample::from_snapshot(snap, &g.name, at)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU64, Ordering};

    /// A group whose consumers ack 10 entries per second.
    fn round(ticks: u64) -> Round {
        let acked = ticks * 10;
        let s = Sample::new(now(), Some(acked + 5), Some(acked + 2), Some(3), 2, 1);
        vec![("s".to_owned(), vec![("g".to_owned(), s)])]
    }

    #[tokio::test(start_paused = true)]
    async fn samples_on_its_interval_whatever_the_readers_do() {
        let sampler = Sampler::new(AdvisorConfig::default(), Duration::from_secs(1));
        let ticks = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let counted = ticks.clone();
        let task = tokio::spawn(sampler.clone().run(
            move |_| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move { round(n) }
            },
            shutdown.clone(),
        ));
        tokio::task::yield_now().await;
        assert_eq!(sampler.samples("s", "g"), 1, "the first sample at once");
        assert!(sampler.advice("s", "g").is_none());
        for second in 1..=10u64 {
            // Readers in between: they never sample.
            for _ in 0..50 {
                sampler.advice("s", "g");
                sampler.ask("s");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            tokio::task::yield_now().await;
            assert_eq!(sampler.samples("s", "g"), second + 1);
        }
        let advice = sampler.advice("s", "g").unwrap();
        assert_eq!(advice.ack_rate, Some(10.0));
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_groups_no_longer_sampled() {
        let sampler = Sampler::new(AdvisorConfig::default(), Duration::from_secs(1));
        sampler.record(round(0));
        sampler.record(round(1));
        assert_eq!(sampler.samples("s", "g"), 2);
        tokio::time::advance(FORGET_AFTER).await;
        sampler.record(Vec::new());
        assert_eq!(sampler.samples("s", "g"), 0);
        sampler.ask("t");
        assert_eq!(sampler.asked(), ["t"]);
        tokio::time::advance(FORGET_AFTER).await;
        assert!(sampler.asked().is_empty());
    }
}
