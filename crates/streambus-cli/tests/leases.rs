//! Leased membership from the command line, with real processes on a real
//! local Redis Cluster (3 masters, 1 replica each): `consume --partitions 6
//! --exec` without `--member`, several processes side by side.
//!
//! - **SIGKILL**, with the default lease settings (10 s, renewed every 3 s):
//!   of three members, one is killed for good mid-run; the two others take
//!   over its partitions within the lease time plus one renewal (the time is
//!   measured and printed: `takeover after SIGKILL`).
//! - **SIGSTOP** for longer than the (short) lease, then SIGCONT: the frozen
//!   member's partitions move to the other; once resumed, it gives them up
//!   (it handles none of their entries out of order), rejoins, and gets its
//!   share back by a graceful handover.
//!
//! Each run checks that every entry was handled, that each key's first
//! deliveries came in publishing order (the order of the lines the commands
//! append to one log file), and that nothing is left pending after the
//! members stop (SIGTERM: a graceful stop releases the leases).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use streambus::partition::{self, PartitionOwners, PartitionedProducer, Partitions};
use streambus::{Client, Message, ProducerOptions};
use streambus_testkit::RedisCluster;
use tokio::time::Instant;

use common::{sb, sigterm, text, wait};

const N: u32 = 6;
const KEYS: u64 = 24;
const GROUP: &str = "billing";
const DEADLINE: Duration = Duration::from_secs(40);

/// The command each entry runs: one line per handling, appended with one
/// write (atomic with O_APPEND), `<unix ns> <consumer> <partition> <id>`.
fn command(log: &Path) -> String {
    format!(
        "cat >/dev/null; printf '%s %s %s %s\\n' \"$(date +%s%N)\" \"$STREAMBUS_CONSUMER\" \"$STREAMBUS_PARTITION\" \"$STREAMBUS_ENTRY_ID\" >> '{}'",
        log.display()
    )
}

fn member(dir: &Path, url: &str, stream: &str, name: &str, lease: &[&str]) -> Child {
    let log = dir.join("ran.log");
    let cmd = command(&log);
    let mut args = vec![
        "--redis",
        url,
        "consume",
        stream,
        "--partitions",
        "6",
        "-g",
        GROUP,
        "-c",
        name,
        "--exec",
        &cmd,
        "--concurrency",
        "4",
        "--ordered-by-key",
        "--max-wait",
        "200ms",
    ];
    args.extend_from_slice(lease);
    let mut c = sb(dir, &args);
    c.stdout(std::process::Stdio::null());
    c.spawn().unwrap()
}

/// One handling, from the log.
struct Ran {
    at_ns: u128,
    consumer: String,
    partition: usize,
    id: String,
}

fn ran(dir: &Path) -> Vec<Ran> {
    let Ok(log) = std::fs::read_to_string(dir.join("ran.log")) else {
        return Vec::new();
    };
    log.lines()
        .filter(|l| l.ends_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some(Ran {
                at_ns: f.next()?.parse().ok()?,
                consumer: f.next()?.to_owned(),
                partition: f.next()?.parse().ok()?,
                id: f.next()?.to_owned(),
            })
        })
        .collect()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// (partition, entry id) → (key, seq) of everything published.
type Published = HashMap<(usize, String), (u64, u64)>;

/// Publishes `total` keyed entries, 12 at a time, `pause` between batches.
async fn publish(producer: PartitionedProducer, total: u64, pause: Duration) -> Published {
    let parts = producer.partitions().clone();
    let mut out = Published::new();
    let mut n = 0;
    while n < total {
        let batch: Vec<(u64, u64)> = (n..(n + 12).min(total))
            .map(|i| (i % KEYS, i / KEYS))
            .collect();
        n += batch.len() as u64;
        let messages = batch.iter().map(|(k, s)| {
            Message::json(&serde_json::json!({ "key": k, "seq": s }))
                .unwrap()
                .with_key(format!("k{k}"))
        });
        let ids = producer.publish_batch(messages).await.unwrap();
        for ((key, id), ks) in ids.into_iter().zip(batch) {
            let p = parts.keys().iter().position(|k| *k == key).unwrap();
            out.insert((p, id.to_string()), ks);
        }
        tokio::time::sleep(pause).await;
    }
    out
}

