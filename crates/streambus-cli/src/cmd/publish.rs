//! `streambus publish`: JSON arguments, one raw entry, or JSON lines from stdin.
//!
//! Prints one line per message: its entry id; or, to a partitioned stream,
//! `PARTITION_KEY ENTRY_ID` (routed by the envelope's key, else in turn); or,
//! with `--json`, one JSON object ([`report`]).
//!
//! From stdin it keeps going through faults (Redis restarting, refusing,
//! silent, resetting), for up to `--retry-for` per chunk of lines: see
//! [`deliver`].

mod deliver;
mod key_field;
mod report;
mod stdin;

use anyhow::{bail, Context, Result};
use streambus::partition::PartitionedProducer;
use streambus::{Client, EntryId, Message, Producer, ProducerOptions, Retention};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use self::deliver::{Anchor, Delivery, Line, Throttle};
use self::report::Report;
use self::stdin::ReadAhead;
use crate::cli::PublishArgs;
use crate::output::Lines;
use crate::topology::Topology;

/// Most stdin lines in one chunk: a chunk's replies are all awaited before
/// the next chunk is sent, so a chunk should span many pipelines.
const CHUNK_LINES: usize = 4096;
/// A chunk ends after the line that takes its text past this many bytes:
/// with the line count, this bounds memory for lines of any size.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

pub async fn run(client: &Client, args: PublishArgs, topology: Option<&Topology>) -> Result<()> {
    let partitions = super::partitions(args.partitions, topology, &args.stream)?;
    // --maxlen, else the stream's retention in the topology file, else none.
    let file_stream = topology.and_then(|t| t.stream(&args.stream));
    let file_retention = file_stream.map(|s| s.retention);
    let min_replicas = args
        .min_replicas
        .or(file_stream.and_then(|s| s.min_replicas))
        .filter(|n| *n > 0);
    let replica_timeout = args
        .replica_timeout
        .or(file_stream.and_then(|s| s.replica_timeout).map(|d| d.0))
        .unwrap_or(std::time::Duration::from_secs(1));
    let options = ProducerOptions {
        max_message_bytes: args.max_message_bytes,
        retention: super::settings::layered(
            args.maxlen.map(Retention::max_len),
            file_retention.map(|r| r.retention),
            Retention::default(),
        ),
        keep_unacked: args.keep_unacked || file_retention.is_some_and(|r| r.keep_unacked),
        min_replicas: min_replicas.map(|n| (n, replica_timeout)),
        // While Redis cannot be reached, a publish waits this long.
        publish_timeout: args.retry_for,
        ..Default::default()
    };

    // Check everything given as arguments before connecting: a bad argument
    // publishes nothing.
    let envelope = |text: String| -> Result<Message> {
        let key = match &args.key_field {
            Some(field) => Some(key_field::key_of(&text, field)?),
            None => args.key.clone(),
        };
        let mut m = Message::json_text(text)?;
        if let Some(t) = &args.kind {
            m = m.with_type(t.clone());
        }
        if let Some(k) = key {
            m = m.with_key(k);
        }
        check_size(&m, args.max_message_bytes)?;
        Ok(m)
    };
    let messages = if !args.fields.is_empty() {
        let m = Message::raw(args.fields.iter().cloned());
        check_size(&m, args.max_message_bytes)?;
        vec![m]
    } else {
        let mut messages = Vec::with_capacity(args.documents.len());
        for (i, text) in args.documents.iter().enumerate() {
            messages
                .push(envelope(text.clone()).with_context(|| format!("JSON argument {}", i + 1))?);
        }
        messages
    };

    let mut conn = super::connect(client).await?;
    // No look at the key's type first: a producer's ACL user may run XADD
    // only (the README's rules), and XADD's own reply says WRONGTYPE, as
    // plainly (the pipeline classifies each reply like a single publish's).
    let keys = match &partitions {
        Some(p) => p.keys().to_vec(),
        None => vec![args.stream.clone()],
    };
    let producer = Producer::new(client, options).await?;
    let report = Report::new(
        &args.stream,
        partitions.as_ref().map(|p| p.keys()),
        args.json,
    );
    let mut out = Lines::stdout();
    if !messages.is_empty() {
        let target = match partitions {
            // Batches per partition, never concurrent single publishes: on a
            // cluster, one pipeline must stay within one slot.
            Some(p) => Target::Partitioned(producer.partitioned(p)),
            None => Target::Plain {
                producer,
                stream: &args.stream,
            },
        };
        let envelope_ids: Vec<Option<String>> = messages
            .iter()
            .map(|m| m.envelope_id().map(str::to_owned))
            .collect();
        for ((at, id), envelope_id) in target.send(messages).await?.into_iter().zip(envelope_ids) {
            report.print(&mut out, at, id, envelope_id.as_deref())?;
        }
        out.flush()?;
        return Ok(());
    }

    // Where each stream ends now: entries of a send that got no reply are
    // looked for after the last id known before it (see `deliver`). One
    // round trip per stream for the whole run; a user that may not read the
    // stream publishes all the same, without that check.
    let mut anchors = Vec::with_capacity(keys.len());
    for key in &keys {
        anchors.push(Anchor::at_start(&mut conn, key).await?);
    }
    let mut delivery = Delivery {
        conn,
        producer,
        report,
        next_partition: (streambus::Jitter::new().next_unit() * keys.len() as f64) as usize,
        keys,
        anchors,
        retry_for: args.retry_for,
        url: client.display_url().to_owned(),
        stream: args.stream.clone(),
        envelope: &envelope,
        warnings: Throttle::default(),
    };
    let stdin = ReadAhead::stdin();
    let limit = args.max_message_bytes;
    let (stop, _signals) = crate::shutdown::on_signal();
    publish_lines(&mut delivery, limit, stdin, &envelope, &mut out, &stop).await
}

