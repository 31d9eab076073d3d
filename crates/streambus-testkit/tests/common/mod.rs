//! Shared by the test kit's own tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// Whether `cond` holds within `timeout`, polled
/// ([`streambus_testkit::wait::eventually`]).
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    streambus_testkit::wait::eventually(timeout, cond)
}

/// Whether a process with this pid exists (zombies included).
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || Path::new(&format!("/proc/{pid}")).exists()
}

/// A command's stdout and stderr together.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
