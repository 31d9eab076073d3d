//! Chaos test: nothing is lost while worker processes and Redis itself are
//! killed with SIGKILL mid-run.
//!
//! 20,000 envelopes; three worker processes (this test binary, re-executed in
//! worker mode); one of them is killed at random moments and restarted under the
//! same name, several times; the Redis server (AOF, `appendfsync always`) is
//! killed and restarted once. At the end every envelope was handled at least
//! once, the group's pending list is empty, the dead-letter stream is empty, and
//! the number of duplicates is printed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Value;
use streambus::admin::dead_letter;
use streambus::Jitter;
use streambus::{
    Backoff, CancellationToken, Client, Delivery, Message, Producer, ProducerOptions, Worker,
    WorkerOptions,
};
use streambus_testkit::{Appendfsync, RedisServer, ServerOptions};
use tokio::time::Instant;

const STREAM: &str = "chaos:events";
const GROUP: &str = "g";
const MESSAGES: usize = 20_000;

/// Worker mode: the chaos test starts this binary with `--ignored --exact
/// chaos_worker_process` and the settings in the environment.
#[tokio::test]
#[ignore = "entry point of the chaos test's worker processes, not a test by itself"]
async fn chaos_worker_process() {
    let url = std::env::var("CHAOS_URL").expect("CHAOS_URL");
    let name = std::env::var("CHAOS_NAME").expect("CHAOS_NAME");
    let out = std::env::var("CHAOS_OUT").expect("CHAOS_OUT");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .unwrap();
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let options = WorkerOptions {
        concurrency: 8,
        block: Duration::from_millis(200),
        visibility_timeout: Duration::from_secs(1),
        reclaim_interval: Duration::from_millis(100),
        // Kills redeliver entries several times; none of them is poison.
        max_deliveries: 100,
        retry_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
        reconnect_backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(300)),
        ..Default::default()
    };
    let worker = Worker::new(
        &Client::open(&url).unwrap(),
        STREAM,
        GROUP,
        WorkerOptions {
            consumer_name: Some(name),
            ..options
        },
    );
    let stop = CancellationToken::new();
    let on_term = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        on_term.cancel();
    });
    worker
        .run(
            move |d: Delivery| {
                let file = file.clone();
                async move {
                    // Some work, so that kills land while entries are in flight.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let env = d.envelope().unwrap().unwrap();
                    // One write(2) per line with O_APPEND: a kill never leaves half a line.
                    let line = format!("{}\n", env.id);
                    file.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            },
            stop,
        )
        .await
        .unwrap();
}

/// A worker process, killed when dropped.
struct WorkerProcess {
    name: String,
    out: PathBuf,
    url: String,
    child: Child,
}

impl WorkerProcess {
    fn spawn(url: &str, name: &str, dir: &Path) -> Self {
        let out = dir.join(format!("{name}.out"));
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "chaos_worker_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("CHAOS_URL", url)
            .env("CHAOS_NAME", name)
            .env("CHAOS_OUT", &out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        WorkerProcess {
            name: name.to_owned(),
            out,
            url: url.to_owned(),
            child,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self, dir: &Path) {
        self.kill();
        *self = WorkerProcess::spawn(&self.url.clone(), &self.name.clone(), dir);
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn handled(workers: &[WorkerProcess]) -> (HashSet<String>, usize) {
    let mut seen = HashSet::new();
    let mut lines = 0;
    for w in workers {
        if let Ok(text) = std::fs::read_to_string(&w.out) {
            for line in text.lines() {
                lines += 1;
                seen.insert(line.to_owned());
            }
        }
    }
    (seen, lines)
}

async fn settled(url: &str) -> bool {
    let Ok(client) = Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.connect().await else {
        return false;
    };
    let Ok(groups) = streambus::admin::group::list_groups(&mut conn, STREAM).await else {
        return false;
    };
    groups
        .first()
        .is_some_and(|g| g.pending == 0 && g.lag == Some(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut redis = RedisServer::start_with(ServerOptions {
        appendonly: true,
        appendfsync: Appendfsync::Always,
        ..Default::default()
    });
    let url = redis.url();
    let client = Client::open(&url).unwrap();
    let conn = client.connect().await.unwrap();
    streambus::admin::group::create_group(
        &mut conn.clone(),
        STREAM,
        GROUP,
        streambus::StartId::Beginning,
    )
    .await
    .unwrap();
    let producer = Producer::new(&client, ProducerOptions::default())
        .await
        .unwrap();
    let mut published = HashSet::new();
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|i| Message::json(&serde_json::json!({"n": i})).unwrap())
        .collect();
    for m in &messages {
        published.insert(m.envelope_id().unwrap().to_owned());
    }
    producer.publish_batch(STREAM, messages).await.unwrap();

    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| WorkerProcess::spawn(&url, &format!("w{i}"), &dir))
        .collect();

    let mut jitter = Jitter::new();
    let mut kills = 0;
    let mut redis_killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (seen, _) = handled(&workers);
        let done = seen.len();
        if done == MESSAGES && settled(&url).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {done} of {MESSAGES} handled after {kills} kills"
        );
        // Kill worker w2 at random moments, while work remains, several times.
        if kills < 6 && done < MESSAGES * 9 / 10 && done > kills * MESSAGES / 8 {
            let wait = Duration::from_millis(50 + (jitter.next_unit() * 250.0) as u64);
            tokio::time::sleep(wait).await;
            workers[2].kill();
            kills += 1;
            workers[2].restart(&dir);
        }
        // Kill Redis once, halfway.
        if !redis_killed && done > MESSAGES / 2 {
            redis.kill();
            let down = Instant::now();
            while down.elapsed() < Duration::from_millis(300) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            redis.restart();
            redis_killed = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(redis_killed, "Redis was killed once");
    assert!(kills >= 3, "worker killed several times ({kills})");

    let (seen, lines) = handled(&workers);
    let missing = published.difference(&seen).count();
    assert_eq!(missing, 0, "every message handled at least once");
    let mut conn = Client::open(&url).unwrap().connect().await.unwrap();
    let pending: Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(&mut conn)
        .await
        .unwrap();
    let Value::Array(p) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(p[0], Value::Int(0), "pending list empty");
    assert_eq!(
        dead_letter::count(&mut conn, STREAM).await.unwrap(),
        0,
        "no dead letters"
    );
    println!(
        "chaos: {MESSAGES} messages, {kills} worker kills, 1 Redis kill: {lines} handlings, {} duplicates, 0 lost",
        lines - MESSAGES
    );
}
