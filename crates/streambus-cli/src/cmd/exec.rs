//! `streambus consume --exec CMD`: a [`Worker`] that runs a shell command per entry.
//!
//! Guarantee: at-least-once, the worker's. An entry is acknowledged only after its
//! command exited 0, and dead-lettered (atomically, with a reason) only after the
//! command said the entry is bad (exit 65) or failed `--max-deliveries` times.
//! Anything else (another exit code, a signal, a shell that cannot start, a
//! shutdown while it runs) leaves the entry pending, to be run again. So a command
//! may run more than once for one entry: make it idempotent
//! (`STREAMBUS_ENTRY_ID` names the entry).
//!
//! The command gets the entry's JSON line (as `consume` prints it) on stdin. Its
//! stdout is ours; its stderr is passed through to ours as it comes, and its last
//! line is kept as the reason when the entry fails.
//!
//! Each command runs in a process group of its own: a Ctrl-C at the terminal
//! reaches streambus only, which then lets running commands finish (within
//! `--grace`); when the grace runs out, the whole group is killed, so that
//! nothing the command started keeps working on an entry left pending.

use std::pin::pin;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use streambus::default_consumer_name;
use streambus::partition::Partitions;
use streambus::{Client, Delivery, Handler, Outcome, WorkerOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::runner::{self, Logical, StopAfter};
use super::settings::FileGroup;
use crate::cli::ConsumeArgs;
use crate::shutdown;

/// Commands running at the same time, by default: each is a process, so more
/// is something to ask for.
const CONCURRENCY: usize = 1;

/// sysexits.h: the input data was incorrect. The entry is dead-lettered at once.
const EX_DATAERR: i32 = 65;
/// sysexits.h: a temporary failure. The entry is retried (as for any other code).
const EX_TEMPFAIL: i32 = 75;

/// After the command exited, how long its stderr may stay open (held by something
/// it started in the background) before we stop reading it.
const STDERR_DRAIN: Duration = Duration::from_millis(200);
/// The longest stderr line kept for a reason, in bytes.
const MAX_REASON_LINE: usize = 300;

pub async fn run(
    client: &Client,
    args: ConsumeArgs,
    command: String,
    file: FileGroup<'_>,
    partitions: Option<Partitions>,
) -> Result<()> {
    let options = runner::options(&args, file, CONCURRENCY, 0);
    if args.count == Some(0) {
        return Ok(());
    }
    let consumer = args.consumer.clone().unwrap_or_else(default_consumer_name);
    let (stop, _signals) = shutdown::on_signal();
    let handler = Exec {
        argv: plain_words(&command),
        command,
        group: args.group.clone(),
        consumer: consumer.clone(),
        logical: Logical::new(&args.stream, partitions.as_ref()),
        stop_after: StopAfter::new(args.count, &stop, options.max_deliveries),
    };
    tracing::info!(stream = %args.stream, group = %args.group, %consumer, "running a command per entry");
    let options = WorkerOptions {
        consumer_name: Some(consumer),
        ..options
    };
    let report =
        runner::run_worker(client, &args, file, partitions, options, handler, stop).await?;
    eprintln!("consumed: {}", runner::summary(&report));
    Ok(())
}

/// The handler: runs the command for one delivery.
struct Exec {
    command: String,
    /// The command's words when it needs no shell: it is then started
    /// directly, which saves a process (and the shell's start) per entry.
    argv: Option<Vec<String>>,
    group: String,
    consumer: String,
    /// A partitioned stream: its name and each partition key's index.
    logical: Option<Logical>,
    /// With `--count`.
    stop_after: Option<StopAfter>,
}

impl Handler for Exec {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let outcome = self.run_command(&delivery).await;
        if let Some(s) = &self.stop_after {
            s.note(&outcome, delivery.deliveries);
        }
        outcome
    }
}

/// The words of `command` if it is plain words (letters, digits and
/// `_ - . / , : @ + =` between spaces) naming a program (a path, or one found
/// in `PATH`), which `sh -c` would run as they are; `None` when it has anything
/// a shell would interpret (quotes, `$`, `|`, `>`, globs, `~`, a leading
/// `VAR=value`, a builtin such as `exit` or `cd`…).
fn plain_words(command: &str) -> Option<Vec<String>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./,:@+=".contains(c);
    let words: Vec<String> = command
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    let first = words.first()?;
    let ok = words.iter().all(|w| w.chars().all(plain))
        // `A=1 cmd` sets a variable; `=` elsewhere is an argument.
        && !first.contains('=')
        && is_program(first);
    ok.then_some(words)
}

