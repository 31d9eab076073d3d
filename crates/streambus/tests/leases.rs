//! Leased partitions on a real local Redis Cluster (3 masters, 1 replica
//! each; one cluster for the file, so the steps run in one test), with
//! several `PartitionedWorker::leased` members in tasks of this process:
//!
//! - two members split 6 partitions 3/3; a scale-up to 4 members mid-run
//!   rebalances to at most 2 each, a scale-down back to 2 (graceful stops)
//!   hands the partitions back at once;
//! - a member whose future is dropped (a hard stop: no renewal, no release,
//!   like a crash) loses its partitions to the others after the lease time;
//!   it had more entries pending than the new owner has permits, which hands
//!   them all out, in order, before reading new ones;
//! - a master killed mid-run while leases move: its replica takes over;
//! - throughout, a publisher adds keyed entries; at the end every entry was
//!   handled, each key's first deliveries came in publishing order, nothing
//!   is pending, and the monitor's view (`partition::owners`) shows who owns
//!   what.
//!
//! Process-level faults (SIGKILL, SIGSTOP) are in the CLI's `tests/leases.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::partition::{
    self, LeaseOptions, PartitionOwners, PartitionedProducer, PartitionedWorker, Partitions,
};
use streambus::{
    keys, Backoff, CancellationToken, Client, Delivery, Message, ProducerOptions, WorkerOptions,
    WorkerReport,
};
use streambus_testkit::RedisCluster;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PARTITIONS: u32 = 6;
const KEYS: u64 = 60;
const ENTRIES: u64 = 6_000;
const GROUP: &str = "billing";
const DEADLINE: Duration = Duration::from_secs(30);
/// Published at once, just before the failover.
const LAST: u64 = 1_500;

fn lease() -> LeaseOptions {
    LeaseOptions {
        lease_time: Duration::from_millis(1_000),
        renew_interval: Duration::from_millis(250),
    }
}

/// Each key's seqs, in the order their handlers started.
type Seen = Arc<Mutex<HashMap<u64, Vec<u64>>>>;

struct Member {
    stop: CancellationToken,
    run: JoinHandle<streambus::Result<WorkerReport>>,
}

fn start(client: &Client, partitions: &Partitions, name: &str, seen: &Seen) -> Member {
    start_with(
        client,
        partitions,
        name,
        seen,
        16,
        Duration::from_micros(200),
    )
}

