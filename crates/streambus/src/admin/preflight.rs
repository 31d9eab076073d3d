//! Checks of the Redis server's settings that weaken streambus's guarantees,
//! made once at start (the worker and `streambus serve` log them as warnings).
//!
//! - `maxmemory-policy` `allkeys-*`: Redis may evict whole streams under memory
//!   pressure. `noeviction` (or `volatile-*`, which only evicts keys with a TTL;
//!   streams have none) keeps them.
//! - `appendonly no`: a Redis restart loses everything since the last snapshot.
//! - Redis before 7.0: no `lag` in `XINFO GROUPS`, older `XAUTOCLAIM` semantics.
//!
//! `CONFIG GET` may be refused to a least-privilege ACL user; the check then says
//! what it could not see instead of failing.

use redis::Value;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::reply::{self, Reply};

/// What the server reported about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// `redis_version` from `INFO server`, e.g. (7, 0, 15).
    pub version: Option<(u32, u32, u32)>,
    /// `maxmemory-policy`, if `CONFIG GET` was allowed.
    pub maxmemory_policy: Option<String>,
    /// `appendonly`, if `CONFIG GET` was allowed.
    pub appendonly: Option<bool>,
    /// `appendfsync`, if `CONFIG GET` was allowed.
    pub appendfsync: Option<String>,
}

impl ServerSettings {
    /// Warnings for settings that can lose or hide stream data, worded for a log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(policy) = &self.maxmemory_policy {
            if policy.starts_with("allkeys") {
                out.push(format!(
                    "Redis maxmemory-policy is {policy}: under memory pressure Redis may evict whole streams, pending entries included; set maxmemory-policy noeviction"
                ));
            }
        }
        if self.appendonly == Some(false) {
            out.push("Redis runs without appendonly: a Redis restart loses every entry and acknowledgement since the last snapshot; see the README's Durability section".to_owned());
        }
        if let Some((major, _, _)) = self.version {
            if major < 7 {
                out.push(format!(
                    "Redis {} is older than 7.0: group lag is not reported and some claim semantics differ; upgrade to 7.0 or later",
                    self.version_text()
                ));
            }
        }
        out
    }

    fn version_text(&self) -> String {
        match self.version {
            Some((a, b, c)) => format!("{a}.{b}.{c}"),
            None => "unknown".to_owned(),
        }
    }
}

/// Reads the settings: `INFO server` and `CONFIG GET` (which an ACL may refuse).
pub async fn inspect(conn: &mut Connection) -> Result<ServerSettings> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(|e| Error::redis("cannot read the server's INFO", e))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(parse_version);
    let mut settings = ServerSettings {
        version,
        ..Default::default()
    };
    let config: std::result::Result<Value, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .arg("appendonly")
        .arg("appendfsync")
        .query_async(conn)
        .await;
    if let Ok(v) = config {
        if let Ok(map) = Reply::map(v) {
            settings.maxmemory_policy = map.get("maxmemory-policy").and_then(reply::text);
            settings.appendonly = map
                .get("appendonly")
                .and_then(reply::text)
                .map(|v| v == "yes");
            settings.appendfsync = map.get("appendfsync").and_then(reply::text);
        }
    }
    Ok(settings)
}

/// Logs the warnings for the server behind `conn` (and says so at debug level
/// when the check itself failed: it never stops anything).
pub async fn warn_about(conn: &mut Connection) {
    match inspect(conn).await {
        Ok(settings) => {
            for w in settings.warnings() {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot check the server's settings"),
    }
}

fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_about_eviction_and_missing_persistence() {
        let s = ServerSettings {
            version: Some((7, 0, 15)),
            maxmemory_policy: Some("allkeys-lru".into()),
            appendonly: Some(false),
            appendfsync: None,
        };
        let w = s.warnings();
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("noeviction"));
        let ok = ServerSettings {
            version: Some((7, 2, 0)),
            maxmemory_policy: Some("noeviction".into()),
            appendonly: Some(true),
            appendfsync: Some("always".into()),
        };
        assert!(ok.warnings().is_empty());
        let volatile = ServerSettings {
            maxmemory_policy: Some("volatile-lru".into()),
            ..ok.clone()
        };
        assert!(volatile.warnings().is_empty());
        let old = ServerSettings {
            version: Some((6, 2, 0)),
            ..ok
        };
        assert!(old.warnings()[0].contains("older than 7.0"));
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("8.2"), Some((8, 2, 0)));
        assert_eq!(parse_version("x"), None);
    }
}
