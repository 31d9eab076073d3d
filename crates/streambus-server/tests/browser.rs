//! The dashboard in a real headless Chromium, driven over the DevTools protocol
//! (no npm): live events appear as text (hostile payloads run nothing), the
//! consumer table fills in, and a screenshot is saved to
//! `target/dashboard.png` for a person to look at.
//!
//! Skipped (with a message) when `/usr/bin/chromium` is missing, unless `CI` is
//! set: CI installs it (`.ci/run`) and must run this test.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use streambus::partition::Partitions;
use streambus::Message as BusMessage;
use streambus_server::ServerConfig;
use streambus_testkit::wait::eventually;
use streambus_testkit::RedisServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::faults::{connect_options, proxy};
use common::{
    config, dead_letter, deliver, producer, server, state_with, stream, DeadLetter, LeasedMember,
    RunningServer, TOKEN,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const LIMIT: Duration = Duration::from_secs(20);
/// The page's connection status. Null-safe: the navigation may not have
/// replaced about:blank yet.
const CONN: &str = "(document.getElementById('conn') || {}).textContent || ''";

/// A headless Chromium, killed on drop, with its own profile directory.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws_url: String,
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1440,1500",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut log = Vec::new();
        let ws_url = tokio::time::timeout(LIMIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
                log.push(line);
            }
            panic!("chromium exited:\n{}", log.join("\n"));
        })
        .await
        .expect("chromium prints its DevTools address");
        // Keep draining stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Browser {
            child,
            _profile: profile,
            ws_url,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // kill_on_drop also applies; this makes it immediate.
        let _ = self.child.start_kill();
    }
}

/// A DevTools protocol session on one page target.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    /// Events seen so far, by method name.
    events: HashMap<String, Vec<Value>>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Cdp {
            ws,
            next_id: 0,
            session: None,
            events: HashMap::new(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let work = async {
            loop {
                let Some(Ok(Message::Text(t))) = self.ws.next().await else {
                    continue;
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        panic!("{method} failed: {e}");
                    }
                    return v["result"].clone();
                }
                if let Some(m) = v["method"].as_str() {
                    self.events.entry(m.to_owned()).or_default().push(v.clone());
                }
            }
        };
        tokio::time::timeout(LIMIT, work)
            .await
            .unwrap_or_else(|_| panic!("{method} timed out"))
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }
}

/// Decodes standard base64 (the screenshot), without a crate for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in data.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let take = data.len().saturating_sub(1);
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

/// The workspace's `target/` directory.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Whether the `test` browser test must be skipped: no [`CHROMIUM`], and not
/// on CI (which must run it).
fn chromium_missing(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but {CHROMIUM} is missing: .ci/run installs it"
    );
    eprintln!("SKIPPED: {CHROMIUM} is not installed (apt-get install chromium); the {test} browser test did not run");
    true
}

/// Opens `url` in a new page of `browser`, `height` pixels high, with a
/// DevTools session on it.
async fn open_page(browser: &Browser, url: &str, height: u32) -> Cdp {
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let target = cdp
        .call("Target.createTarget", json!({ "url": "about:blank" }))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1440, "height": height, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    cdp.call("Page.navigate", json!({ "url": url })).await;
    cdp
}

/// Polls the page's value of `expr` until `accept` takes it, with the
/// testkit's deadline loop ([`eventually`], up to [`LIMIT`]): `Ok` with that
/// value, or `Err` with the last value seen, for the caller's message.
///
/// `eventually` is sync: it blocks this thread (`block_in_place`, so a
/// multi-thread runtime), and each check drives one CDP call to its end; the
/// server's tasks go on running on the runtime's workers.
async fn poll_page(
    cdp: &mut Cdp,
    expr: &str,
    accept: impl Fn(&Value) -> bool,
) -> Result<Value, Value> {
    let rt = tokio::runtime::Handle::current();
    let mut last = Value::Null;
    let ok = tokio::task::block_in_place(|| {
        eventually(LIMIT, || {
            last = rt.block_on(cdp.eval(expr));
            accept(&last)
        })
    });
    if ok {
        Ok(last)
    } else {
        Err(last)
    }
}

