//! Joining the started nodes into a cluster with `redis-cli --cluster create`.

use std::process::Command;
use std::time::Duration;

use super::RedisCluster;
use crate::{output_with_timeout, redis_cli_bin, TestkitError, HOST};

impl RedisCluster {
    /// `redis-cli --cluster create ... --cluster-replicas R --cluster-yes`.
    pub(super) fn create(&self, timeout: Duration) -> Result<(), TestkitError> {
        let mut cmd = Command::new(redis_cli_bin());
        cmd.args(["--cluster", "create"]);
        for port in self.ports() {
            cmd.arg(format!("{HOST}:{port}"));
        }
        cmd.args([
            "--cluster-replicas",
            &self.opts.replicas_per_master.to_string(),
            "--cluster-yes",
        ]);
        let command = format!(
            "{} {}",
            redis_cli_bin(),
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let fail = |output: String| TestkitError::ClusterCreate {
            command: command.clone(),
            output,
        };
        match output_with_timeout(cmd, timeout) {
            Err(e) => Err(fail(format!("cannot run {}: {e}", redis_cli_bin()))),
            Ok(None) => Err(fail(format!("timed out after {timeout:?}"))),
            Ok(Some(out)) => {
                let text = strip_ansi(&format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
                if out.status.success() && !text.contains("[ERR]") {
                    Ok(())
                } else {
                    Err(fail(format!("({}) {text}", out.status)))
                }
            }
        }
    }
}

/// Remove ANSI colour sequences (`ESC [ ... m`) from `redis-cli` output.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours() {
        assert_eq!(strip_ansi("\u{1b}[32;1m[OK] All\u{1b}[0m"), "[OK] All");
    }
}
