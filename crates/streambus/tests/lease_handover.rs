//! How long a partition goes without an owner when leased members hand it
//! over: a member joins, the old owner releases half its partitions at its
//! next turn, and the new member must take each within moments of its
//! release, not at its own next turn (up to `renew_interval` later).
//!
//! One private `redis-server` (partitions need no cluster to be leased); the
//! owners are polled every 10 ms, as a monitor would.

use std::collections::HashMap;
use std::time::Duration;

use streambus::partition::{self, LeaseOptions, PartitionOwners, PartitionedWorker, Partitions};
use streambus::{CancellationToken, Client, Delivery, WorkerOptions, WorkerReport};
use streambus_testkit::{unique_prefix, RedisServer};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PARTITIONS: u32 = 6;
const GROUP: &str = "g";
const DEADLINE: Duration = Duration::from_secs(30);
/// Long turns, so that a handover noticed only at the next turn would show.
const RENEW: Duration = Duration::from_secs(4);

fn member(
    client: &Client,
    partitions: &Partitions,
    name: &str,
) -> (
    CancellationToken,
    JoinHandle<streambus::Result<WorkerReport>>,
) {
    let stop = CancellationToken::new();
    let worker = PartitionedWorker::new(
        client,
        partitions.clone(),
        GROUP,
        WorkerOptions {
            consumer_name: Some(name.to_owned()),
            block: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .leased(LeaseOptions {
        lease_time: Duration::from_secs(10),
        renew_interval: RENEW,
    });
    let run = tokio::spawn(worker.run(|_: Delivery| async {}, stop.clone()));
    (stop, run)
}

fn owned_by(o: &PartitionOwners, name: &str) -> usize {
    o.partitions
        .iter()
        .filter(|p| p.owner.as_deref() == Some(name))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_over_is_taken_within_moments_of_its_release() {
    let redis = RedisServer::start();
    let client = Client::open(&redis.url()).unwrap();
    let stream = format!("{}:s", unique_prefix("handover"));
    let parts = Partitions::new(&stream, PARTITIONS).unwrap();
    let mut conn = client.connect().await.unwrap();

    let (stop_a, run_a) = member(&client, &parts, "a");
    let started = Instant::now();
    loop {
        let o = partition::owners(&mut conn, &parts, GROUP).await;
        if o.as_ref()
            .is_ok_and(|o| owned_by(o, "a") == PARTITIONS as usize)
        {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "a never owned all: {o:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // b joins: a hands over half at its next turn. Every gap without an
    // owner is timed, from the first poll that sees it to the first that
    // sees the new owner.
    let (stop_b, run_b) = member(&client, &parts, "b");
    let joined = Instant::now();
    let mut unowned_since: HashMap<usize, Instant> = HashMap::new();
    let mut gaps: Vec<(usize, Duration)> = Vec::new();
    loop {
        let o = partition::owners(&mut conn, &parts, GROUP).await.unwrap();
        let now = Instant::now();
        for p in &o.partitions {
            match (&p.owner, unowned_since.get(&p.partition)) {
                (None, None) => {
                    unowned_since.insert(p.partition, now);
                }
                (Some(_), Some(&since)) => {
                    gaps.push((p.partition, now - since));
                    unowned_since.remove(&p.partition);
                }
                _ => {}
            }
        }
        if owned_by(&o, "a") == 3 && owned_by(&o, "b") == 3 && unowned_since.is_empty() {
            break;
        }
        assert!(joined.elapsed() < DEADLINE, "never settled 3/3: {o:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "settled {:?} after b joined; gaps without an owner: {gaps:?}",
        joined.elapsed()
    );
    // At most the three moved partitions, once each (a gap shorter than a
    // poll may go unseen).
    assert!(gaps.len() <= 3, "{gaps:?}");
    for (p, gap) in &gaps {
        // Before the retry between turns, a gap lasted until b's next turn:
        // anywhere up to RENEW (4 s).
        assert!(
            *gap < Duration::from_millis(1_000),
            "partition {p} had no owner for {gap:?}"
        );
    }

    stop_b.cancel();
    stop_a.cancel();
    run_b.await.unwrap().unwrap();
    run_a.await.unwrap().unwrap();
}