/// Polls the page's value of `expr` until it equals `want`.
async fn wait_for_value(cdp: &mut Cdp, expr: &str, want: Value, what: &str) {
    if let Err(v) = poll_page(cdp, expr, |v| *v == want).await {
        panic!("{what}: {expr} is {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_events_as_text_in_chromium() {
    if chromium_missing("dashboard") {
        return;
    }
    let redis = RedisServer::start();
    let alerts = stream("alerts");
    let audit = stream("audit");
    let p = producer(&redis).await;
    // A group with a consumer holding work, and a dead letter, so every table has rows.
    p.publish(&alerts, BusMessage::json(&json!({"boot": true})).unwrap())
        .await
        .unwrap();
    p.publish(&audit, BusMessage::json(&json!({"boot": true})).unwrap())
        .await
        .unwrap();
    redis.cli(&["XGROUP", "CREATE", &alerts, "alert-processor", "0"]);
    deliver(&redis, &alerts, "alert-processor", "worker-1", 1);
    redis.cli(&["XGROUP", "CREATE", &audit, "audit-logger", "$"]);
    deliver(&redis, &audit, "audit-logger", "logger-1", 1);
    let malformed = DeadLetter {
        data: "{\"msg\":\"<b>malformed</b>\"}",
        reason: "handler failed: invalid severity",
        group: "alert-processor",
        consumer: "worker-1",
    };
    dead_letter(&redis, &alerts, &malformed);

    let srv = server(&redis, config(&[&alerts, &audit])).await;
    let browser = Browser::launch().await;
    let url = format!("http://{}/#token={TOKEN}", srv.addr);
    // Tall, so that the screenshot shows every table.
    let mut cdp = open_page(&browser, &url, 1500).await;

    // The page takes the token from the fragment, then goes live.
    if let Err(s) = poll_page(&mut cdp, CONN, |s| s == "live").await {
        panic!("dashboard never went live: {s}");
    }
    assert_eq!(
        cdp.eval("location.hash").await,
        "",
        "the token left the address bar"
    );

    // Hostile payloads, and some ordinary traffic spread over a few seconds so
    // the charts have something to draw.
    let hostile = json!({
        "msg": "<img src=x onerror=alert(1)>",
        "s": "<script>window.__pwned=1</script>",
    });
    p.publish(
        &alerts,
        BusMessage::json(&hostile).unwrap().with_type("alert"),
    )
    .await
    .unwrap();
    let severities = ["low", "medium", "high", "critical"];
    for i in 0..40u32 {
        let sev = severities[i as usize % 4];
        p.publish(
            &alerts,
            BusMessage::json(&json!({"severity": sev, "rule": format!("R-{}", 1000 + i * 7), "host": format!("srv-{:02}", i % 9)}))
                .unwrap()
                .with_type("alert"),
        )
        .await
        .unwrap();
        if i % 3 == 0 {
            p.publish(
                &audit,
                BusMessage::json(&json!({"actor": "analyst-2", "action": "ack", "alert": i}))
                    .unwrap()
                    .with_type("audit"),
            )
            .await
            .unwrap();
        }
        // Pacing for the charts, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    // The text of each table, in one evaluation.
    let tables = "(function(){ const t = id => document.getElementById(id).textContent; \
        return { feed: t('feed'), consumers: t('consumers'), groups: t('groups'), dlq: t('dlq') }; })()";
    let has =
        |v: &Value, table: &str, text: &str| v[table].as_str().unwrap_or_default().contains(text);
    let shown = poll_page(&mut cdp, tables, |v| {
        has(v, "feed", "<img src=x onerror=alert(1)>")
            && has(v, "feed", "<script>window.__pwned=1</script>")
            && has(v, "feed", "R-1273")
            && has(v, "consumers", "worker-1")
            && has(v, "groups", "OUT")
            && has(v, "dlq", "invalid severity")
    })
    .await;
    if let Err(v) = shown {
        let feed = v["feed"].as_str().unwrap_or_default();
        panic!(
            "dashboard did not show everything; feed: {feed:.300}, consumers: {}, groups: {}, dlq: {}",
            v["consumers"], v["groups"], v["dlq"]
        );
    }
    // Shown as text, ran nothing.
    assert_eq!(cdp.eval("document.querySelectorAll('img').length").await, 0);
    assert_eq!(
        cdp.eval("document.querySelectorAll('#feed script').length")
            .await,
        0
    );
    assert_eq!(cdp.eval("typeof window.__pwned").await, "undefined");
    assert_eq!(
        cdp.eval("document.getElementById('consumers').querySelectorAll('.badge').length > 0")
            .await,
        true
    );
    let shot = cdp
        .call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": false }),
        )
        .await;
    assert!(
        !cdp.events.contains_key("Page.javascriptDialogOpening"),
        "a dialog opened: {:?}",
        cdp.events.get("Page.javascriptDialogOpening")
    );
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = target_dir().join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
}

/// While Redis is unreachable the page shows a "Redis unreachable" banner
/// (the service's `/healthz`, polled every 2 s), and removes it on recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_banner_while_redis_is_unreachable() {
    if chromium_missing("banner") {
        return;
    }
    let redis = RedisServer::start();
    let proxy = proxy(&redis).await;
    let s = stream("banner");
    let client = streambus::Client::open_with(&proxy.url(), connect_options()).unwrap();
    let srv = RunningServer::start(state_with(client, config(&[&s])).await).await;
    let browser = Browser::launch().await;
    let url = format!("http://{}/#token={TOKEN}", srv.addr);
    let mut cdp = open_page(&browser, &url, 900).await;
    wait_for_value(&mut cdp, CONN, json!("live"), "the page goes live").await;
    let banner_shown = "(function(){ const b = document.getElementById('redis-banner'); \
        return !!b && !b.hidden && b.getBoundingClientRect().height > 0 && b.textContent; })()";
    assert_eq!(
        cdp.eval(banner_shown).await,
        false,
        "no banner while Redis is up"
    );

    // Redis unreachable: open connections cut, new ones refused.
    proxy.refuse();
    proxy.reset_all();
    let start = Instant::now();
    match poll_page(&mut cdp, banner_shown, Value::is_string).await {
        Ok(text) => assert!(
            text.as_str()
                .unwrap()
                .starts_with("Redis unreachable since "),
            "{text}"
        ),
        Err(v) => panic!("no banner: {v}"),
    }
    eprintln!(
        "banner shown {:?} after Redis became unreachable",
        start.elapsed()
    );
    // Text, not markup: the banner has no child elements.
    assert_eq!(
        cdp.eval("document.getElementById('redis-banner').children.length")
            .await,
        0
    );
    let shot = cdp
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let path = target_dir().join("dashboard-redis-unreachable.png");
    std::fs::write(&path, base64_decode(shot["data"].as_str().unwrap())).unwrap();
    eprintln!("screenshot: {}", path.display());

    proxy.pass_through();
    let healed = Instant::now();
    wait_for_value(&mut cdp, banner_shown, json!(false), "the banner goes away").await;
    eprintln!(
        "banner removed {:?} after Redis became reachable",
        healed.elapsed()
    );
}

/// A partitioned stream with leased members: the stream's card shows the
/// live members, the partitions without an owner (a red badge above 0) and
/// each partition's owner; member names are shown as text. When every
/// member has crashed the badge turns red until a new member takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_partition_owners() {
    if chromium_missing("owners") {
        return;
    }
    let redis = RedisServer::start();
    let s = stream("owned");
    let partitions = Partitions::new(&s, 2).unwrap();
    let client = streambus::Client::open(&redis.url()).unwrap();
    let cfg = ServerConfig {
        partitions: [(s.clone(), 2)].into(),
        ..config(&[&s])
    };
    let srv = RunningServer::start(state_with(client.clone(), cfg).await).await;
    // Consumer names are whatever a member chose: this one is markup.
    let hostile = "<img src=x onerror=window.__owned=1>";
    let a = LeasedMember::start(&client, &partitions, "lg", hostile);
    let b = LeasedMember::start(&client, &partitions, "lg", "member-b");
    let browser = Browser::launch().await;
    let url = format!("http://{}/#token={TOKEN}", srv.addr);
    let mut cdp = open_page(&browser, &url, 1000).await;
    let view = "(function(){ const o = document.querySelector('.owners'); \
        const b = document.querySelector('.owners-unowned'); \
        return { text: o ? o.textContent : '', badge: b ? b.className + ' ' + b.textContent : '', \
          rows: document.querySelectorAll('.owners-table tr.unowned').length }; })()";
    let owned = poll_page(&mut cdp, view, |v| {
        let text = v["text"].as_str().unwrap_or_default();
        text.contains("2 live members")
            && text.contains(hostile)
            && text.contains("member-b")
            && v["badge"] == "badge owners-unowned badge-ok 0 unowned"
    })
    .await;
    if let Err(v) = owned {
        panic!("the owners are not shown: {v}");
    }
    assert_eq!(cdp.eval("document.querySelectorAll('img').length").await, 0);
    assert_eq!(cdp.eval("typeof window.__owned").await, "undefined");

    // Every member crashes: both partitions without an owner, in red.
    a.crash();
    b.crash();
    let unowned = poll_page(&mut cdp, view, |v| {
        v["badge"] == "badge owners-unowned badge-bad 2 unowned" && v["rows"] == 2
    })
    .await;
    if let Err(v) = unowned {
        panic!("the unowned partitions are not shown: {v}");
    }
    let shot = cdp
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let path = target_dir().join("dashboard-owners.png");
    std::fs::write(&path, base64_decode(shot["data"].as_str().unwrap())).unwrap();
    eprintln!("screenshot: {}", path.display());

    // A new member takes both over.
    let c = LeasedMember::start(&client, &partitions, "lg", "member-c");
    let back = poll_page(&mut cdp, view, |v| {
        v["badge"] == "badge owners-unowned badge-ok 0 unowned"
            && v["rows"] == 0
            && v["text"].as_str().unwrap_or_default().contains("member-c")
    })
    .await;
    if let Err(v) = back {
        panic!("the new owner is not shown: {v}");
    }
    c.stop().await;
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