/// Whether `name` is an executable file: a path, or a name found in `PATH`.
fn is_program(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return executable(std::path::Path::new(name));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(name))))
}

impl Exec {
    /// The command as it is started, for messages.
    fn shown(&self) -> String {
        match &self.argv {
            Some(argv) => argv.join(" "),
            None => format!("sh -c {:?}", self.command),
        }
    }

    async fn run_command(&self, d: &Delivery) -> Outcome {
        let entry = &d.entry;
        let mut command = match &self.argv {
            Some(argv) => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(&self.command);
                c
            }
        };
        #[cfg(unix)]
        command.process_group(0);
        // A partitioned stream: the logical stream's name, the partition's
        // index in the environment and the input line.
        let partition = self.logical.as_ref().and_then(|l| l.of(entry));
        if let Some((_, i)) = partition {
            command
                .env("STREAMBUS_PARTITION", i.to_string())
                .env("STREAMBUS_PARTITION_KEY", &*entry.stream);
        }
        let mut child = match command
            .env(
                "STREAMBUS_STREAM",
                partition.map_or(&*entry.stream, |(s, _)| s),
            )
            .env("STREAMBUS_ENTRY_ID", entry.id.to_string())
            .env("STREAMBUS_DELIVERIES", d.deliveries.to_string())
            .env("STREAMBUS_GROUP", &self.group)
            .env("STREAMBUS_CONSUMER", &self.consumer)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            // Dropped when the shutdown grace runs out: the command must not
            // outlive the decision to leave its entry pending. (`group` below
            // also gets what the shell started.)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return Outcome::retry(format!("cannot run {}: {e}", self.shown())),
        };
        let mut group = KillGroupOnDrop(child.id());
        let input = runner::input_line(entry, partition, None);
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command may exit without reading its input: that is its choice,
                // and its exit status is what counts.
                let _ = stdin.write_all(input.as_bytes()).await;
                // Dropping stdin closes it: the command sees the end of its input.
            }
        };
        let mut last = LastLine::default();
        let status = {
            // Input, exit and stderr at the same time: a command may exit without
            // reading, or fill its stderr pipe before it exits.
            let mut exit = pin!(async { tokio::join!(child.wait(), feed).0 });
            let mut tee = pin!(tee_stderr(stderr, &mut last));
            tokio::select! {
                status = &mut exit => {
                    // stderr normally ends with the command; something it left
                    // running in the background may keep it open.
                    let _ = tokio::time::timeout(STDERR_DRAIN, &mut tee).await;
                    status
                }
                () = &mut tee => exit.await,
            }
        };
        // The shell has exited and been reaped: what it left running in the
        // background was meant to keep running.
        group.0 = None;
        match status {
            Ok(status) => {
                #[cfg(unix)]
                let signal = std::os::unix::process::ExitStatusExt::signal(&status);
                #[cfg(not(unix))]
                let signal = None;
                outcome(status.code(), signal, last.get().as_deref())
            }
            Err(e) => Outcome::retry(format!("cannot wait for the command: {e}")),
        }
    }
}

/// Kills the process group of a command (`process_group(0)`: its id is the
/// shell's pid) unless the shell was waited for.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.and_then(|id| libc::pid_t::try_from(id).ok()) {
            // SAFETY: kill(2) takes no pointers. The shell has not been reaped
            // (the guard is disarmed once it was), so its pid, which is the group
            // id, cannot have been reused. A failure (the group is already gone)
            // leaves nothing to do.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// What an exit status means for the entry. `last` is the command's last line
