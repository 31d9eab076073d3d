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

use common::data::{pending, publish_n};
use common::faults::{fast, proxied, Proxied};
use common::{sigterm, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
/// With 500 ms timeouts: a read times out (BLOCK + 500 ms), one backoff pause,
/// a dial; with room for a loaded machine.
const RECOVERY: Duration = Duration::from_secs(5);

/// A `consume --exec` worker that appends each entry's envelope id to `out`.
fn worker(proxy_url: &str, stream: &str, name: &str, out: &Path) -> Child {
    // One write(2) per line with O_APPEND: lines never interleave.
    let cmd = format!("cat >> '{}'", out.display());
    fast(
        proxy_url,
        &[
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
            sigterm(&w);
            let out = common::wait(w, DEADLINE);
            String::from_utf8_lossy(&out.stderr).into_owned()
        })
        .collect()
}

/// Runs two workers over 300 entries published in three parts: before the
/// fault, during it, after it. Returns the time from the end of the fault to
/// the first entry handled after it.
fn scenario(s: &mut Proxied, fault: impl FnOnce(&mut Proxied)) -> Duration {
    let stream = "jobs";
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let url = s.proxy.url();
    let t0 = Instant::now();
    let workers = vec![
        worker(&url, stream, "w1", &a),
        worker(&url, stream, "w2", &b),
    ];
    let outs = [a.as_path(), b.as_path()];
    publish_n(&s.redis, stream, 0..100);
    wait_until(DEADLINE, "first part handled", || distinct(&outs) == 100);
    fault(s);
    let healed = Instant::now();
    let before = handled(&outs).len();
    publish_n(&s.redis, stream, 200..300);
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
    assert!(recovered <= RECOVERY, "{recovered:?}\n{}", logs.join("\n"));
    recovered
}

#[test]
fn exec_workers_survive_a_black_hole() {
    let mut s = proxied(false);
    scenario(&mut s, |s| {
        let accepted = s.proxy.connections_accepted();
        s.proxy.black_hole();
        // Entries arrive while the workers cannot see them.
        publish_n(&s.redis, "jobs", 100..200);
        // Until the workers have given up silent connections and dialed
        // anew, twice (the new ones are swallowed too).
        s.wait_for_dials(accepted, 2, "two dials into the black hole");
        s.proxy.heal();
    });
}

#[test]
fn exec_workers_survive_a_redis_crash_with_aof() {
    let mut s = proxied(true);
    scenario(&mut s, |s| {
        publish_n(&s.redis, "jobs", 100..200);
        let accepted = s.proxy.connections_accepted();
        s.redis.kill();
        // Down until the workers have tried to reconnect twice (the proxy
        // accepts, finds no Redis behind it, and closes).
        s.wait_for_dials(accepted, 2, "two dials while Redis is down");
        s.redis.restart();
    });
}

#[test]
fn exec_workers_survive_a_reset_storm() {
    let mut s = proxied(false);
    scenario(&mut s, |s| {
        // Six resets, each once the workers have reconnected since the one
        // before, with entries published between them.
        for part in (100..200).step_by(20).chain([200]) {
            let accepted = s.proxy.connections_accepted();
            s.proxy.reset_all();
            if part < 200 {
                publish_n(&s.redis, "jobs", part..part + 20);
            }
            s.wait_for_dials(accepted, 1, "a reconnect after the reset");
        }
    });
}
