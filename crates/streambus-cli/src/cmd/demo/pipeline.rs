//! The demo's SOC pipeline: what the sensors publish, what each stage does,
//! and the counts the final report is computed from.
//!
//! ```text
//! sensor ──> aurora:alerts ──[alert-processor ×3]──> aurora:agent:tasks ──[orchestrator]──> aurora:agent:results ──[api-persistence]
//!                                   │  malformed ──> {aurora:alerts}:dlq
//!                                   └──────────────> aurora:audit ──[audit-logger]
//! mqtt-bridge ──> aurora:cps:alerts ──[cps-alert-handler]──> aurora:audit
//! ```
//!
//! Every alert carries a sequence number (`alert_id`), this run's id (`run`)
//! and its publish time, through every stage. The final stages
//! (api-persistence, cps-alert-handler) record the alert ids they saw; with the
//! dead letters read back from Redis at the end, that proves each published
//! alert was either handled or dead-lettered with a reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;
use streambus::{Delivery, Message, Outcome, Producer};

pub const ALERTS: &str = "aurora:alerts";
pub const CPS_ALERTS: &str = "aurora:cps:alerts";
pub const TASKS: &str = "aurora:agent:tasks";
pub const RESULTS: &str = "aurora:agent:results";
pub const AUDIT: &str = "aurora:audit";

/// The stages, in pipeline order (upstream first: the drain check relies on it).
pub const STAGES: [Stage; 5] = [
    Stage {
        stream: ALERTS,
        group: "alert-processor",
    },
    Stage {
        stream: CPS_ALERTS,
        group: "cps-alert-handler",
    },
    Stage {
        stream: TASKS,
        group: "orchestrator",
    },
    Stage {
        stream: RESULTS,
        group: "api-persistence",
    },
    Stage {
        stream: AUDIT,
        group: "audit-logger",
    },
];

#[derive(Clone, Copy, Debug)]
pub struct Stage {
    pub stream: &'static str,
    pub group: &'static str,
}

/// One security alert in this many is malformed (valid JSON, fails the schema).
pub const MALFORMED_EVERY: u64 = 50;
/// Most latency samples kept (later ones replace earlier ones at random).
const MAX_SAMPLES: usize = 100_000;

/// A set of alert sequence numbers (dense: a bit per number).
#[derive(Default)]
pub struct IdSet {
    bits: Vec<u64>,
    len: u64,
}

impl IdSet {
    pub fn insert(&mut self, id: u64) {
        let (word, bit) = ((id / 64) as usize, id % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.len += 1;
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i as u64 * 64 + b)
        })
    }
}

/// What the pipeline counted.
#[derive(Default)]
pub struct Stats {
    pub security_published: AtomicU64,
    pub cps_published: AtomicU64,
    pub malformed_published: AtomicU64,
    pub publish_failures: AtomicU64,
    /// Successful handler runs per stage, in [`STAGES`] order.
    pub processed: [AtomicU64; 5],
    /// Alerts whose XADD succeeded.
    pub published_ids: Mutex<IdSet>,
    /// Alerts seen by a final stage (api-persistence, cps-alert-handler).
    pub final_ids: Mutex<IdSet>,
    /// Alert → result latencies, microseconds.
    pub latencies: Mutex<Vec<u64>>,
    /// The network cut, as wall-clock microseconds (0: not yet), comparable
    /// with the alerts' `published_at_us`.
    pub cut: CutTimes,
}

/// When the workers' network was cut and healed, and when work resumed.
#[derive(Default)]
pub struct CutTimes {
    /// Set right after the workers' connections were black-holed: an alert
    /// published later can only reach a worker on a connection dialled after
    /// the heal.
    pub started_us: AtomicU64,
    /// Set right before the heal, so that the time to resume is never
    /// under-measured.
    pub healed_us: AtomicU64,
    /// When the first alert published after `started_us` was processed by
    /// alert-processor or cps-alert-handler: the proof that the workers read
    /// again.
    pub resumed_us: AtomicU64,
}

