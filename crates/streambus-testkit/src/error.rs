//! [`TestkitError`]: why a server could not be started.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a server could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestkitError {
    /// The `redis-server` binary could not be found.
    BinaryNotFound {
        /// The binary that was looked for.
        binary: String,
        /// How to install it or point to it.
        hint: String,
    },
    /// Creating the temp dir, writing the configuration or spawning failed.
    Io(io::Error),
    /// The server did not answer `PING` within [`ServerOptions::startup_timeout`](crate::ServerOptions::startup_timeout).
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// The tail of the server log (and of its stdout/stderr).
        log: String,
        /// The command line that was run.
        command: String,
        /// The last reply (or connection error) seen while polling.
        last_reply: String,
    },
    /// The server process exited while starting.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The tail of the server log (and of its stdout/stderr).
        log: String,
        /// The command line that was run.
        command: String,
    },
    /// Generating the TLS test certificates failed.
    Certificates(String),
    /// The options cannot work, e.g. a cluster of fewer than 3 masters.
    InvalidOptions(String),
    /// `redis-cli --cluster create` failed or timed out.
    ClusterCreate {
        /// The command line that was run.
        command: String,
        /// What it printed (stdout and stderr), or why it could not run.
        output: String,
    },
    /// A [`RedisCluster`](crate::RedisCluster) did not reach the awaited state in time.
    ClusterNotReady {
        /// What was awaited.
        awaited: String,
        /// How long we waited.
        waited: Duration,
        /// What each node reported last.
        state: String,
    },
}

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestkitError::BinaryNotFound { binary, hint } => {
                write!(f, "{binary} not found ({hint})")
            }
            TestkitError::Io(e) => write!(f, "redis test server: I/O error: {e}"),
            TestkitError::NotReady {
                waited,
                log,
                command,
                last_reply,
            } => write!(
                f,
                "redis-server was not ready after {waited:?} (last reply: {last_reply})\n\
                 command: {command}\n--- server log (tail) ---\n{log}"
            ),
            TestkitError::Exited {
                status,
                log,
                command,
            } => write!(
                f,
                "redis-server exited while starting ({status})\n\
                 command: {command}\n--- server log (tail) ---\n{log}"
            ),
            TestkitError::Certificates(msg) => {
                write!(f, "cannot generate TLS test certificates: {msg}")
            }
            TestkitError::InvalidOptions(msg) => write!(f, "invalid testkit options: {msg}"),
            TestkitError::ClusterCreate { command, output } => write!(
                f,
                "creating the test cluster failed\ncommand: {command}\n--- output ---\n{output}"
            ),
            TestkitError::ClusterNotReady {
                awaited,
                waited,
                state,
            } => write!(
                f,
                "test cluster: not {awaited} after {waited:?}\n--- nodes ---\n{state}"
            ),
        }
    }
}

impl std::error::Error for TestkitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TestkitError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for TestkitError {
    fn from(e: io::Error) -> Self {
        TestkitError::Io(e)
    }
}
