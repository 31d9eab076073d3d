//! `streambus consume --exec` workers through network faults and a Redis crash.
//!
//! Two worker processes reach Redis through the testkit's `FaultProxy`; entries
//! are published straight to Redis. Each test checks that every entry was
//! handled (lost = 0), that nothing is left pending, and how long the workers
//! took to handle entries again after the fault ended. The workers run with
//! 500 ms timeouts so that the test is quick; the README gives the bound with the
//! defaults.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use streambus_testkit::{Appendfsync, FaultProxy, RedisServer, ServerOptions};

use common::{ok, pending, run_with, sb_url, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
/// With 500 ms timeouts: a read times out (BLOCK + 500 ms), one backoff pause,
/// a dial; with room for a loaded machine.
const RECOVERY: Duration = Duration::from_secs(5);

/// A `consume --exec` worker that appends each entry's envelope id to `out`.
fn worker(proxy_url: &str, stream: &str, name: &str, out: &Path) -> Child {
    // One write(2) per line with O_APPEND: lines never interleave.
    let cmd = format!("cat >> '{}'", out.display());
    sb_url(
        proxy_url,
        &[
            "--response-timeout",
            "500ms",
            "--connect-timeout",
            "500ms",
            "consume",
            stream,
            "--group",
            "g",
            "--consumer",
            name,
            "--exec",
            &cmd,
            "--concurrency",
            "4",
            "--max-wait",
            "200ms",
            "--visibility-timeout",
            "3s",
            "--backoff",
            "20ms,200ms",
            "--max-deliveries",
            "1000",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Publishes `{"n": i}` for `range`, straight to Redis.
fn publish(redis: &RedisServer, stream: &str, range: std::ops::Range<u32>) {
    let lines: String = range.map(|i| format!("{{\"n\":{i}}}\n")).collect();
    ok(&run_with(
        sb_url(&redis.url(), &["publish", stream]),
        lines.as_bytes(),
        DEADLINE,
    ));
}

fn handled(out: &[&Path]) -> Vec<u32> {
    out.iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["data"]["n"].as_u64().unwrap() as u32
                })
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn distinct(out: &[&Path]) -> usize {
    handled(out).into_iter().collect::<HashSet<_>>().len()
}

/// Stops the workers with SIGTERM (graceful) and returns their stderr.
fn stop(workers: Vec<Child>) -> Vec<String> {
    workers
        .into_iter()
        .map(|w| {
            unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
            let out = common::wait(w, DEADLINE);
            String::from_utf8_lossy(&out.stderr).into_owned()
        })
        .collect()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    redis: RedisServer,
    proxy: FaultProxy,
    dir: tempfile::TempDir,
}

fn setup(aof: bool) -> Setup {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start_with(ServerOptions {
        appendonly: aof,
        appendfsync: Appendfsync::Always,
        ..Default::default()
    });
    let upstream = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let proxy = rt.block_on(FaultProxy::start(upstream)).unwrap();
    Setup {
        rt,
        redis,
        proxy,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// Runs two workers over 300 entries published in three parts: before the
/// fault, during it, after it. Returns the time from the end of the fault to
/// the first entry handled after it.
fn scenario(s: &mut Setup, fault: impl FnOnce(&mut Setup)) -> Duration {
    let stream = "jobs";
    let (a, b) = (s.dir.path().join("a"), s.dir.path().join("b"));
    let url = s.proxy.url();
    let t0 = Instant::now();
    let workers = vec![
        worker(&url, stream, "w1", &a),
        worker(&url, stream, "w2", &b),
    ];
    let outs = [a.as_path(), b.as_path()];
    publish(&s.redis, stream, 0..100);
    wait_until(DEADLINE, "first part handled", || distinct(&outs) == 100);
    fault(s);
    let healed = Instant::now();
    let before = handled(&outs).len();
    publish(&s.redis, stream, 200..300);
    wait_until(DEADLINE, "first entry after the fault", || {
        handled(&outs).len() > before
    });
    let recovered = healed.elapsed();
    wait_until(DEADLINE, "every entry handled", || distinct(&outs) == 300);
    wait_until(DEADLINE, "nothing pending", || {
        pending(&s.redis, stream, "g") == 0
    });
    eprintln!("run took {:?}", t0.elapsed());
    let logs = stop(workers);
    let all = handled(&outs);
    eprintln!(
        "handled {} entries in {} runs; heal -> first entry handled {recovered:?}",
        distinct(&outs),
        all.len()
    );
    let _ = &s.rt;
    assert!(recovered <= RECOVERY, "{recovered:?}\n{}", logs.join("\n"));
    recovered
}

#[test]
fn exec_workers_survive_a_black_hole() {
    let mut s = setup(false);
    scenario(&mut s, |s| {
        s.proxy.black_hole();
        // Entries arrive while the workers cannot see them.
        publish(&s.redis, "jobs", 100..200);
        std::thread::sleep(Duration::from_secs(3)); // the fault's length
        s.proxy.heal();
    });
}

#[test]
fn exec_workers_survive_a_redis_crash_with_aof() {
    let mut s = setup(true);
    scenario(&mut s, |s| {
        publish(&s.redis, "jobs", 100..200);
        s.redis.kill();
        std::thread::sleep(Duration::from_secs(1)); // the outage's length
        s.redis.restart();
    });
}

#[test]
fn exec_workers_survive_a_reset_storm() {
    let mut s = setup(false);
    scenario(&mut s, |s| {
        let end = Instant::now() + Duration::from_secs(3);
        let mut part = 100;
        while Instant::now() < end {
            s.proxy.reset_all();
            if part < 200 {
                publish(&s.redis, "jobs", part..part + 20);
                part += 20;
            }
            std::thread::sleep(Duration::from_millis(500)); // the storm's rhythm
        }
        if part < 200 {
            publish(&s.redis, "jobs", part..200);
        }
    });
}
