//! A tiny bench against a private server: the report must be complete and sane.
//! Speed itself is never asserted here (STYLE.md): only that every phase ran.

use std::time::Duration;

use streambus_bench::BenchOptions;
use streambus_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_reports_sane_figures() {
    let server = RedisServer::start();
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

    let table = report.table();
    assert!(table.contains("publish → handler at 2000 msg/s"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(json["throughput"].as_array().unwrap().len() >= 4);

    // Nothing left behind on a server that is not the bench's own.
    assert_eq!(server.cli(&["DBSIZE"]), "0");
}
