//! The sender task: concurrent `publish` calls gathered into pipelines.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use std::sync::Arc;

use super::{
    all_refused_for_now, count_published, entry_id, send_error, Job, MinReplicas, Trimmer,
    RESEND_FIRST_DELAY, RESEND_MAX_DELAY,
};
use crate::connection::{not_sent, Connection};

/// Drains the queue into pipelines: waits for one job, takes whatever else has
/// queued meanwhile (up to `max_pipeline`), writes them in one round trip, with
/// up to `in_flight_max` round trips under way.
///
/// With one pipeline in flight, the task and Redis take turns: the task builds
/// the next pipeline only after Redis answered the last, so each side idles
/// half the time. With few large pipelines they still take turns, in convoys:
/// every caller waits in the same pipeline, all are answered at once, and all
/// queue again while Redis has nothing to do. Small pipelines, many in flight
/// (32 × 8 by default) keep Redis working on some while the callers of others
/// are answered. Measured, 256 callers, 2 cores (median of 4–6 alternating
/// runs, msg/s): 512 × 4 158k, 64 × 4 190k, 64 × 8 205k, 32 × 8 257k–303k,
/// 16 × 16 285k. They are written on one connection, in the order they were
/// queued, so Redis executes them in that order: `FuturesUnordered` first
/// polls new futures first-in first-out, and each runs `unconstrained`, so
/// that tokio's cooperative budget never stops one before its pipeline is
/// queued (one stopped was polled again only after the newer ones, which were
/// then written first; see `publish_batch_each`).
pub(super) async fn sender_task(
    conn: Connection,
    max_pipeline: usize,
    in_flight_max: usize,
    publish_timeout: Duration,
    mut rx: mpsc::Receiver<Job>,
    trimmer: Option<Arc<Trimmer>>,
    wait: Option<MinReplicas>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        let room = in_flight.len() < in_flight_max;
        tokio::select! {
            // Finished pipelines first: they make room and answer callers.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            jobs = recv_jobs(&mut rx, max_pipeline), if room => match jobs {
                Some(jobs) => {
                    for jobs in by_stream(jobs) {
                        in_flight.push(tokio::task::unconstrained(send_pipeline(
                            conn.clone(),
                            jobs,
                            publish_timeout,
                            trimmer.clone(),
                            wait,
                        )));
                    }
                }
                None => break,
            },
        }
    }
    // The queue is closed (the producer was dropped): finish what was sent.
    while in_flight.next().await.is_some() {}
}

async fn recv_jobs(rx: &mut mpsc::Receiver<Job>, max_pipeline: usize) -> Option<Vec<Job>> {
    let mut jobs = Vec::with_capacity(max_pipeline.min(64));
    (rx.recv_many(&mut jobs, max_pipeline).await > 0).then_some(jobs)
}

/// Splits jobs into one group per stream, each in queue order: on Redis Cluster
/// a pipeline must stay within one slot (CROSSSLOT otherwise). The common case,
/// one stream, costs one comparison per job and no copy.
fn by_stream(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    if jobs.iter().all(|j| j.stream == jobs[0].stream) {
        return vec![jobs];
    }
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|g| g[0].stream == job.stream) {
            Some(g) => g.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

/// Writes one pipeline and answers its callers. While no connection can be
/// made, sends it again until the earliest caller's deadline.
async fn send_pipeline(
    mut conn: Connection,
    mut jobs: Vec<Job>,
    publish_timeout: Duration,
    trimmer: Option<Arc<Trimmer>>,
    wait: Option<MinReplicas>,
) {
    let mut pipe = redis::Pipeline::with_capacity(jobs.len() + 1);
    pipe.ignore_errors();
    for job in &mut jobs {
        pipe.add_command(std::mem::take(&mut job.xadd));
    }
    if let Some(w) = &wait {
        w.add_wait(&mut pipe);
    }
    let deadline = jobs.iter().map(|j| j.deadline).min();
    let mut delay = RESEND_FIRST_DELAY;
    let result = loop {
        let result = pipe.query_async::<Vec<Value>>(&mut conn).await;
        let again = match &result {
            Err(e) => not_sent(e),
            Ok(replies) => match &wait {
                Some(w) => all_refused_for_now(w.xadds(replies)),
                None => all_refused_for_now(replies),
            },
        };
        if again && deadline.is_some_and(|d| Instant::now() + delay < d) {
            metrics::counter!(crate::metrics::PUBLISH_RESENDS).increment(1);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RESEND_MAX_DELAY);
            continue;
        }
        break result;
    };
    match result {
        Ok(mut replies) => {
            let short = wait.as_ref().and_then(|w| w.take_reply(&mut replies));
            let mut written = 0;
            let stream = jobs.first().map(|j| j.stream.clone());
            for (job, r) in jobs.into_iter().zip(replies) {
                let id = entry_id(&job.stream, r);
                written += u64::from(id.is_ok());
                let id = match (id, &wait, &short) {
                    (Ok(id), Some(w), Some(why)) => Err(w.not_replicated(&job.stream, id, why)),
                    (id, ..) => id,
                };
                // The caller may have stopped waiting; its result is then unwanted.
                let _ = job
                    .reply
                    .send(id.map_err(|e| e.with_unpublished(job.message)));
            }
            if let Some(stream) = stream {
                count_published(&stream, written);
                if let Some(t) = &trimmer {
                    t.published(&stream, written);
                }
            }
        }
        Err(e) => {
            for job in jobs {
                let err = send_error(&job.stream, &e, publish_timeout);
                let _ = job.reply.send(Err(err.with_unpublished(job.message)));
            }
        }
    }
}