/// Where the messages go: one stream, or the partitions of a logical stream.
enum Target<'a> {
    Plain { producer: Producer, stream: &'a str },
    Partitioned(PartitionedProducer),
}

impl Target<'_> {
    /// Publishes `messages` in one pipeline (one per partition); returns for
    /// each message, in order, where it went (0 for a plain stream, else the
    /// partition's index) and its entry id.
    async fn send(&self, messages: Vec<Message>) -> streambus::Result<Vec<(usize, EntryId)>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match self {
            Target::Plain { producer, stream } => producer
                .publish_batch(stream, messages)
                .await?
                .into_iter()
                .map(|id| (0, id))
                .collect(),
            Target::Partitioned(p) => {
                let keys = p.partitions().keys();
                p.publish_batch(messages)
                    .await?
                    .into_iter()
                    .map(|(key, id)| (keys.iter().position(|k| *k == key).unwrap_or(0), id))
                    .collect()
            }
        })
    }
}

/// Publishes one envelope per non-blank line, in chunks: a chunk is what has
/// already been read (up to [`CHUNK_LINES`] or [`CHUNK_BYTES`]), so a file
/// goes in large pipelines and a line typed by hand goes out at once. The next
/// chunk is read while the previous one is being published (and, while Redis
/// is away, retried: see [`deliver`]); stdin is read no further than
/// [`stdin`]'s bounded read-ahead until it is done, so memory stays bounded
/// and the program feeding stdin waits, rather than dying of SIGPIPE.
///
/// On SIGINT or SIGTERM (`stop`) it reads stdin no further, publishes the
/// complete lines it had read, says on stderr through which line, and
/// returns `Ok`. A second signal exits at once (see [`crate::shutdown`]).
async fn publish_lines(
    delivery: &mut Delivery<'_>,
    limit: usize,
    mut input: ReadAhead,
    envelope: &dyn Fn(String) -> Result<Message>,
    out: &mut Lines,
    stop: &CancellationToken,
) -> Result<()> {
    let mut line_no = 0u64;
    let mut published = 0u64;
    let mut last_line = 0u64;
    let mut chunk = read_chunk(&mut input, &mut line_no, limit, envelope, stop).await;
    loop {
        let Chunk {
            lines,
            text,
            bad_line,
        } = match chunk {
            Ok(c) => c,
            Err(e) => {
                return Err(e.context(format!(
                    "reading stdin ({} published)",
                    count_messages(published)
                )))
            }
        };
        let done = bad_line.is_some() || lines.is_empty();
        let count = lines.len() as u64;
        let chunk_end = lines.last().map(|l| l.no);
        let send = delivery.chunk(lines, &text, out);
        let next = async {
            if done {
                None
            } else {
                Some(read_chunk(&mut input, &mut line_no, limit, envelope, stop).await)
            }
        };
        tokio::pin!(send, next);
        // Read ahead while publishing, but stop at once when publishing gave
        // up: the next line may never come (stdin left open).
        let mut read_ahead = None;
        let sent = loop {
            tokio::select! {
                sent = &mut send => break sent,
                c = &mut next, if read_ahead.is_none() => read_ahead = Some(c),
            }
        };
        sent?;
        let next = match read_ahead {
            Some(c) => c,
            None => next.await,
        };
        published += count;
        last_line = chunk_end.unwrap_or(last_line);
        if let Some((n, e)) = bad_line {
            return Err(e.context(format!(
                "line {n} ({} before it published)",
                count_messages(published)
            )));
        }
        match next {
            Some(c) => chunk = c,
            None => {
                if stop.is_cancelled() {
                    eprintln!(
                        "stopped by a signal: {} published, through line {last_line} of the input; nothing after it was published",
                        count_messages(published)
                    );
                }
                return Ok(());
            }
        }
    }
}