async fn wait_owners(
    client: &Client,
    parts: &Partitions,
    what: &str,
    deadline: Duration,
    ok: impl Fn(&PartitionOwners) -> bool,
) -> PartitionOwners {
    let mut conn = client.connect().await.unwrap();
    let until = Instant::now() + deadline;
    loop {
        let o = partition::owners(&mut conn, parts, GROUP).await;
        if let Ok(o) = &o {
            if ok(o) {
                return o.clone();
            }
        }
        assert!(Instant::now() < until, "{what}: {o:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn owned_by(o: &PartitionOwners, name: &str) -> Vec<usize> {
    o.partitions
        .iter()
        .filter(|p| p.owner.as_deref() == Some(name))
        .map(|p| p.partition)
        .collect()
}

/// The members have settled on their shares: every partition owned, by
/// `names` only, each member holding exactly the partitions `p % M == k` of
/// its place `k` among the `M` live members (the library's assignment). A
/// count alone is not enough: in a handover two members can each hold the
/// right number while one of them still drains a partition that is the
/// other's, which then goes unowned for a moment.
fn settled(o: &PartitionOwners, names: &[&str]) -> bool {
    let m = names.len();
    let share = |k: usize| (0..N as usize).filter(|p| p % m == k).collect::<Vec<_>>();
    o.unowned == 0
        && names.iter().all(|n| {
            let mine = owned_by(o, n);
            matches!(mine.first(), Some(&k) if k < m && mine == share(k))
        })
        && names.iter().map(|n| owned_by(o, n).len()).sum::<usize>() == N as usize
}

async fn wait_lines(dir: &Path, what: &str, ok: impl Fn(&[Ran]) -> bool) {
    let until = Instant::now() + DEADLINE;
    loop {
        if ok(&ran(dir)) {
            return;
        }
        assert!(Instant::now() < until, "{what}: {} lines", ran(dir).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every entry handled, each key's first deliveries in publishing order.
fn check(dir: &Path, published: &Published) {
    let lines = ran(dir);
    let mut first: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut seen = HashSet::new();
    for r in &lines {
        let at = (r.partition, r.id.clone());
        let (key, seq) = *published
            .get(&at)
            .unwrap_or_else(|| panic!("ran an entry never published: {at:?}"));
        if seen.insert(at) {
            first.entry(key).or_default().push(seq);
        }
    }
    assert_eq!(seen.len(), published.len(), "every entry handled");
    for (key, seqs) in &first {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, &sorted, "key {key}: first deliveries out of order");
    }
}

/// Stops the members gracefully and checks that nothing is pending and no
/// lease is left.
async fn stop_all(client: &Client, parts: &Partitions, members: Vec<Child>) {
    for m in &members {
        sigterm(m);
    }
    for m in members {
        let o = tokio::task::spawn_blocking(move || wait(m, DEADLINE))
            .await
            .unwrap();
        assert!(o.status.success(), "{:?}\n{}", o.status, text(&o.stderr));
    }
    let o = wait_owners(client, parts, "released, nothing pending", DEADLINE, |o| {
        o.unowned == N as usize && o.partitions.iter().all(|p| p.pending == 0)
    })
    .await;
    assert!(o.members.is_empty(), "{o:#?}");
}

/// After m2's death: `monitor` shows the owners (m0 and m1 only, no
/// partition without an owner), in JSON and as text; `scale` counts the two
/// live members, not the three consumer names the group still has.
fn monitor_and_scale(d: &Path, url: &str, stream: &str) {
    let o = common::run(
        sb(
            d,
            &[
                "--redis",
                url,
                "monitor",
                stream,
                "--partitions",
                "6",
                "--json",
            ],
        ),
        DEADLINE,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    let owners = &v["owners"][0];
    assert_eq!(owners["group"], GROUP, "{v:#}");
    assert_eq!(owners["unowned"], 0, "{owners:#}");
    let mut members: Vec<&str> = owners["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    members.sort_unstable();
    assert_eq!(members, ["m0", "m1"]);
    for p in owners["partitions"].as_array().unwrap() {
        assert!(
            ["m0", "m1"].contains(&p["owner"].as_str().unwrap()),
            "{p:#}"
        );
        assert!(p["expires_in_ms"].as_u64().unwrap() <= 10_000, "{p:#}");
        assert!(p["renewed_ms_ago"].as_u64().is_some(), "{p:#}");
        assert!(p["lag"].as_u64().is_some(), "{p:#}");
    }
    let o = common::run(
        sb(d, &["--redis", url, "monitor", stream, "--partitions", "6"]),
        DEADLINE,
    );
    let out = text(&o.stdout);
    assert!(
        out.contains("group billing: leased, 2 live members")
            && out.contains("0 partitions without an owner"),
        "{out}"
    );
    assert!(out.contains("  partition 0: owner m"), "{out}");
    let o = common::run(
        sb(
            d,
            &[
                "--redis",
                url,
                "scale",
                stream,
                "--partitions",
                "6",
                "-g",
                GROUP,
                "--window",
                "1s",
                "--json",
            ],
        ),
        DEADLINE,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(v["advice"]["current"], 2, "live members, not names: {v:#}");
    assert!(v["advice"]["target"].as_u64().unwrap() <= 6, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_members_survive_sigkill_and_sigstop() {
    let cluster = RedisCluster::start(3, 1);
    let url = cluster.url();
    let client = Client::open(&url).unwrap();

    // Bad lease settings are refused with a clear error.
    {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let refused = |args: &[&str], says: &str| {
            let mut all = vec![
                "--redis",
                url.as_str(),
                "consume",
                "bad",
                "-g",
                GROUP,
                "--exec",
                "true",
            ];
            all.extend_from_slice(args);
            let o = common::run(sb(d, &all), DEADLINE);
            let err = text(&o.stderr);
            assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
        };
        refused(
            &[
                "--partitions",
                "6",
                "--lease-time",
                "1s",
                "--lease-renew",
                "800ms",
            ],
            "at most half the lease time",
        );
        refused(&["--lease-time", "1s"], "need a partitioned stream");
        refused(
            &["--partitions", "6", "--member", "0/2", "--lease-time", "1s"],
            "cannot be used with",
        );
    }

    // SIGKILL, default lease settings.
    {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let stream = format!("{}kill", streambus_testkit::unique_prefix("lease"));
        let parts = Partitions::new(&stream, N).unwrap();
        let producer = PartitionedProducer::new(&client, parts.clone(), ProducerOptions::default())
            .await
            .unwrap();
        let mut members: Vec<Child> = ["m0", "m1", "m2"]
            .iter()
            .map(|n| member(d, &url, &stream, n, &[]))
            .collect();
        wait_owners(&client, &parts, "3 members, 2 each", DEADLINE, |o| {
            settled(o, &["m0", "m1", "m2"])
        })
        .await;
        // ~24 s of steady publishing: the kill comes early in it.
        let publisher = tokio::spawn(publish(producer, 1_200, Duration::from_millis(240)));
        wait_lines(d, "before the kill", |l| l.len() >= 100).await;
        let o = wait_owners(&client, &parts, "m2's partitions", DEADLINE, |_| true).await;
        let theirs = owned_by(&o, "m2");
        assert_eq!(theirs.len(), 2, "{o:#?}");
        let mut victim = members.pop().unwrap();
        victim.kill().unwrap();
        let killed = now_ns();
        victim.wait().unwrap();
        // Every one of m2's partitions handled again, by the others.
        wait_lines(d, "m2's partitions taken over", |l| {
            theirs.iter().all(|p| {
                l.iter()
                    .any(|r| r.partition == *p && r.at_ns > killed && r.consumer != "m2")
            })
        })
        .await;
        let lines = ran(d);
        let takeover = theirs
            .iter()
            .map(|p| {
                lines
                    .iter()
                    .filter(|r| r.partition == *p && r.at_ns > killed)
                    .map(|r| r.at_ns)
                    .min()
                    .unwrap()
                    - killed
            })
            .max()
            .unwrap();
        let takeover = Duration::from_nanos(takeover as u64);
        eprintln!("takeover after SIGKILL (lease 10s, renewed every 3s): {takeover:?}");
        // Lease time plus one renewal, plus a second for a publish to
        // arrive (every 240 ms) and its command to run.
        assert!(
            takeover <= Duration::from_secs(14),
            "took {takeover:?} to take over"
        );
        wait_owners(&client, &parts, "2 members, 3 each", DEADLINE, |o| {
            settled(o, &["m0", "m1"])
        })
        .await;
        tokio::task::block_in_place(|| monitor_and_scale(d, &url, &stream));
        let published = publisher.await.unwrap();
        wait_lines(d, "all handled", |l| {
            l.iter()
                .map(|r| (r.partition, r.id.as_str()))
                .collect::<HashSet<_>>()
                .len()
                >= published.len()
        })
        .await;
        stop_all(&client, &parts, members).await;
        check(d, &published);
    }

    // SIGSTOP past the lease, then SIGCONT; short leases.
    {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let stream = format!("{}stop", streambus_testkit::unique_prefix("lease"));
        let parts = Partitions::new(&stream, N).unwrap();
        let producer = PartitionedProducer::new(&client, parts.clone(), ProducerOptions::default())
            .await
            .unwrap();
        let lease = ["--lease-time", "1500ms", "--lease-renew", "300ms"];
        let members: Vec<Child> = ["s0", "s1"]
            .iter()
            .map(|n| member(d, &url, &stream, n, &lease))
            .collect();
        wait_owners(&client, &parts, "2 members, 3 each", DEADLINE, |o| {
            settled(o, &["s0", "s1"])
        })
        .await;
        let publisher = tokio::spawn(publish(producer, 720, Duration::from_millis(100)));
        wait_lines(d, "before the stop", |l| l.len() >= 100).await;
        let o = wait_owners(&client, &parts, "s1's partitions", DEADLINE, |_| true).await;
        let theirs = owned_by(&o, "s1");
        let pid = members[1].id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let stopped = now_ns();
        // s0 takes every partition, and handles entries of s1's.
        wait_owners(&client, &parts, "s0 owns all", DEADLINE, |o| {
            owned_by(o, "s0").len() == N as usize
        })
        .await;
        wait_lines(d, "s1's partitions handled by s0", |l| {
            theirs.iter().all(|p| {
                l.iter()
                    .any(|r| r.partition == *p && r.at_ns > stopped && r.consumer == "s0")
            })
        })
        .await;
        let lines = ran(d);
        let takeover = theirs
            .iter()
            .map(|p| {
                lines
                    .iter()
                    .filter(|r| r.partition == *p && r.at_ns > stopped && r.consumer == "s0")
                    .map(|r| r.at_ns)
                    .min()
                    .unwrap()
                    - stopped
            })
            .max()
            .unwrap();
        eprintln!(
            "takeover after SIGSTOP (lease 1.5s, renewed every 300ms): {:?}",
            Duration::from_nanos(takeover as u64)
        );
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        let resumed = now_ns();
        // Resumed, it gives up what it lost, rejoins and gets its share back.
        wait_owners(&client, &parts, "rebalanced after SIGCONT", DEADLINE, |o| {
            settled(o, &["s0", "s1"])
        })
        .await;
        let published = publisher.await.unwrap();
        wait_lines(d, "all handled", |l| {
            l.iter()
                .map(|r| (r.partition, r.id.as_str()))
                .collect::<HashSet<_>>()
                .len()
                >= published.len()
        })
        .await;
        stop_all(&client, &parts, members).await;
        check(d, &published);
        // While frozen, s1 handled nothing (only commands it had started
        // before may have finished then).
        let lines = ran(d);
        let late = lines
            .iter()
            .filter(|r| r.consumer == "s1" && r.at_ns > stopped + 500_000_000 && r.at_ns < resumed)
            .count();
        assert_eq!(late, 0, "s1 ran entries while frozen");
    }
}
