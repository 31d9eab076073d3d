//! Shared by the test kit's own tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

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
