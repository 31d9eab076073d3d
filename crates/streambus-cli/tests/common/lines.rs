//! A running command's output line by line, as it comes, each line awaited
//! with a deadline; and a child that does not outlive its test.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

use super::STEP;

/// The lines of `r` as they come, read on a thread until it ends (or the
/// receiver is dropped).
pub fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines of a running child's stdout, each within [`STEP`].
pub struct LineReader {
    pub rx: mpsc::Receiver<String>,
}

impl LineReader {
    pub fn new(stdout: impl Read + Send + 'static) -> Self {
        LineReader {
            rx: lines_of(stdout),
        }
    }

    /// The next line, as JSON.
    #[track_caller]
    pub fn next(&self) -> Value {
        let line = self
            .rx
            .recv_timeout(STEP)
            .expect("no line from streambus within the deadline");
        serde_json::from_str(&line).unwrap()
    }
}

/// Kills a child that is still running when the test ends (also on panic).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Gone already, or killed now: either way not left behind.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stdin empty and stdout and stderr piped.
pub fn spawn(mut cmd: Command) -> KillOnDrop {
    KillOnDrop(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn streambus"),
    )
}

/// Starts `cmd` (stdout piped) and reads its stdout as it comes.
pub fn spawn_reading(cmd: Command) -> (KillOnDrop, LineReader) {
    let mut child = spawn(cmd);
    let lines = LineReader::new(child.0.stdout.take().unwrap());
    (child, lines)
}
