//! The network cut: a proxy between the workers and Redis, and the cut
//! itself.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use streambus::config::format_duration;
use streambus::{CancellationToken, Client};
use streambus_testkit::FaultProxy;
use tokio::time::Instant;

use super::display::Out;
use super::pipeline::{self, Ctx};
use super::RESUME_POLL;

/// The workers' way to Redis: through a proxy that the demo can cut.
pub(super) struct Route {
    /// Like the demo's client, but connecting to the proxy.
    pub(super) client: Client,
    /// Shared with [`cut_network`]; it lives as long as the workers do.
    pub(super) proxy: Arc<FaultProxy>,
}

/// A [`FaultProxy`] in front of the Redis server, and a client through it;
/// `Err` says why there is none (the workers then connect directly and the
/// network is not cut).
pub(super) async fn proxy_route(client: &Client) -> Result<Route, String> {
    // The URL as given, with its password masked (see below).
    let url = client.display_url();
    let parts = match UrlParts::split(url) {
        Some(p) if !client.is_cluster() => p,
        _ => return Err("only for plain redis:// URLs".to_owned()),
    };
    if parts.userinfo.contains("***") {
        // The client keeps the password to itself; the demo is only given
        // the client.
        return Err("the Redis URL has a password, which the demo cannot pass on to the proxy's connections".to_owned());
    }
    let upstream = reachable(parts.host, parts.port, client.options().connect_timeout).await?;
    let proxy = FaultProxy::start(upstream)
        .await
        .map_err(|e| format!("cannot start the proxy: {e}"))?;
    let client = Client::open_with(&parts.with_addr(proxy.addr()), client.options().clone())
        .map_err(|e| e.to_string())?;
    Ok(Route {
        client,
        proxy: Arc::new(proxy),
    })
}

/// The first address of `host:port` that accepts a TCP connection (a name
/// may resolve to an IPv6 and an IPv4 address, of which Redis listens on one).
pub(super) async fn reachable(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut failure = "no address".to_owned();
    for addr in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_probe)) => return Ok(addr),
            Ok(Err(e)) => failure = e.to_string(),
            Err(_) => failure = format!("no answer within {}", format_duration(timeout)),
        }
    }
    Err(format!("cannot reach {host}:{port} ({failure})"))
}

/// A single-server `redis://` URL, split where the proxy's address goes.
#[derive(Debug, PartialEq)]
pub(super) struct UrlParts<'a> {
    /// `user:password@`, or empty.
    userinfo: &'a str,
    /// Without the brackets of an IPv6 address.
    host: &'a str,
    port: u16,
    /// Everything after the port: `/db`, `?query`.
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    /// `None` unless `url` is `redis://[userinfo@]host[:port][/db][?query]`
    /// (not TLS, a unix socket or a cluster).
    pub(super) fn split(url: &'a str) -> Option<Self> {
        let after = url.strip_prefix("redis://")?;
        // A password may hold a '/': the host starts after the last '@' (as
        // in `streambus::Client::display_url`).
        let (userinfo, after) = after.split_at(after.rfind('@').map_or(0, |at| at + 1));
        let (hostport, rest) = after.split_at(after.find(['/', '?', '#']).unwrap_or(after.len()));
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6.split_once(']')?;
                (
                    host,
                    port.strip_prefix(':').or(port.is_empty().then_some(""))?,
                )
            }
            None => hostport.split_once(':').unwrap_or((hostport, "")),
        };
        let port = if port.is_empty() {
            6379
        } else {
            port.parse().ok()?
        };
        (!host.is_empty()).then_some(UrlParts {
            userinfo,
            host,
            port,
            rest,
        })
    }

    /// The same URL with `addr` for the host and port.
    pub(super) fn with_addr(&self, addr: SocketAddr) -> String {
        format!("redis://{}{addr}{}", self.userinfo, self.rest)
    }
}

/// Cuts the workers' network at `at` for `length` (healing at once if the
/// run ends first), then says when the first alert published during the cut
/// has been processed: the workers noticed that their connections were dead
/// and dialled new ones. Runs until then, unless its owner drops it first.
pub(super) async fn cut_network(
    proxy: Arc<FaultProxy>,
    at: Instant,
    length: Duration,
    ctx: Arc<Ctx>,
    out: Out,
    run_over: CancellationToken,
) {
    tokio::select! {
        () = tokio::time::sleep_until(at) => {}
        () = run_over.cancelled() => return,
    }
    let cut = &ctx.stats.cut;
    proxy.black_hole();
    // After the black hole: an alert published from now on can reach a
    // worker only on a connection dialled after the heal.
    cut.started_us.store(pipeline::now_us(), Ordering::Release);
    out.say(format!(
        "network cut: workers' connections to Redis black-holed for {}",
        format_duration(length)
    ));
    tokio::select! {
        () = tokio::time::sleep(length) => {}
        () = run_over.cancelled() => {}
    }
    // Before the heal, so that the time to resume is never under-measured.
    cut.healed_us.store(pipeline::now_us(), Ordering::Release);
    proxy.heal();
    let after = loop {
        if let Some(after) = cut.resumed_after() {
            break after;
        }
        tokio::time::sleep(RESUME_POLL).await;
    };
    out.say(format!(
        "network healed: work resumed after {}",
        format_duration(after)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(userinfo: &'a str, host: &'a str, port: u16, rest: &'a str) -> UrlParts<'a> {
        UrlParts {
            userinfo,
            host,
            port,
            rest,
        }
    }

    #[test]
    fn splits_plain_redis_urls_where_the_proxy_goes() {
        let cases = [
            ("redis://127.0.0.1:40123", parts("", "127.0.0.1", 40123, "")),
            ("redis://localhost", parts("", "localhost", 6379, "")),
            ("redis://h:7000/2", parts("", "h", 7000, "/2")),
            (
                "redis://bob:s/cr@t@h:1/0?protocol=resp3",
                parts("bob:s/cr@t@", "h", 1, "/0?protocol=resp3"),
            ),
            ("redis://[::1]:6380/1", parts("", "::1", 6380, "/1")),
            ("redis://[::1]", parts("", "::1", 6379, "")),
        ];
        for (url, want) in cases {
            assert_eq!(UrlParts::split(url), Some(want), "{url}");
        }
        let proxy: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        assert_eq!(
            UrlParts::split("redis://:pw@redis.internal:6379/3")
                .unwrap()
                .with_addr(proxy),
            "redis://:pw@127.0.0.1:5555/3"
        );
    }

    #[test]
    fn other_urls_are_not_split() {
        for url in [
            "rediss://h:6380",
            "redis+unix:///tmp/redis.sock",
            "unix:///tmp/redis.sock",
            "redis+cluster://h1:7000,h2:7001",
            "redis://",
            "redis://h:port",
            "redis://[::1",
        ] {
            assert_eq!(UrlParts::split(url), None, "{url}");
        }
    }
}
