//! The cluster comparison: publish and consume throughput on one node (a
//! plain stream, then the same partitioned stream as on the cluster) and on a
//! private Redis Cluster of `cluster_masters` masters that the bench starts
//! itself, with a stream of `cluster_partitions` partitions
//! ([`streambus::partition`]).
//!
//! Each run publishes `cluster_messages` with `publish_batch`, then consumes
//! what `MAXLEN ~` left with a no-op worker ([`crate::noop`]) on every key.
//! Each row's ratio is to the one-node plain-stream row of its kind.

use std::time::Instant;

use streambus::partition::{PartitionedWorker, Partitions};
use streambus::{CancellationToken, Client, Producer, Worker, WorkerOptions};

use super::{messages_for, throughput_row, Ctx};
use crate::noop;
use crate::server::EmbeddedCluster;
use crate::{Error, Result, Throughput};

/// Where the cluster comparison publishes and consumes.
enum Dest {
    /// One stream key.
    Plain(String),
    /// A partitioned stream ([`streambus::partition`]).
    Parts(Partitions),
}

impl Dest {
    fn keys(&self) -> Vec<String> {
        match self {
            Dest::Plain(k) => vec![k.clone()],
            Dest::Parts(p) => p.keys().to_vec(),
        }
    }
}

/// Publish and consume throughput on one node (plain stream, then the same
/// partitioned stream as on the cluster) and on a private Redis Cluster of
/// `cluster_masters` masters: the publish rows, then the consume rows.
pub(super) async fn scaling(ctx: &mut Ctx<'_>) -> Result<Vec<Throughput>> {
    let n = ctx.opts.cluster_partitions.max(1);
    let masters = ctx.opts.cluster_masters.max(3);
    let single = ctx.client.clone();
    let mut runs = Vec::new();

    ctx.say("cluster comparison: 1 node, plain stream");
    let plain = Dest::Plain(ctx.key("scale-plain"));
    runs.push(scale_run(ctx, &single, &plain, "1 node, 1 stream", "node").await?);

    ctx.say(&format!("cluster comparison: 1 node, {n} partitions"));
    let parts = Partitions::new(&format!("{}scale-1node", ctx.prefix), n)?;
    ctx.keys.extend(parts.keys().iter().cloned());
    let label = format!("1 node, {n} partitions");
    runs.push(scale_run(ctx, &single, &Dest::Parts(parts), &label, "node_partitions").await?);

    ctx.say(&format!(
        "starting a private Redis Cluster of {masters} masters (no replicas)"
    ));
    let (server_bin, cli_bin) = (
        ctx.opts.redis_server_bin.clone(),
        ctx.opts.redis_cli_bin.clone(),
    );
    let cluster =
        tokio::task::spawn_blocking(move || EmbeddedCluster::start(&server_bin, &cli_bin, masters))
            .await
            .map_err(|e| Error::new(format!("cluster start: {e}")))??;
    let cluster_client = Client::open(&cluster.url())?;
    ctx.say(&format!(
        "cluster comparison: {masters} masters, {n} partitions"
    ));
    // A throw-away cluster: its keys go with it.
    let parts = Partitions::new("streambus-bench:scale-cluster", n)?;
    let label = format!("cluster of {masters} masters, {n} partitions");
    runs.push(scale_run(ctx, &cluster_client, &Dest::Parts(parts), &label, "cluster").await?);
    drop(cluster);

    let (mut publish, mut consume): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
    relative_to_first(&mut publish);
    relative_to_first(&mut consume);
    publish.extend(consume);
    Ok(publish)
}

/// Sets each row's ratio to its rate over the first row's (the one-node
/// plain stream); the first row's is 1.
fn relative_to_first(rows: &mut [Throughput]) {
    let Some(base) = rows.first().map(|r| r.rate) else {
        return;
    };
    for (i, row) in rows.iter_mut().enumerate() {
        row.ratio = Some(if i == 0 { 1.0 } else { row.rate / base });
    }
}

/// One publish run (`cluster_messages`, `batch_size` per `publish_batch` call)
/// and one consume run (a worker per key, no-op handler, until every entry
/// that `MAXLEN ~` left is handled and acknowledged).
async fn scale_run(
    ctx: &mut Ctx<'_>,
    client: &Client,
    dest: &Dest,
    label: &str,
    tag: &str,
) -> Result<(Throughput, Throughput)> {
    let total = ctx.opts.cluster_messages;
    let batch = ctx.opts.batch_size.max(1) as u64;
    let keys = dest.keys();
    let producer = Producer::new(client, ctx.opts.producer.clone()).await?;
    let partitioned = match dest {
        Dest::Parts(p) => Some(producer.partitioned(p.clone())),
        Dest::Plain(_) => None,
    };
    let started = Instant::now();
    let mut seq = 0;
    while seq < total {
        let end = (seq + batch).min(total);
        let messages = messages_for(seq..end)?;
        match (&partitioned, dest) {
            (Some(p), _) => {
                p.publish_batch(messages).await?;
            }
            (None, Dest::Plain(k)) => {
                producer.publish_batch(k, messages).await?;
            }
            (None, Dest::Parts(_)) => unreachable!("partitioned producer made above"),
        }
        seq = end;
    }
    let publish = throughput_row(
        ctx,
        &format!("scale_publish_{tag}"),
        format!("publish_batch, {batch} per call: {label}"),
        total,
        started.elapsed(),
        None,
        "",
    );

    // What MAXLEN ~ left (all of it on partitions of fewer than maxlen each).
    let mut conn = client.connect().await?;
    let mut present = 0u64;
    for k in &keys {
        let len: u64 = redis::cmd("XLEN").arg(k).query_async(&mut conn).await?;
        present += len;
    }
    let (handler, done) = noop::ack_all(present);
    let options = WorkerOptions {
        concurrency: ctx.opts.worker_concurrency.max(1),
        consumer_name: Some("bench".into()),
        ..ctx.opts.worker.clone()
    };
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let started = Instant::now();
    let task = match dest {
        Dest::Plain(k) => {
            tokio::spawn(Worker::new(client, k, "bench", options).run(handler, stop.clone()))
        }
        Dest::Parts(p) => tokio::spawn(
            PartitionedWorker::new(client, p.clone(), "bench", options).run(handler, stop.clone()),
        ),
    };
    noop::all_handled(&done).await?;
    let (elapsed, report) =
        noop::stop_when_acked(&mut conn, &keys, "bench", started, &stop, task).await?;
    if report.acked < present {
        return Err(Error::new(format!(
            "{label}: the worker acknowledged {} of {present} entries",
            report.acked
        )));
    }
    let consume = throughput_row(
        ctx,
        &format!("scale_consume_{tag}"),
        format!("worker read+ack, no-op handler: {label}"),
        present,
        elapsed,
        None,
        "",
    );
    Ok((publish, consume))
}
