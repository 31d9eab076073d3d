//! Kills, at process exit, every server still running.
//!
//! A server kept in a `static` (one per test binary, shared by its tests) is
//! never dropped: the test harness ends the process with `exit`, which runs
//! `atexit` handlers but no destructors. Without this, each run of such a test
//! binary would leave a `redis-server` behind.

use std::sync::{Mutex, Once};

static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

extern "C" fn kill_all() {
    let pids = LIVE.lock().map(|v| v.clone()).unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) with a pid this process spawned and a signal
            // number; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

pub(super) fn register(pid: u32) {
    INSTALL.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` that touches only a
        // static; atexit(3) has no other precondition.
        unsafe {
            libc::atexit(kill_all);
        }
    });
    if let Ok(mut live) = LIVE.lock() {
        live.push(pid);
    }
}

pub(super) fn unregister(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|&p| p != pid);
    }
}