/// of stderr, appended to the reason.
fn outcome(code: Option<i32>, signal: Option<i32>, last: Option<&str>) -> Outcome {
    let reason = |what: String| match last {
        Some(line) => format!("{what}: {line}"),
        None => what,
    };
    match (code, signal) {
        (Some(0), _) => Outcome::Ack,
        (Some(EX_DATAERR), _) => {
            Outcome::dead_letter(reason(format!("command exited {EX_DATAERR} (EX_DATAERR)")))
        }
        (Some(EX_TEMPFAIL), _) => Outcome::retry(reason(format!(
            "command exited {EX_TEMPFAIL} (EX_TEMPFAIL)"
        ))),
        (Some(code), _) => Outcome::retry(reason(format!("command exited {code}"))),
        (None, Some(signal)) => {
            Outcome::retry(reason(format!("command killed by signal {signal}")))
        }
        (None, None) => Outcome::retry(reason("command ended without an exit code".to_owned())),
    }
}

/// Copies the command's stderr to ours as it comes, remembering its last line.
async fn tee_stderr(stderr: Option<impl AsyncRead + Unpin>, last: &mut LastLine) {
    let Some(mut stderr) = stderr else { return };
    let mut out = tokio::io::stderr();
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                last.push(&buf[..n]);
                // Our stderr gone is no reason to fail the entry.
                let _ = out.write_all(&buf[..n]).await;
            }
        }
    }
}

/// The last non-blank line of a byte stream fed in pieces, at most
/// [`MAX_REASON_LINE`] bytes of it.
#[derive(Debug, Default)]
struct LastLine {
    /// The line being read (no newline yet).
    current: Vec<u8>,
    /// The last complete non-blank line.
    last: Vec<u8>,
}

impl LastLine {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.extend(&bytes[..i]);
            if is_blank(&self.current) {
                self.current.clear();
            } else {
                self.last = std::mem::take(&mut self.current);
            }
            bytes = &bytes[i + 1..];
        }
        self.extend(bytes);
    }

    fn extend(&mut self, bytes: &[u8]) {
        let room = MAX_REASON_LINE.saturating_sub(self.current.len());
        self.current
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The last line, an unfinished one included; `None` if there was none.
    fn get(&self) -> Option<String> {
        let line = if is_blank(&self.current) {
            &self.last
        } else {
            &self.current
        };
        let text = String::from_utf8_lossy(line).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_run_without_a_shell() {
        let words = |c: &str| plain_words(c).map(|w| w.join("|"));
        assert_eq!(words("true").as_deref(), Some("true"));
        assert_eq!(
            words("  cat --number=1  x ").as_deref(),
            Some("cat|--number=1|x")
        );
        assert_eq!(words("/bin/sh -e x.sh").as_deref(), Some("/bin/sh|-e|x.sh"));
        for shell in [
            "",
            "exit 65",
            "cd /tmp",
            "no-such-program-here x",
            "./not-here",
            "cat > out",
            "a | b",
            "echo $HOME",
            "echo 'x'",
            "ls *.json",
            "cd ~",
            "A=1 cmd",
            "a && b",
            "a; b",
            "echo \"x\"",
            "a\tb",
            "f(x)",
        ] {
            assert_eq!(words(shell), None, "{shell:?}");
        }
    }

    #[test]
    fn exit_codes_decide_the_outcome() {
        assert_eq!(outcome(Some(0), None, Some("noise")), Outcome::Ack);
        assert_eq!(
            outcome(Some(65), None, Some("bad field x")),
            Outcome::dead_letter("command exited 65 (EX_DATAERR): bad field x")
        );
        assert_eq!(
            outcome(Some(65), None, None),
            Outcome::dead_letter("command exited 65 (EX_DATAERR)")
        );
        assert_eq!(
            outcome(Some(75), None, None),
            Outcome::retry("command exited 75 (EX_TEMPFAIL)")
        );
        assert_eq!(
            outcome(Some(1), None, None),
            Outcome::retry("command exited 1")
        );
        assert_eq!(
            outcome(None, Some(9), None),
            Outcome::retry("command killed by signal 9")
        );
    }

    #[test]
    fn last_line_across_pieces() {
        let mut l = LastLine::default();
        assert_eq!(l.get(), None);
        l.push(b"first\nsec");
        assert_eq!(l.get().as_deref(), Some("sec"));
        l.push(b"ond\n\n  \n");
        assert_eq!(l.get().as_deref(), Some("second"));
        l.push(&[b'x'; 1000]);
        assert_eq!(l.get().map(|s| s.len()), Some(MAX_REASON_LINE));
        l.push(b"\nlast\r\n");
        assert_eq!(l.get().as_deref(), Some("last"));
    }
}
