//! A tiny bench against a private server: the report must be complete and sane.
//! Speed itself is never asserted here (STYLE.md): only that every phase ran.

use std::time::Duration;

use streambus_bench::BenchOptions;
use streambus_testkit::RedisServer;

/// A bench of a few thousand messages against `server`.
fn tiny(server: &RedisServer) -> BenchOptions {
    let mut opts = BenchOptions::default();
    opts.redis = Some(server.url());
    opts.publish_messages = 2_000;
    opts.publish_callers = 16;
    opts.batch_size = 500;
    opts.consume_messages = 2_000;
    opts.consume_messages_single = 200;
    opts.latency_rates = vec![2_000];
    opts.latency_duration = Duration::from_millis(300);
    opts.latency_warmup = Duration::from_millis(50);
    // A short BLOCK, so each worker phase stops quickly.
    opts.worker.block = Duration::from_millis(50);
    opts.cli_consume_messages = 2_000;
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_reports_sane_figures() {
    let server = RedisServer::start();
    let mut opts = tiny(&server);
    // No Python: the peers are skipped, with a note each.
    opts.python_bin = "/nonexistent/python3".into();
    let lines = std::sync::Mutex::new(Vec::new());
    let report = streambus_bench::run(opts, |l| lines.lock().unwrap().push(l.to_owned()))
        .await
        .unwrap();
    assert!(!lines.lock().unwrap().is_empty(), "no progress reported");

    let keys: Vec<&str> = report.throughput.iter().map(|t| t.key.as_str()).collect();
    for k in ["publish", "publish_batch", "worker_c1", "worker_cN"] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    for t in &report.throughput {
        assert!(t.rate > 0.0 && t.seconds > 0.0, "{t:?}");
        if let Some(r) = t.ratio {
            assert!(r > 0.0, "{t:?}");
        }
    }
    if let Some(reference) = &report.reference {
        assert!(reference.rate > 0.0);
        assert!(report.throughput.iter().all(|t| t.ratio.is_some()));
    }
    if let Some(saturation) = &report.saturation_reference {
        assert!(saturation.rate > 0.0);
        assert!(report
            .throughput
            .iter()
            .all(|t| t.ratio_saturation.is_some()));
    }
    assert_eq!(report.latency.len(), 2, "{:?}", report.latency);
    for l in &report.latency {
        assert!(l.count > 0, "{l:?}");
        assert!(l.p50_ms > 0.0, "{l:?}");
        assert!(
            l.p50_ms <= l.p99_ms && l.p99_ms <= l.p999_ms && l.p999_ms <= l.max_ms,
            "{l:?}"
        );
        assert!(l.achieved_rate > 0.0, "{l:?}");
    }
    // Every target has a row; the CLI phases did not run without a binary.
    assert_eq!(report.targets.len(), 16);
    assert!(report.notes.iter().any(|n| n.contains("streambus publish")));
    assert!(report.notes.iter().any(|n| n.contains("streambus consume")));
    let skipped = report
        .notes
        .iter()
        .filter(|n| n.starts_with("peer "))
        .count();
    assert_eq!(skipped, 3, "{:#?}", report.notes);

    let table = report.table();
    assert!(table.contains("publish → handler at 2000 msg/s"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(json["throughput"].as_array().unwrap().len() >= 4);

    // Nothing left behind on a server that is not the bench's own.
    assert_eq!(server.cli(&["DBSIZE"]), "0");
}

/// The Python peers' rows, with a Python that has them: a venv of this test's
/// own under the target directory, filled from PyPI once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_peers_are_measured_when_importable() {
    let python = tokio::task::spawn_blocking(peers_python).await.unwrap();
    let server = RedisServer::start();
    let mut opts = tiny(&server);
    opts.python_bin = python;
    let report = streambus_bench::run(opts, |_| {}).await.unwrap();
    for key in [
        "peer_redis_py_publish",
        "peer_walrus_consume",
        "peer_redis_streams_consume",
    ] {
        let row = report.throughput.iter().find(|t| t.key == key);
        assert!(
            row.is_some_and(|t| t.rate > 0.0 && t.messages > 0),
            "{key}: {row:?}; notes: {:#?}",
            report.notes
        );
    }
    assert!(
        !report.notes.iter().any(|n| n.starts_with("peer ")),
        "{:#?}",
        report.notes
    );
    // The five comparisons with the peers whose other side ran (the CLI rows
    // need the binary): the worker and publish_batch against walrus and redis-py.
    let against: Vec<&str> = report
        .targets
        .iter()
        .map(|t| t.what.as_str())
        .filter(|w| w.contains("walrus") || w.contains("redis-py") || w.contains("redis-streams"))
        .collect();
    assert!(
        against.contains(&"worker read+ack, concurrency 1 / walrus read + ack")
            && against.contains(&"publish_batch (library) / redis-py pipeline"),
        "{against:?}"
    );
    assert_eq!(server.cli(&["DBSIZE"]), "0");
}

/// A Python that imports redis, walrus and redis-streams' consumer.
fn peers_python() -> String {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-peers-venv");
    let python = venv.join("bin/python");
    let has_them = || {
        std::process::Command::new(&python)
            .args(["-c", "import redis, walrus, redis_streams.consumer"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_them() {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        // redis-streams 0.3.0 imports typing_extensions without declaring it.
        let installed = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args([
                "redis",
                "walrus",
                "redis-streams==0.3.0",
                "typing_extensions",
            ])
            .status()
            .expect("pip install");
        assert!(installed.success(), "pip install of the peers failed");
        assert!(has_them(), "the peers do not import after pip install");
    }
    python.to_string_lossy().into_owned()
}