impl CutTimes {
    /// An alert published at `published_at_us` was processed; the first one
    /// published during the cut marks the resumption.
    fn processed(&self, published_at_us: u64) {
        let started = self.started_us.load(Ordering::Acquire);
        if started != 0 && published_at_us >= started {
            // Only the first one counts: a failed exchange means it is set.
            let _ =
                self.resumed_us
                    .compare_exchange(0, now_us(), Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// How long after the heal work resumed, once it has.
    pub fn resumed_after(&self) -> Option<Duration> {
        let healed = self.healed_us.load(Ordering::Acquire);
        let resumed = self.resumed_us.load(Ordering::Acquire);
        (healed != 0 && resumed != 0).then(|| Duration::from_micros(resumed.saturating_sub(healed)))
    }

    /// How long the cut lasted, once healed.
    pub fn length(&self) -> Option<Duration> {
        let started = self.started_us.load(Ordering::Acquire);
        let healed = self.healed_us.load(Ordering::Acquire);
        (started != 0 && healed != 0).then(|| Duration::from_micros(healed.saturating_sub(started)))
    }
}

impl Stats {
    pub fn published(&self) -> u64 {
        self.security_published.load(Ordering::Relaxed) + self.cps_published.load(Ordering::Relaxed)
    }

    pub fn processed(&self, stage: usize) -> u64 {
        self.processed[stage].load(Ordering::Relaxed)
    }

    fn done(&self, stage: usize) {
        self.processed[stage].fetch_add(1, Ordering::Relaxed);
    }

    fn record_final(&self, alert_id: u64) {
        lock(&self.final_ids).insert(alert_id);
    }

    fn record_latency(&self, alert_id: u64, micros: u64) {
        let mut l = lock(&self.latencies);
        if l.len() < MAX_SAMPLES {
            l.push(micros);
        } else {
            let i = (mix(alert_id) % MAX_SAMPLES as u64) as usize;
            l[i] = micros;
        }
    }

    /// The `q` quantile (0..=1) of the latencies, if any.
    pub fn latency_quantiles(&self, qs: &[f64]) -> Option<Vec<Duration>> {
        let mut l = lock(&self.latencies).clone();
        if l.is_empty() {
            return None;
        }
        l.sort_unstable();
        Some(
            qs.iter()
                .map(|q| {
                    let i = ((l.len() - 1) as f64 * q).round() as usize;
                    Duration::from_micros(l[i])
                })
                .collect(),
        )
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain inserts: a panic elsewhere cannot leave the data inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every handler shares.
pub struct Ctx {
    /// This run's id, in every payload: counts ignore entries of other runs
    /// (a Redis given with `--redis` may hold earlier demos' entries).
    pub run: String,
    pub stats: Stats,
    /// One producer per stream: each trims by its stream's retention.
    pub producers: HashMap<&'static str, Producer>,
}

impl Ctx {
    fn producer(&self, stream: &str) -> &Producer {
        &self.producers[stream]
    }

    async fn publish(&self, stream: &'static str, m: Message) -> Result<(), Outcome> {
        self.producer(stream)
            .publish(stream, m)
            .await
            .map(|_| ())
            .map_err(|e| Outcome::retry(format!("cannot publish to {stream}: {e}")))
    }

    async fn audit(&self, actor: &str, action: &str, alert_id: u64) -> Result<(), Outcome> {
        let m = message(
            &json!({
                "run": self.run,
                "actor": actor,
                "action": action,
                "alert_id": alert_id,
                "at": now_us(),
            }),
            "audit",
            actor,
        );
        self.publish(AUDIT, m).await
    }
}

// ---- payloads ---------------------------------------------------------------

const RULES: [(&str, u8); 7] = [
    ("ssh-bruteforce", 7),
    ("port-scan", 4),
    ("malware-beacon", 9),
    ("xss-attempt", 6),
    ("sql-injection", 8),
    ("impossible-travel", 5),
    ("privilege-escalation", 9),
];
const HOSTS: [&str; 8] = [
    "web-1",
    "web-2",
    "web-3",
    "db-1",
    "vpn-gw",
    "laptop-17",
    "laptop-42",
    "mail-1",
];
/// Attacker-controlled text, as it arrives in real alerts: the dashboard must
/// show it as text.
const PAYLOADS: [&str; 4] = [
    "<script>alert(document.cookie)</script>",
    "<img src=x onerror=alert(1)>",
    "' OR 1=1 --",
    "../../../../etc/passwd",
];
const DEVICES: [(&str, &str); 5] = [
    ("plc-3", "modbus"),
    ("hvac-12", "bacnet"),
    ("rtu-7", "dnp3"),
    ("camera-5", "mqtt"),
    ("badge-reader-2", "mqtt"),
];

/// A security alert (every [`MALFORMED_EVERY`]th one malformed: no `severity`,
/// no `host`), and whether it is malformed.
pub fn security_alert(run: &str, alert_id: u64) -> (Message, bool) {
    let r = mix(alert_id);
    let (rule, severity) = RULES[(r % RULES.len() as u64) as usize];
    let host = HOSTS[((r >> 8) % HOSTS.len() as u64) as usize];
    let src_ip = format!("203.0.113.{}", (r >> 16) % 254 + 1);
    if alert_id % MALFORMED_EVERY == MALFORMED_EVERY / 2 {
        let value = json!({
            "run": run,
            "alert_id": alert_id,
            "rule": rule,
            "src_ip": src_ip,
            "published_at_us": now_us(),
            "note": "truncated by a buggy normalizer",
        });
        return (message(&value, "security_alert", "unknown"), true);
    }
    let mut value = json!({
        "run": run,
        "alert_id": alert_id,
        "rule": rule,
        "severity": severity,
        "host": host,
        "src_ip": src_ip,
        "dst_port": pick(&[22, 443, 3306, 8080], r >> 24),
        "sensor": "rust-normalizer",
        "published_at_us": now_us(),
    });
    if matches!(rule, "xss-attempt" | "sql-injection") {
        value["payload"] = json!(PAYLOADS[((r >> 32) % PAYLOADS.len() as u64) as usize]);
    }
    (message(&value, "security_alert", host), false)
}

/// A CPS/IoT alert from the MQTT bridge.
pub fn cps_alert(run: &str, alert_id: u64) -> Message {
    let r = mix(alert_id);
    let (device, protocol) = DEVICES[(r % DEVICES.len() as u64) as usize];
    let value = json!({
        "run": run,
        "alert_id": alert_id,
        "device_id": device,
        "protocol": protocol,
        "site": pick(&["plant-a", "plant-b", "hq"], r >> 8),
        "anomaly": pick(&["setpoint out of range", "unexpected firmware write", "new device on bus"], r >> 16),
        "severity": (r >> 24) % 10 + 1,
        "published_at_us": now_us(),
    });
    message(&value, "cps_alert", device)
}

fn message(value: &serde_json::Value, kind: &str, key: &str) -> Message {
    Message::json(value)
        .expect("a JSON value serializes")
        .with_type(kind)
        .with_key(key)
}

// ---- stages -----------------------------------------------------------------

/// What the alert processor requires of a security alert.
#[derive(Deserialize)]
struct SecurityAlert {
    run: String,
    alert_id: u64,
    rule: String,
    severity: u8,
    host: String,
    src_ip: String,
    published_at_us: u64,
}

/// Stage 0, `alert-processor`: validate, enrich (a threat-intel lookup), hand a
/// task to the agents, write an audit record.
pub async fn process_alert(ctx: Arc<Ctx>, d: Delivery) -> Outcome {
    let alert: SecurityAlert = match decode(&d) {
        Ok(a) => a,
        Err(why) => return Outcome::dead_letter(format!("malformed alert: {why}")),
    };
    if alert.run != ctx.run {
        // An earlier demo's entry in a Redis given with --redis: done with it.
        return Outcome::Ack;
    }
    let r = mix(alert.alert_id);
    // The lookup: 20 to 60 ms, so that a killed worker has alerts in flight.
    tokio::time::sleep(Duration::from_millis(20 + r % 41)).await;
    let task = json!({
        "run": alert.run,
        "alert_id": alert.alert_id,
        "task": "triage",
        "rule": alert.rule,
        "severity": alert.severity,
        "host": alert.host,
        "src_ip": alert.src_ip,
        "reputation": pick(&["clean", "suspicious", "known-bad"], r >> 8),
        "geo": pick(&["NL", "US", "BR", "DE", "unknown"], r >> 16),
        "published_at_us": alert.published_at_us,
    });
    let (t, a) = tokio::join!(
        ctx.publish(TASKS, message(&task, "agent_task", &alert.host)),
        ctx.audit("alert-processor", "alert.enriched", alert.alert_id),
    );
    if let Err(o) = t.and(a) {
        return o;
    }
    ctx.stats.done(0);
    ctx.stats.cut.processed(alert.published_at_us);
    Outcome::Ack
}

#[derive(Deserialize)]
struct CpsAlert {
    run: String,
    alert_id: u64,
    device_id: String,
    /// Only for timing the recovery from the network cut.
    #[serde(default)]
    published_at_us: u64,
}

/// Stage 1, `cps-alert-handler`: a final stage.
pub async fn handle_cps(ctx: Arc<Ctx>, d: Delivery) -> Outcome {
    let alert: CpsAlert = match d.decode() {
        Ok(a) => a,
        Err(e) => return Outcome::dead_letter(format!("malformed CPS alert: {e}")),
    };
    if alert.run != ctx.run {
        return Outcome::Ack;
    }
    tokio::time::sleep(Duration::from_millis(5 + mix(alert.alert_id) % 11)).await;
    let action = format!("cps.isolated:{}", alert.device_id);
    if let Err(o) = ctx
        .audit("cps-alert-handler", &action, alert.alert_id)
        .await
    {
        return o;
    }
    ctx.stats.record_final(alert.alert_id);
    ctx.stats.done(1);
    ctx.stats.cut.processed(alert.published_at_us);
    Outcome::Ack
}

#[derive(Deserialize)]
struct Task {
    run: String,
    alert_id: u64,
    severity: u8,
    host: String,
    published_at_us: u64,
}

/// Stage 2, `orchestrator`: an agent analyses the task and publishes a result.
pub async fn orchestrate(ctx: Arc<Ctx>, d: Delivery) -> Outcome {
    let task: Task = match d.decode() {
        Ok(t) => t,
        Err(e) => return Outcome::dead_letter(format!("malformed task: {e}")),
    };
    if task.run != ctx.run {
        return Outcome::Ack;
    }
    let r = mix(task.alert_id ^ 0x5eed);
    tokio::time::sleep(Duration::from_millis(10 + r % 31)).await;
    let verdict = if task.severity >= 8 {
        "escalate"
    } else if r.is_multiple_of(3) {
        "false_positive"
    } else {
        "contain"
    };
    let result = json!({
        "run": task.run,
        "alert_id": task.alert_id,
        "agent": pick(&["triage-agent", "threat-hunter", "forensics-agent"], r),
        "verdict": verdict,
        "confidence": 0.5 + (r % 50) as f64 / 100.0,
        "host": task.host,
        "published_at_us": task.published_at_us,
    });
    if let Err(o) = ctx
        .publish(RESULTS, message(&result, "agent_result", &task.host))
        .await
    {
        return o;
    }
    ctx.stats.done(2);
    Outcome::Ack
}

#[derive(Deserialize)]
struct AgentResult {
    run: String,
    alert_id: u64,
    published_at_us: u64,
}

/// Stage 3, `api-persistence`: the final stage of security alerts; measures
/// alert → result latency.
pub async fn persist(ctx: Arc<Ctx>, d: Delivery) -> Outcome {
    let result: AgentResult = match d.decode() {
        Ok(r) => r,
        Err(e) => return Outcome::dead_letter(format!("malformed result: {e}")),
    };
    if result.run != ctx.run {
        return Outcome::Ack;
    }
    let latency = now_us().saturating_sub(result.published_at_us);
    ctx.stats.record_final(result.alert_id);
    ctx.stats.record_latency(result.alert_id, latency);
    ctx.stats.done(3);
    Outcome::Ack
}

/// Stage 4, `audit-logger`.
pub async fn log_audit(ctx: Arc<Ctx>, d: Delivery) -> Outcome {
    #[derive(Deserialize)]
    struct Audit {
        run: String,
    }
    match d.decode::<Audit>() {
        Ok(a) if a.run == ctx.run => {
            ctx.stats.done(4);
            Outcome::Ack
        }
        Ok(_) => Outcome::Ack,
        Err(e) => Outcome::dead_letter(format!("malformed audit record: {e}")),
    }
}

// ---- helpers ----------------------------------------------------------------

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The envelope's payload as `T`; the error says what is wrong with the
/// payload (`missing field `severity``), not where in the envelope.
fn decode<T: serde::de::DeserializeOwned>(d: &Delivery) -> Result<T, String> {
    let envelope = d
        .envelope()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "not an envelope (no id, timestamp, data)".to_owned())?;
    let value = envelope.data_value().map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// One of `items`, chosen by `r`.
fn pick<T: Copy>(items: &[T], r: u64) -> T {
    items[(r % items.len() as u64) as usize]
}

/// A well-mixed hash of a number (splitmix64): variety without a RNG.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_set_counts_each_id_once() {
        let mut s = IdSet::default();
        for id in [0, 5, 64, 5, 1000] {
            s.insert(id);
        }
        assert_eq!(s.len(), 4);
        assert!(s.contains(1000) && !s.contains(999));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 5, 64, 1000]);
    }

    #[test]
    fn one_in_fifty_alerts_is_malformed() {
        let malformed = (0..1000).filter(|&i| security_alert("r", i).1).count();
        assert_eq!(malformed, 20);
    }
}
