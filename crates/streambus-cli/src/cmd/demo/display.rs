//! What the demo shows while it runs: the dashboard it serves, and the
//! progress line on stderr.

use std::io::IsTerminal;
use std::net::SocketAddr;

use anyhow::Result;
use streambus::config::format_duration;
use streambus::{CancellationToken, Client, Connection};
use streambus_server::{AppState, ServerConfig};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::pipeline::{Stats, ALERTS, STAGES};
use super::PLAIN_EVERY;

/// The dashboard, served in this process.
pub(super) struct Dashboard {
    stop: CancellationToken,
    task: AbortOnDropHandle<std::io::Result<()>>,
}

impl Dashboard {
    pub(super) async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the dashboard ended with an error"),
            Err(e) => tracing::warn!(error = %e, "the dashboard task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// Serves the dashboard on `listen`. A taken port is an error when the address
/// was asked for; otherwise the demo runs without the dashboard and says so.
pub(super) async fn start_dashboard(
    client: &Client,
    listen: SocketAddr,
    explicit: bool,
) -> Result<Option<Dashboard>> {
    let config = ServerConfig {
        listen,
        streams: STAGES.iter().map(|s| s.stream.to_owned()).collect(),
        ..Default::default()
    };
    config.validate()?;
    let listener = match super::super::serve::bind(listen).await {
        Ok(l) => l,
        Err(e) if !explicit => {
            eprintln!("{e:#}; running without the dashboard (or use --no-serve)");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let addr = listener.local_addr()?;
    let state = AppState::new(config, client.clone()).await?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(streambus_server::serve(listener, state, async move {
        signal.cancelled().await;
    }));
    eprintln!("dashboard: http://{addr}/");
    Ok(Some(Dashboard {
        stop,
        task: AbortOnDropHandle::new(task),
    }))
}

/// Where progress and notes go: a redrawn line on a terminal, plain lines
/// otherwise. Clones share the line.
#[derive(Clone)]
pub(super) struct Out {
    bar: Option<indicatif::ProgressBar>,
}

impl Out {
    pub(super) fn new() -> Out {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        });
        Out { bar }
    }

    /// A note above the progress line.
    pub(super) fn say(&self, text: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(text.as_ref()),
            None => eprintln!("{}", text.as_ref()),
        }
    }
}

/// The live numbers: published, processed, lag, pending, dead letters, rates.
pub(super) struct Progress<'a> {
    out: &'a Out,
    started: Instant,
    last_at: Instant,
    last_published: u64,
    last_processed: u64,
    last_plain: Instant,
}

impl<'a> Progress<'a> {
    pub(super) fn new(out: &'a Out, started: Instant) -> Self {
        Progress {
            out,
            started,
            last_at: started,
            last_published: 0,
            last_processed: 0,
            last_plain: started,
        }
    }

    /// Redraws (or, without a terminal, prints a line every few seconds).
    /// `backlog`: already read by the caller, or `None` to read it here.
    pub(super) async fn update(
        &mut self,
        conn: &mut Connection,
        stats: &Stats,
        backlog: Option<(u64, u64)>,
    ) {
        let now = Instant::now();
        if self.out.bar.is_none() && now.duration_since(self.last_plain) < PLAIN_EVERY {
            return;
        }
        let backlog = match backlog {
            Some(b) => Some(b),
            None => super::backlog(conn).await,
        };
        let dead = streambus::admin::dead_letter::count(conn, ALERTS)
            .await
            .ok();
        let published = stats.published();
        // Alerts through their whole pipeline: results persisted + CPS handled.
        let processed = stats.processed(3) + stats.processed(1);
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let line = format!(
            "{:>6}  published {published} ({:.0}/s)  processed {processed} ({:.0}/s)  lag {}  pending {}  dead letters {}",
            format_duration(now.duration_since(self.started)),
            published.saturating_sub(self.last_published) as f64 / secs,
            processed.saturating_sub(self.last_processed) as f64 / secs,
            backlog.map_or("?".to_owned(), |b| b.0.to_string()),
            backlog.map_or("?".to_owned(), |b| b.1.to_string()),
            dead.map_or("?".to_owned(), |d| d.to_string()),
        );
        self.last_at = now;
        self.last_published = published;
        self.last_processed = processed;
        match &self.out.bar {
            Some(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            None => {
                self.last_plain = now;
                eprintln!("{line}");
            }
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.out.bar {
            bar.finish_and_clear();
        }
    }
}
