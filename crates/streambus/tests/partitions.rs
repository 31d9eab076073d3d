//! A partitioned stream on a real local Redis Cluster (3 masters, 1 replica
//! each): 50,000 entries with 1,000 keys over 6 partitions; 3 workers consume
//! them all, none lost, per-key order preserved, while a master is killed and
//! its replica takes over; the monitor's totals equal the sum over partitions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus::admin::monitor::MonitorOptions;
use streambus::partition::{self, PartitionedProducer, PartitionedWorker, Partitions};
use streambus::{
    keys, Backoff, CancellationToken, Client, Delivery, Message, ProducerOptions, WorkerOptions,
};
use streambus_testkit::RedisCluster;
use tokio::time::Instant;

const ENTRIES: usize = 50_000;
const KEYS: usize = 1_000;
const PARTITIONS: u32 = 6;
const WORKERS: usize = 3;

/// Polls until each replica has every write its master acknowledged, so that
/// killing a master loses no published entry (replication is asynchronous: a
/// failover can lose the last writes a master acknowledged; see the README).
fn wait_for_replication(cluster: &RedisCluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
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
        loop {
            let want = offset(master, "master_repl_offset:");
            let have = offset(node.port, "slave_repl_offset:");
            if have >= want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica {} lags {want} > {have}",
                node.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_stream_survives_a_master_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let client = Client::open(&cluster.url()).unwrap();
    let partitions = Partitions::new("orders", PARTITIONS).unwrap();
    let masters: std::collections::HashSet<u16> = partitions
        .keys()
        .iter()
        .map(|k| cluster.master_for_slot(keys::slot(k)))
        .collect();
    assert_eq!(masters.len(), 3, "6 partitions spread over the 3 masters");

    // Publish: keys interleaved, each key's entries in sequence.
    let producer =
        PartitionedProducer::new(&client, partitions.clone(), ProducerOptions::default())
            .await
            .unwrap();
    let all: Vec<Message> = (0..ENTRIES)
        .map(|n| {
            let key = n % KEYS;
            let seq = n / KEYS;
            Message::json(&serde_json::json!({ "key": key, "seq": seq }))
                .unwrap()
                .with_key(format!("k{key}"))
        })
        .collect();
    for chunk in all.chunks(5_000) {
        producer.publish_batch(chunk.to_vec()).await.unwrap();
    }
    wait_for_replication(&cluster);

    // Three members, each reading its two partitions, in key order.
    let seen: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut runs = Vec::new();
    for member in 0..WORKERS {
        let seen = seen.clone();
        let worker = PartitionedWorker::new(
            &client,
            partitions.clone(),
            "billing",
            WorkerOptions {
                consumer_name: Some(format!("w{member}")),
                concurrency: 64,
                ordered_by_key: true,
                block: Duration::from_millis(200),
                reclaim_interval: Duration::from_millis(100),
                visibility_timeout: Duration::from_secs(2),
                max_deliveries: 100,
                reconnect_backoff: Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_millis(500),
                ),
                ..Default::default()
            },
        )
        .member(member, WORKERS);
        runs.push(tokio::spawn(worker.run(
            move |d: Delivery| {
                let seen = seen.clone();
                async move {
                    let v: serde_json::Value = d.decode().unwrap();
                    let (key, seq) = (v["key"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
                    seen.lock().unwrap().entry(key).or_default().push(seq);
                }
            },
            stop.clone(),
        )));
    }

    // Kill one master once a fifth is done; its replica takes over.
    let handled = || seen.lock().unwrap().values().map(Vec::len).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled() < ENTRIES / 5 {
        assert!(
            Instant::now() < deadline,
            "stuck before the failover at {}",
            handled()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = cluster.master_for_slot(keys::slot(&partitions.keys()[0]));
    cluster.kill_node(victim);
    cluster
        .wait_for_failover(victim, Duration::from_secs(30))
        .unwrap();

    let mut monitor_conn = client.connect().await.unwrap();
    loop {
        let distinct: usize = seen
            .lock()
            .unwrap()
            .values()
            .map(|v| {
                let mut v = v.clone();
                v.sort_unstable();
                v.dedup();
                v.len()
            })
            .sum();
        if distinct == ENTRIES {
            let snap =
                partition::snapshot(&mut monitor_conn, &partitions, &MonitorOptions::default())
                    .await;
            if let Ok(snap) = snap {
                let g = &snap.groups[0];
                if g.pending == 0 && g.lag == Some(0) {
                    // Totals are the sums over the partitions.
                    assert_eq!(snap.length, ENTRIES as u64);
                    assert_eq!(
                        snap.length,
                        snap.partitions.iter().map(|p| p.length).sum::<u64>()
                    );
                    assert_eq!(g.partitions, PARTITIONS as usize);
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {distinct} of {ENTRIES} handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for r in runs {
        r.await.unwrap().unwrap();
    }

    // None lost; each key's first deliveries in publishing order.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), KEYS);
    let mut duplicates = 0;
    for (key, seqs) in seen.iter() {
        let mut first = Vec::new();
        for &s in seqs {
            if first.contains(&s) {
                duplicates += 1;
            } else {
                first.push(s);
            }
        }
        let expected: Vec<u64> = (0..(ENTRIES / KEYS) as u64).collect();
        assert_eq!(first, expected, "key {key}: order of first deliveries");
    }
    println!("partitions: {ENTRIES} entries over {PARTITIONS} partitions, 1 master failover, {duplicates} duplicates, 0 lost");
}