struct Chunk {
    /// Valid lines, in order.
    lines: Vec<Line>,
    /// The trimmed text of every line, one after the other (one buffer per
    /// chunk, not one per line): a line is built again from it if it has to be
    /// sent again after it was never sent.
    text: String,
    /// The first bad line, after `lines`: the lines before it are still
    /// published, none after it.
    bad_line: Option<(u64, anyhow::Error)>,
}

/// Reads one line (waiting for it if needed), then every further line that has
/// already been read from stdin, up to [`CHUNK_LINES`] or [`CHUNK_BYTES`]. An
/// empty chunk means end of input. Lines longer than the size limit are
/// refused without being held in memory whole. Once `stop` is cancelled, stdin
/// is read no further: the input ends with the last complete line read (a
/// line cut by the stop is not published).
async fn read_chunk(
    input: &mut ReadAhead,
    line_no: &mut u64,
    limit: usize,
    envelope: &dyn Fn(String) -> Result<Message>,
    stop: &CancellationToken,
) -> Result<Chunk> {
    let mut chunk = Chunk {
        lines: Vec::new(),
        text: String::new(),
        bad_line: None,
    };
    let mut buf = Vec::new();
    while chunk.lines.len() < CHUNK_LINES && chunk.text.len() < CHUNK_BYTES {
        if !chunk.lines.is_empty() && !input.buffer().contains(&b'\n') && !input.has_ready() {
            // The next line is not here yet: send what we have first.
            break;
        }
        buf.clear();
        // A valid line is at most `limit` bytes plus "\r\n".
        let max = limit as u64 + 2;
        loop {
            if stop.is_cancelled() && !input.is_stopped() {
                input.stop();
            }
            let stopped = input.is_stopped();
            let left = (max + 1).saturating_sub(buf.len() as u64);
            // `read_until` keeps what it read in `buf` when it is cancelled
            // (tokio's docs): reading on after the stop continues the line.
            let read = {
                let mut limited = (&mut *input).take(left);
                tokio::select! {
                    biased;
                    n = limited.read_until(b'\n', &mut buf) => Some(n),
                    () = stop.cancelled(), if !stopped => None,
                }
            };
            match read {
                Some(n) => {
                    n?;
                    break;
                }
                None => input.stop(),
            }
        }
        if buf.is_empty() {
            break;
        }
        if input.is_stopped() && buf.last() != Some(&b'\n') {
            // Cut by the stop: the rest of it was never read.
            break;
        }
        *line_no += 1;
        if buf.len() as u64 > max && buf.last() != Some(&b'\n') {
            let e = anyhow::anyhow!(
                "line is longer than the message size limit of {limit} bytes; nothing was written for it"
            );
            chunk.bad_line = Some((*line_no, e));
            return Ok(chunk);
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(_) => {
                chunk.bad_line = Some((*line_no, anyhow::anyhow!("not valid UTF-8")));
                return Ok(chunk);
            }
        };
        if text.is_empty() {
            continue;
        }
        match envelope(text.to_owned()) {
            Ok(m) => {
                let at = chunk.text.len();
                chunk.text.push_str(text);
                chunk.lines.push(Line {
                    no: *line_no,
                    message: Some(m),
                    text: at..chunk.text.len(),
                });
            }
            Err(e) => {
                chunk.bad_line = Some((*line_no, e));
                return Ok(chunk);
            }
        }
    }
    Ok(chunk)
}

/// The producer checks sizes too; checking here first lets the error say which
/// argument or line it was.
fn check_size(m: &Message, limit: usize) -> Result<()> {
    let size = m.byte_len();
    if size > limit {
        bail!("message of {size} bytes exceeds the limit of {limit} bytes; nothing was written (raise --max-message-bytes)");
    }
    Ok(())
}

fn count_messages(n: u64) -> String {
    match n {
        1 => "1 message".to_owned(),
        n => format!("{n} messages"),
    }
}
