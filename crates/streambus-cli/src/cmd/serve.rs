//! `streambus serve`: the dashboard, the JSON API, the WebSocket relay and
//! `/metrics` (the `streambus-server` crate does the work; this is wiring).
//!
//! Settings: flags, else the topology file's `[service]`, else the server's
//! defaults. A token is required beyond loopback ([`ServerConfig::validate`]).
//! The token is never logged: the dashboard's link carries it (`#token=...`,
//! a fragment the browser does not send) only when it was typed on the command
//! line and stderr is a terminal, i.e. shown to the person who typed it.

use std::io::IsTerminal;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use streambus_server::{AppState, ServerConfig};

use super::settings::layered;
use crate::cli::ServeArgs;
use crate::shutdown;
use crate::topology::{ServiceSpec, Topology};

/// `given`: the Redis URL given (flag, environment or file), if any.
pub async fn run(
    given: Option<String>,
    options: &streambus::ConnectOptions,
    args: ServeArgs,
    topology: Option<&Topology>,
) -> Result<()> {
    let service = topology.map(|t| t.service.clone()).unwrap_or_default();
    let show_token = args.token_on_command_line && std::io::stderr().is_terminal();
    // Partitioned streams of the file (more than one partition): shown as one
    // stream, relayed from every partition.
    let partitions = topology
        .map(|t| {
            t.streams
                .iter()
                .filter(|(_, spec)| spec.partitions.0 > 1)
                .map(|(name, spec)| (name.clone(), spec.partitions.0))
                .collect()
        })
        .unwrap_or_default();
    let config = ServerConfig {
        partitions,
        ..config(args, &service)
    };
    // Refuse a bad configuration or a taken port before starting anything.
    config.validate()?;
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (client, _embedded) = super::serve_redis(given, options)?;
    let client = &client;
    let token = config.token.clone();
    let state = AppState::new(config, client.clone()).await?;
    eprintln!("{}", dashboard_line(addr, token.as_deref(), show_token));
    eprintln!("redis: {}", client.display_url());

    let (stop, _signals) = shutdown::on_signal();
    streambus_server::serve(listener, state, async move { stop.cancelled().await })
        .await
        .context("serving")?;
    Ok(())
}

/// Flags over the file's `[service]` over the defaults.
fn config(args: ServeArgs, service: &ServiceSpec) -> ServerConfig {
    let defaults = ServerConfig::default();
    let streams = layered(
        (!args.streams.is_empty()).then_some(args.streams),
        Some(service.streams.iter().map(|s| s.0.clone()).collect()),
        Vec::new(),
    );
    // The one exception to the rule: origins are a list of permissions, and
    // the flags add to the file's (the file names the dashboard's own).
    let mut allowed_origins = service.allowed_origins.clone();
    allowed_origins.extend(args.allowed_origins);
    ServerConfig {
        listen: layered(args.listen, service.listen, defaults.listen),
        token: args.token,
        streams,
        allowed_origins,
        ..defaults
    }
}

/// Binds `addr`; a taken port gets an error that says what to do.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {addr}: the port is taken (another streambus?); pick another one with --listen 127.0.0.1:PORT"
            )
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {e}")
        }
    })
}

/// `dashboard: http://ADDR/`, with the token in the fragment only when it may
/// be shown.
fn dashboard_line(addr: SocketAddr, token: Option<&str>, show_token: bool) -> String {
    match token {
        Some(t) if show_token => format!("dashboard: http://{addr}/#token={t}"),
        Some(_) => format!(
            "dashboard: http://{addr}/ (it asks for the token; or append #token=<your token>)"
        ),
        None => format!("dashboard: http://{addr}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_shown_only_when_allowed() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            dashboard_line(addr, None, false),
            "dashboard: http://127.0.0.1:8080/"
        );
        let hidden = dashboard_line(addr, Some("secret-secret-secret"), false);
        assert!(!hidden.contains("secret"), "{hidden}");
        assert!(dashboard_line(addr, Some("secret-secret-secret"), true)
            .ends_with("#token=secret-secret-secret"));
    }
}
