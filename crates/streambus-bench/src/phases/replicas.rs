//! What `min_replicas` costs: the two library publish phases again with
//! `min_replicas = (1, 1 s)` (each pipeline ends with `WAIT 1 1000`), against
//! the private server with a replica of its own, started for these phases.
//! Against `--redis` they are skipped: the bench does not know its replicas.

use std::time::{Duration, Instant};

use super::publish::{publish_batches_as, publish_concurrent_as};
use super::Ctx;
use crate::server::EmbeddedServer;
use crate::{Error, Result, Throughput};

/// How long the replica may take to finish its first sync.
const SYNC_DEADLINE: Duration = Duration::from_secs(10);

/// The two rows, or none (with a note) against `--redis`.
pub(super) async fn min_replicas(ctx: &mut Ctx<'_>) -> Result<Vec<Throughput>> {
    if ctx.opts.redis.is_some() {
        let note = "`min_replicas` phases skipped: they need the private redis-server (no --redis)";
        if !ctx.notes.iter().any(|n| n == note) {
            ctx.notes.push(note.to_owned());
        }
        return Ok(Vec::new());
    }
    let port = ctx
        .url
        .rsplit(':')
        .next()
        .ok_or_else(|| Error::new(format!("no port in {}", ctx.url)))?
        .to_owned();
    ctx.say("min_replicas: starting a replica of the private redis-server");
    let replica = EmbeddedServer::start_with(
        &ctx.opts.redis_server_bin,
        &["--replicaof", "127.0.0.1", &port],
    )?;
    wait_synced(&replica.url()).await?;
    let plain = ctx.opts.producer.min_replicas;
    ctx.opts.producer.min_replicas = Some((1, Duration::from_secs(1)));
    let rows = async {
        Ok::<_, Error>(vec![
            publish_concurrent_as(ctx, "publish_min_replicas", ", min_replicas 1").await?,
            publish_batches_as(ctx, "publish_batch_min_replicas", ", min_replicas 1").await?,
        ])
    }
    .await;
    ctx.opts.producer.min_replicas = plain;
    drop(replica);
    rows
}

/// Polls the replica until its link to the primary is up.
async fn wait_synced(url: &str) -> Result<()> {
    let client = streambus::Client::open(url)?;
    let mut conn = client.connect().await?;
    let started = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::new(format!("INFO replication on the replica: {e}")))?;
        if info.contains("master_link_status:up") {
            return Ok(());
        }
        if started.elapsed() > SYNC_DEADLINE {
            return Err(Error::new(format!(
                "the replica did not sync within {SYNC_DEADLINE:?}: {info}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
