//! `streambus`: the command line of the streambus event bus.
//!
//! `main` only builds the runtime and turns the outcome of [`run`] into an exit
//! code: 0 on success (and when stdout is closed early, as in
//! `streambus tail S | head -1`), 1 with one `error: ...` line on stderr
//! otherwise, 2 for usage errors (clap's own code).
//!
//! # Layout
//!
//! - [`cli`]: the arguments (clap derive).
//! - [`cmd`]: one module per command (`consume --exec` in its own, `exec`).
//! - [`output`]: the buffered JSON-line writer over stdout.
//! - [`shutdown`]: Ctrl-C / SIGTERM.
//! - [`topology`]: the topology file (`streambus.toml`) every command takes
//!   its defaults from.
//! - [`embedded`]: a private `redis-server` for `demo` and `serve` when no
//!   Redis is given.

use std::process::ExitCode;

mod cli;
mod cmd;
mod embedded;
mod output;
mod shutdown;
mod topology;

/// mimalloc rather than glibc's malloc. Replies are parsed (allocated) on one
/// runtime thread and the entries dropped on another, and glibc takes the
/// owning arena's lock for each such free; with mimalloc (built without
/// transparent huge pages, which doubled the peak RSS) the bench's worker
/// child handled 300,000 entries in 0.81-0.94 s against 1.00-1.04 s, peak RSS
/// 11.2-11.8 MiB against 9.0-9.5; `farm-bench -n 8` wall ratios: stdin publish
/// 0.93 (peak 20.6 against 14.2 MiB), `consume` to a pipe 0.945.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `streambus bench` re-runs this binary to measure a worker in a process of
    // its own; that child does its job and exits here.
    if let Some(code) = streambus_bench::child::run_if_requested() {
        return code;
    }
    let cli = cli::Cli::parse_or_exit();
    // The demo dead-letters malformed alerts on purpose and kills a worker:
    // the worker's warnings about that would drown its progress display.
    let quiet = matches!(cli.command, cli::Command::Demo(_)).then_some("streambus::worker=error");
    init_tracing(cli.verbose, quiet);
    // Two worker threads, whatever the machine. Every command is bound by
    // Redis round trips and child processes, not CPU: the work per entry is a
    // JSON line. A second thread is still needed: output goes to stdout with
    // blocking writes (`output::Lines`, flushed before an entry is
    // acknowledged), and while one thread waits on a slow reader of a pipe, the
    // other keeps the timers, signals, ack flushes and `--exec` children going.
    // More than two would only cost memory and threads in the common case of
    // many `consume --member I/N` processes side by side on one host (the
    // default is one per core, per process). `bench` runs its workers in child
    // processes on a runtime of this same shape (`streambus_bench::child`), so
    // that it measures what these commands do.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cmd::run(cli));
    // A read of stdin may still sit in a blocking thread; do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): that is how such a
        // pipeline ends, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the hint included: log collectors keep it whole.
            match hint(&e) {
                Some(hint) => eprintln!("error: {}; hint: {hint}", error_line(&e)),
                None => eprintln!("error: {}", error_line(&e)),
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do next on the command line, by the kind of the library's error
/// (the library's own messages name no flags).
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    use streambus::ErrorKind;
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<streambus::Error>())?
        .kind();
    Some(match kind {
        ErrorKind::NoGroup => "create the group with `streambus groups STREAM --create GROUP`",
        ErrorKind::NoStream => {
            "publish to it with `streambus publish STREAM`, or create it with a group: `streambus groups STREAM --create GROUP`"
        }
        ErrorKind::Auth => "give the user and password in --redis (or REDIS_URL): redis://USER:PASSWORD@HOST:PORT",
        ErrorKind::Connection => {
            "check --redis (or REDIS_URL); over TLS give the CA with --redis-ca, and --redis-cert/--redis-key if the server asks for a client certificate"
        }
        ErrorKind::NotReplicated => {
            "see which replicas are connected (`redis-cli INFO replication` on the primary), or lower --min-replicas / raise --replica-timeout"
        }
        _ => return None,
    })
}

/// `-v` info, `-vv` debug, `-vvv` trace; `RUST_LOG` wins when set. Logs go to
/// stderr, so stdout stays machine-readable.
/// `quiet`: a directive added at the default level only.
fn init_tracing(verbose: u8, quiet: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match (verbose, quiet) {
            (0, Some(q)) => format!("warn,{q}"),
            (0, None) => "warn".to_owned(),
            (1, _) => "info".to_owned(),
            (2, _) => "debug".to_owned(),
            _ => "trace".to_owned(),
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The whole cause chain on one line, joined with ": ".
///
/// A `streambus::Error` already states its cause (the Redis error text) in its
/// message, so the chain stops there instead of repeating it in redis-rs' words;
/// a cause whose text is already on the line is skipped for the same reason.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(text.as_str()) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        if cause.downcast_ref::<streambus::Error>().is_some() {
            break;
        }
    }
    // One line, whatever the causes contain.
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn error_line_joins_and_stops_at_library_errors() {
        let lib =
            streambus::Error::new(streambus::ErrorKind::Connection, "cannot connect: refused")
                .with_source(std::io::Error::other("refused"));
        let e = Err::<(), _>(lib).context("publishing").unwrap_err();
        assert_eq!(error_line(&e), "publishing: cannot connect: refused");
    }

    #[test]
    fn hints_follow_the_error_kind() {
        let no_group =
            streambus::Error::new(streambus::ErrorKind::NoGroup, "NOGROUP no such group");
        let e = Err::<(), _>(no_group).context("consuming").unwrap_err();
        assert!(hint(&e).is_some_and(|h| h.contains("streambus groups STREAM --create GROUP")));
        let other = streambus::Error::new(streambus::ErrorKind::InvalidInput, "bad");
        assert_eq!(hint(&anyhow::Error::new(other)), None);
        assert_eq!(hint(&anyhow::anyhow!("not a library error")), None);
    }

    #[test]
    fn broken_pipe_is_found_anywhere_in_the_chain() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = Err::<(), _>(io).context("writing").unwrap_err();
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
