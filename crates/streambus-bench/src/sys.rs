//! What the report says about the machine, and memory figures from `/proc`.

use std::time::Duration;

/// The machine a report was made on.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
}

pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: kib_field(&meminfo, "MemTotal:").unwrap_or(0) * 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| std::env::consts::OS.to_owned()),
    }
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak resident memory (VmHWM) of a process, in bytes; `None` off Linux.
pub(crate) fn peak_rss(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    kib_field(&std::fs::read_to_string(path).ok()?, "VmHWM:").map(|k| k * 1024)
}

/// Resets this process's peak resident memory to its current one, so that the
/// next [`peak_rss`] covers only what ran since (Linux: `clear_refs` 5).
/// Returns false where that is not possible.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Human-readable byte count (MiB with one decimal).
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The current UTC time as ISO-8601.
pub(crate) fn now_utc() -> String {
    streambus::envelope::format_timestamp(std::time::SystemTime::now())
}

/// Seconds as a float, for the report.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
