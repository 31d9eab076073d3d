//! Ctrl-C and SIGTERM, as a cancellation token.

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// A token cancelled on the first Ctrl-C or SIGTERM. A second one exits at once
/// (status 130), for when finishing the current batch takes too long.
///
/// The listener task lives as long as the returned handle.
pub fn on_signal() -> (CancellationToken, AbortOnDropHandle<()>) {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let task = tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down (signal again to exit at once)");
        cancel.cancel();
        signal().await;
        // `exit` runs no destructor: stop a private redis-server first.
        crate::embedded::terminate_all();
        std::process::exit(130);
    });
    (token, AbortOnDropHandle::new(task))
}

async fn signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM stops us.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