/// A member with `concurrency` per partition whose handler takes `work`.
fn start_with(
    client: &Client,
    partitions: &Partitions,
    name: &str,
    seen: &Seen,
    concurrency: usize,
    work: Duration,
) -> Member {
    let seen = seen.clone();
    let stop = CancellationToken::new();
    let worker = PartitionedWorker::new(
        client,
        partitions.clone(),
        GROUP,
        WorkerOptions {
            consumer_name: Some(name.to_owned()),
            concurrency,
            ordered_by_key: true,
            block: Duration::from_millis(200),
            reclaim_interval: Duration::from_millis(100),
            // Long: what moves entries here is the handover, not a reclaim.
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 100,
            reconnect_backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
            ..Default::default()
        },
    )
    .leased(lease());
    let run = tokio::spawn(worker.run(
        move |d: Delivery| {
            let seen = seen.clone();
            async move {
                let v: serde_json::Value = d.decode().unwrap();
                let (key, seq) = (v["key"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
                seen.lock().unwrap().entry(key).or_default().push(seq);
                tokio::time::sleep(work).await;
            }
        },
        stop.clone(),
    ));
    Member { stop, run }
}

/// Publishes the entries `range` (key `i % KEYS`, seq `i / KEYS`), 60 at a
/// time, `pause` between batches.
async fn publish(producer: &PartitionedProducer, range: std::ops::Range<u64>, pause: Duration) {
    let mut n = range.start;
    while n < range.end {
        let batch: Vec<Message> = (n..(n + 60).min(range.end))
            .map(|i| {
                Message::json(&serde_json::json!({ "key": i % KEYS, "seq": i / KEYS }))
                    .unwrap()
                    .with_key(format!("k{}", i % KEYS))
            })
            .collect();
        n += batch.len() as u64;
        producer.publish_batch(batch).await.unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Polls until each replica has every write its master acknowledged.
fn wait_for_replication(cluster: &RedisCluster) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let offset = |port: u16, field: &str| -> u64 {
        cluster
            .cli(port, &["INFO", "replication"])
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    for node in cluster.nodes() {
        let Some(master) = node.master_port else {
            continue;
        };
        while offset(node.port, "slave_repl_offset:") < offset(master, "master_repl_offset:") {
            assert!(
                std::time::Instant::now() < deadline,
                "replica {} lags",
                node.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn distinct(seen: &Seen) -> u64 {
    seen.lock()
        .unwrap()
        .values()
        .map(|v| v.iter().collect::<HashSet<_>>().len() as u64)
        .sum()
}

/// Polls `owners` until `ok` holds for it.
async fn wait_owners(
    client: &Client,
    partitions: &Partitions,
    what: &str,
    ok: impl Fn(&PartitionOwners) -> bool,
) -> PartitionOwners {
    let mut conn = client.connect().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(o) = partition::owners(&mut conn, partitions, GROUP).await {
            if ok(&o) {
                return o;
            }
            assert!(Instant::now() < deadline, "{what}: {o:#?}");
        }
        assert!(Instant::now() < deadline, "{what}: owners unreadable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every partition owned, by the members `names` only, each at most `max`.
fn balanced(o: &PartitionOwners, names: &[&str], max: usize) -> bool {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for p in &o.partitions {
        match p.owner.as_deref() {
            Some(owner) if names.contains(&owner) => *count.entry(owner).or_default() += 1,
            _ => return false,
        }
    }
    o.unowned == 0 && count.len() == names.len() && count.values().all(|&c| c <= max)
}

async fn wait_handled(seen: &Seen, n: u64, what: &str) {
    let deadline = Instant::now() + DEADLINE * 2;
    while distinct(seen) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {n} handled",
            distinct(seen)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_members_follow_scale_changes_crashes_and_a_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let client = Client::open(&cluster.url()).unwrap();
    let stream = format!("{}orders", streambus_testkit::unique_prefix("lease"));
    let partitions = Partitions::new(&stream, PARTITIONS).unwrap();
    let seen: Seen = Arc::default();

    // Two members: 3 partitions each.
    let a = start(&client, &partitions, "a", &seen);
    let b = start(&client, &partitions, "b", &seen);
    wait_owners(&client, &partitions, "two members, 3 each", |o| {
        balanced(o, &["a", "b"], 3)
    })
    .await;

    // A steady publisher: each key's entries in sequence, over ~8 s; the
    // last ones come at once, before the failover.
    let producer =
        PartitionedProducer::new(&client, partitions.clone(), ProducerOptions::default())
            .await
            .unwrap();
    let steady = producer.clone();
    let publisher = tokio::spawn(async move {
        publish(&steady, 0..ENTRIES - LAST, Duration::from_millis(80)).await
    });
    // Scale up to 4: at most 2 each.
    wait_handled(&seen, 600, "before the scale-up").await;
    let c = start(&client, &partitions, "c", &seen);
    let d = start(&client, &partitions, "d", &seen);
    let o = wait_owners(&client, &partitions, "four members, at most 2 each", |o| {
        balanced(o, &["a", "b", "c", "d"], 2)
    })
    .await;
    assert_eq!(o.members.len(), 4, "{o:#?}");
    assert!(o.partitions.iter().all(|p| p.expires_in_ms.is_some()));

    // Scale down to 2, gracefully: c and d hand their partitions back.
    wait_handled(&seen, 1_800, "before the scale-down").await;
    for m in [c, d] {
        m.stop.cancel();
        m.run.await.unwrap().unwrap();
    }
    wait_owners(&client, &partitions, "back to two members", |o| {
        balanced(o, &["a", "b"], 3)
    })
    .await;

    // A crash: b's future is dropped (no renewal, no release). After the
    // lease time, e and a share the partitions. b is slowed down first, so
    // that it leaves many entries pending (read, not handled), more than e
    // (concurrency 2) can claim at once: e must hand all of them out, in
    // order, before it reads new ones.
    wait_handled(&seen, 2_500, "before the slow member").await;
    b.stop.cancel();
    b.run.await.unwrap().unwrap();
    let b = start_with(
        &client,
        &partitions,
        "b",
        &seen,
        64,
        Duration::from_millis(100),
    );
    wait_owners(&client, &partitions, "slow b back", |o| {
        balanced(o, &["a", "b"], 3)
    })
    .await;
    wait_handled(&seen, 2_900, "before the crash").await;
    let e = start_with(
        &client,
        &partitions,
        "e",
        &seen,
        2,
        Duration::from_micros(200),
    );
    b.run.abort();
    let _ = b.run.await;
    let crashed = Instant::now();
    wait_owners(&client, &partitions, "after b crashed", |o| {
        balanced(o, &["a", "e"], 3)
    })
    .await;
    let moved = crashed.elapsed();
    // The bound is the lease time plus one turn; the rest is slack for a
    // loaded 2-core machine (polling, scheduling).
    assert!(
        moved <= lease().lease_time + lease().renew_interval + Duration::from_secs(2),
        "partitions moved after {moved:?}"
    );

    // A master killed while the leases move (a scale-up to 3 again) and
    // the workers are busy. The entries are replicated first: a failover
    // may lose the last writes a master acknowledged (see the README).
    publisher.await.unwrap();
    publish(&producer, ENTRIES - LAST..ENTRIES, Duration::ZERO).await;
    wait_for_replication(&cluster);
    let f = start(&client, &partitions, "f", &seen);
    let victim = cluster.master_for_slot(keys::slot(&partitions.keys()[0]));
    cluster.kill_node(victim);
    cluster
        .wait_for_failover(victim, Duration::from_secs(30))
        .unwrap();
    wait_owners(
        &client,
        &partitions,
        "three members after the failover",
        |o| balanced(o, &["a", "e", "f"], 2),
    )
    .await;

    // Everything handled and acknowledged.
    wait_handled(&seen, ENTRIES, "at the end").await;
    wait_owners(&client, &partitions, "nothing pending, no lag", |o| {
        o.partitions
            .iter()
            .all(|p| p.pending == 0 && p.lag == Some(0))
    })
    .await;
    for m in [a, e, f] {
        m.stop.cancel();
        m.run.await.unwrap().unwrap();
    }
    // Graceful stops release every lease and leave the registry.
    let o = wait_owners(&client, &partitions, "all released", |o| {
        o.unowned == PARTITIONS as usize
    })
    .await;
    assert!(o.members.is_empty(), "{o:#?}");

    // Each key's first deliveries in publishing order.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, KEYS);
    for (key, seqs) in seen.iter() {
        let mut first = Vec::new();
        let mut had = HashSet::new();
        for &s in seqs {
            if had.insert(s) {
                first.push(s);
            }
        }
        let expected: Vec<u64> = (0..ENTRIES / KEYS).collect();
        assert_eq!(first, expected, "key {key}: order of first deliveries");
    }
}
