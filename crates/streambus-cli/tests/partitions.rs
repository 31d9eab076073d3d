//! Partitioned streams from the command line, on a real local Redis Cluster
//! (3 masters; one cluster for the whole file, so the steps run in one test):
//! publish routes by key, tail reads every partition, two `consume --exec`
//! members together run every entry exactly once, monitor's totals are the sums
//! over the partitions, scale adds the partitions up, groups act on every
//! partition; and the topology file's
//! `partitions`.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use streambus::partition::Partitions;
use streambus_testkit::RedisCluster;

use common::{run, sb, text, wait};

const DEADLINE: Duration = Duration::from_secs(20);
const N: u32 = 6;

/// `streambus --redis URL ARGS...` in `dir`, to completion; stdout on success.
#[track_caller]
fn ok(dir: &std::path::Path, url: &str, args: &[&str]) -> String {
    let mut all = vec!["--redis", url];
    all.extend_from_slice(args);
    let o = run(sb(dir, &all), DEADLINE);
    assert!(
        o.status.success(),
        "streambus {args:?}: {:?}\n{}",
        o.status,
        text(&o.stderr)
    );
    text(&o.stdout)
}

#[test]
fn partitioned_streams_from_the_command_line() {
    let cluster = RedisCluster::start(3, 0);
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stream = format!("{}orders", streambus_testkit::unique_prefix("cli"));
    let s = stream.as_str();
    let parts = Partitions::new(s, N).unwrap();

    // publish: by --key, each line `PARTITION_KEY ENTRY_ID`, on the key's partition.
    // (partition key, entry id) of everything published.
    let mut published: Vec<(String, String)> = Vec::new();
    for k in 0..8 {
        let key = format!("host-{k}");
        let out = ok(
            d,
            &url,
            &[
                "publish",
                s,
                "--partitions",
                "6",
                "--key",
                &key,
                "{\"a\":1}",
                "{\"a\":2}",
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        for line in lines {
            let (pk, id) = line.split_once(' ').unwrap();
            assert_eq!(pk, parts.for_key(&key), "{key}");
            published.push((pk.to_owned(), id.to_owned()));
        }
    }
    // Without a key: the partitions take turns (stdin, one line each).
    let mut child = sb(d, &["--redis", &url, "publish", s, "--partitions", "6"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = (0..6).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let o = wait(child, DEADLINE);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let keys: HashSet<String> = text(&o.stdout)
        .lines()
        .map(|l| {
            let (pk, id) = l.split_once(' ').unwrap();
            published.push((pk.to_owned(), id.to_owned()));
            pk.to_owned()
        })
        .collect();
    assert_eq!(keys.len(), N as usize, "round-robin over every partition");
    let total = published.len();

    // tail: every entry once, from the topology file's `partitions` (no flag),
    // with the logical stream's name and the partition's index.
    std::fs::write(
        d.join("streambus.toml"),
        format!("[streams.\"{s}\"]\npartitions = 6\n"),
    )
    .unwrap();
    let out = ok(d, &url, &["tail", s, "--from", "0"]);
    let tailed: HashSet<(String, String)> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["stream"], s, "{v}");
            let p = v["partition"].as_u64().unwrap() as usize;
            (
                parts.keys()[p].clone(),
                v["entry_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(out.lines().count(), total);
    assert_eq!(tailed, published.iter().cloned().collect());
    // Without --from: the last N over all partitions.
    assert_eq!(ok(d, &url, &["tail", s, "-n", "5"]).lines().count(), 5);
    // --partitions 1 overrides the file: the plain key does not exist.
    let o = run(
        sb(d, &["--redis", &url, "tail", s, "--partitions", "1"]),
        DEADLINE,
    );
    assert!(!o.status.success());

    // groups: create on every partition, then list totals and the breakdown.
    let out = ok(d, &url, &["groups", s, "--create", "audit"]);
    assert_eq!(
        out.trim(),
        format!("created group audit on {s} (6 partitions)")
    );
    let out = ok(d, &url, &["groups", s, "--create", "audit"]);
    assert!(out.contains("already exists"), "{out}");
    let v: Value = serde_json::from_str(&ok(d, &url, &["groups", s, "--json"])).unwrap();
    assert_eq!(v["groups"][0]["name"], "audit");
    assert_eq!(v["groups"][0]["partitions"], 6);
    assert_eq!(v["groups"][0]["lag"], total);
    assert_eq!(v["by_partition"].as_array().unwrap().len(), 6);
    let table = ok(d, &url, &["groups", s]);
    assert!(
        table.starts_with("GROUP  PARTITIONS  PENDING  LAG"),
        "{table}"
    );

    // consume (print and ack): never reads more than it prints.
    let out = ok(
        d,
        &url,
        &[
            "consume",
            s,
            "-g",
            "audit",
            "-n",
            "5",
            "--max-wait",
            "100ms",
        ],
    );
    assert_eq!(out.lines().count(), 5, "{out}");

    // consume --exec: members 0/2 and 1/2 at once; each entry run exactly once.
    let per_partition: HashMap<&str, usize> =
        published.iter().fold(HashMap::new(), |mut m, (k, _)| {
            *m.entry(k.as_str()).or_default() += 1;
            m
        });
    let log = d.join("ran.log");
    let command = format!("cat >> '{}'", log.display());
    let members: Vec<_> = (0..2)
        .map(|m| {
            let count: usize = parts
                .keys()
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == m)
                .map(|(_, k)| per_partition.get(k.as_str()).copied().unwrap_or(0))
                .sum();
            let member = format!("{m}/2");
            let consumer = format!("m{m}");
            let count = count.to_string();
            sb(
                d,
                &[
                    "--redis",
                    &url,
                    "consume",
                    s,
                    "-g",
                    "billing",
                    "--exec",
                    &command,
                    "--member",
                    &member,
                    "-c",
                    &consumer,
                    "-n",
                    &count,
                    "--max-wait",
                    "100ms",
                    "--concurrency",
                    "4",
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for child in members {
        let o = wait(child, DEADLINE);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let ran = std::fs::read_to_string(&log).unwrap();
    let mut seen = HashSet::new();
    for line in ran.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["stream"], s);
        let p = v["partition"].as_u64().unwrap() as usize;
        let entry = (
            parts.keys()[p].clone(),
            v["entry_id"].as_str().unwrap().to_owned(),
        );
        assert!(seen.insert(entry), "ran twice: {line}");
    }
    assert_eq!(seen, published.iter().cloned().collect(), "each entry once");
    // A member beyond the partitions is refused.
    let o = run(
        sb(
            d,
            &[
                "--redis", &url, "consume", s, "-g", "x", "--member", "6/7", "--exec", "true",
            ],
        ),
        DEADLINE,
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("only 6 partitions"),
        "{}",
        text(&o.stderr)
    );

    // monitor --json: the logical totals are the sums over the partitions.
    let v: Value = serde_json::from_str(&ok(d, &url, &["monitor", s, "--json"])).unwrap();
    assert_eq!(v["stream"], s);
    assert_eq!(v["length"], total);
    let snaps = v["partitions"].as_array().unwrap();
    assert_eq!(snaps.len(), 6);
    let sum: u64 = snaps.iter().map(|p| p["length"].as_u64().unwrap()).sum();
    assert_eq!(sum, total as u64);
    let group = |name: &str| {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(group("billing")["pending"], 0);
    assert_eq!(group("billing")["lag"], 0);
    assert_eq!(
        group("audit")["pending"],
        0,
        "consume acked what it printed"
    );
    assert_eq!(group("audit")["lag"], total - 5, "and read no more");
    let text_out = ok(d, &url, &["monitor", s]);
    assert!(
        text_out.starts_with(&format!("stream {s}: 6 partitions present, length {total}")),
        "{text_out}"
    );

    // scale: samples added up over the partitions (`partitions` from the file);
    // consumers are the distinct names (m0, m1), one per member process.
    let v: Value = serde_json::from_str(&ok(
        d,
        &url,
        &["scale", s, "-g", "billing", "--window", "50ms", "--json"],
    ))
    .unwrap();
    assert_eq!(v["advice"]["current"], 2, "{v}");
    assert!(v["advice"]["target"].as_u64().unwrap() <= 6, "{v}");
    let v: Value = serde_json::from_str(&ok(
        d,
        &url,
        &["scale", s, "-g", "audit", "--window", "50ms", "--json"],
    ))
    .unwrap();
    assert_eq!(v["advice"]["current"], 1, "{v}");
    assert!(
        v["sentence"]
            .as_str()
            .unwrap()
            .contains(&format!("stream length ({})", total - 5)),
        "the lag over all partitions: {v}"
    );
    let o = run(
        sb(
            d,
            &[
                "--redis", &url, "scale", s, "-g", "nobody", "--window", "10ms",
            ],
        ),
        DEADLINE,
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no partition"),
        "{}",
        text(&o.stderr)
    );

    // tail --follow: one reader per partition; the history, then new entries
    // of any partition (publishing after the start cannot race: --from 0).
    let want = (total + 2).to_string();
    let follow = sb(
        d,
        &[
            "--redis", &url, "tail", s, "--follow", "--from", "0", "-n", &want,
        ],
    )
    .spawn()
    .unwrap();
    ok(d, &url, &["publish", s, "--key", "late-1", "{\"late\":1}"]);
    ok(d, &url, &["publish", s, "--key", "late-2", "{\"late\":2}"]);
    let o = wait(follow, DEADLINE);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), total + 2);
    assert_eq!(out.matches("\"late\"").count(), 2, "{out}");

    // dlq: none anywhere.
    let o = run(sb(d, &["--redis", &url, "dlq", "list", s]), DEADLINE);
    assert!(o.status.success());
    assert!(
        text(&o.stderr).contains("no dead letters"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn topology_partitions_are_checked_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "[streams.orders]\nretention = { max_len = 10 }\npartitions = 0\n",
    )
    .unwrap();
    let o = run(
        sb(dir.path(), &["topology", "check", file.to_str().unwrap()]),
        DEADLINE,
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("line 3: streams.orders.partitions: partitions must be between 1 and 1024"),
        "{e}"
    );
    std::fs::write(&file, "[streams.orders]\npartitions = 6\n").unwrap();
    let o = run(
        sb(dir.path(), &["topology", "check", file.to_str().unwrap()]),
        DEADLINE,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}
