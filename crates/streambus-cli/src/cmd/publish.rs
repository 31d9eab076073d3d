//! `streambus publish`: JSON arguments, one raw entry, or JSON lines from stdin.
//!
//! Prints one line per message: its entry id; or, to a partitioned stream,
//! `PARTITION_KEY ENTRY_ID` (routed by the envelope's key, else in turn).

use anyhow::{bail, Context, Result};
use streambus::group::require_stream;
use streambus::partition::PartitionedProducer;
use streambus::{Client, ErrorKind, Message, Producer, ProducerOptions, Retention};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::cli::PublishArgs;
use crate::output::Lines;
use crate::topology::Topology;

/// Most stdin lines published in one pipeline; also bounds memory (with the
/// message size limit).
const CHUNK_LINES: usize = 1000;
/// Read buffer for stdin: enough for many lines per chunk from a file.
const STDIN_BUFFER: usize = 256 * 1024;

pub async fn run(client: &Client, args: PublishArgs, topology: Option<&Topology>) -> Result<()> {
    let partitions = super::partitions(args.partitions, topology, &args.stream)?;
    // --maxlen, else the stream's retention in the topology file, else none.
    let file_retention = topology
        .and_then(|t| t.stream(&args.stream))
        .map(|s| s.retention.0)
        .unwrap_or_default();
    let options = ProducerOptions {
        max_message_bytes: args.max_message_bytes,
        retention: args.maxlen.map_or(file_retention, Retention::max_len),
        ..Default::default()
    };

    // Check everything given as arguments before connecting: a bad argument
    // publishes nothing.
    let envelope = |text: String| -> Result<Message> {
        let mut m = Message::json_text(text)?;
        if let Some(t) = &args.kind {
            m = m.with_type(t.clone());
        }
        if let Some(k) = &args.key {
            m = m.with_key(k.clone());
        }
        check_size(&m, args.max_message_bytes)?;
        Ok(m)
    };
    let messages = if !args.fields.is_empty() {
        let m = Message::raw(args.fields.iter().cloned());
        check_size(&m, args.max_message_bytes)?;
        vec![m]
    } else {
        let mut messages = Vec::with_capacity(args.json.len());
        for (i, text) in args.json.iter().enumerate() {
            messages
                .push(envelope(text.clone()).with_context(|| format!("JSON argument {}", i + 1))?);
        }
        messages
    };

    let mut conn = super::connect(client).await?;
    // One look before writing, so a key of another type gets a plain message
    // (the pipelined XADD reports it in pipeline terms).
    let keys = match &partitions {
        Some(p) => p.keys().to_vec(),
        None => vec![args.stream.clone()],
    };
    for key in &keys {
        match require_stream(&mut conn, key).await {
            Err(e) if e.kind() != ErrorKind::NoStream => return Err(e.into()),
            _ => {}
        }
    }
    let producer = Producer::new(conn, options);
    let target = match partitions {
        // Batches per partition, never concurrent single publishes: on a
        // cluster, one pipeline must stay within one slot.
        Some(p) => Target::Partitioned(PartitionedProducer::new(producer, p)),
        None => Target::Plain {
            producer,
            stream: &args.stream,
        },
    };
    let mut out = Lines::stdout();
    if !messages.is_empty() {
        for line in target.send(messages).await? {
            out.line(line)?;
        }
        out.flush()?;
        return Ok(());
    }

    let stdin = BufReader::with_capacity(STDIN_BUFFER, tokio::io::stdin());
    let limit = args.max_message_bytes;
    publish_lines(&target, limit, stdin, &envelope, &mut out).await
}

/// Where the messages go: one stream, or the partitions of a logical stream.
enum Target<'a> {
    Plain { producer: Producer, stream: &'a str },
    Partitioned(PartitionedProducer),
}

impl Target<'_> {
    /// Publishes `messages` in one pipeline (one per partition); returns one
    /// output line per message, in order: the entry id, or
    /// `PARTITION_KEY ENTRY_ID`.
    async fn send(&self, messages: Vec<Message>) -> streambus::Result<Vec<String>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match self {
            Target::Plain { producer, stream } => producer
                .publish_batch(stream, messages)
                .await?
                .into_iter()
                .map(|id| id.to_string())
                .collect(),
            Target::Partitioned(p) => p
                .publish_batch(messages)
                .await?
                .into_iter()
                .map(|(key, id)| format!("{key} {id}"))
                .collect(),
        })
    }
}

/// Publishes one envelope per non-blank line, in chunks: a chunk is what is
/// already buffered (up to [`CHUNK_LINES`]), so a file goes in large pipelines
/// and a line typed by hand goes out at once. The next chunk is read while the
/// previous one is being published.
async fn publish_lines(
    target: &Target<'_>,
    limit: usize,
    mut input: BufReader<impl AsyncRead + Unpin>,
    envelope: &dyn Fn(String) -> Result<Message>,
    out: &mut Lines,
) -> Result<()> {
    let mut line_no = 0u64;
    let mut published = 0u64;
    let mut chunk = read_chunk(&mut input, &mut line_no, limit, envelope).await;
    loop {
        let (messages, failure) = match chunk {
            Ok(Chunk { messages, bad_line }) => (messages, bad_line),
            Err(e) => {
                return Err(e.context(format!(
                    "reading stdin ({} published)",
                    count_messages(published)
                )))
            }
        };
        let done = failure.is_some() || messages.is_empty();
        let send = target.send(messages);
        let next = async {
            if done {
                None
            } else {
                Some(read_chunk(&mut input, &mut line_no, limit, envelope).await)
            }
        };
        let (sent, next) = tokio::join!(send, next);
        let ids = sent.with_context(|| {
            format!(
                "publishing stdin ({} before this chunk published)",
                count_messages(published)
            )
        })?;
        published += ids.len() as u64;
        for line in ids {
            out.line(line)?;
        }
        out.flush()?;
        if let Some((n, e)) = failure {
            return Err(e.context(format!(
                "line {n} ({} before it published)",
                count_messages(published)
            )));
        }
        match next {
            Some(c) => chunk = c,
            None => return Ok(()),
        }
    }
}

struct Chunk {
    /// Valid messages, in order.
    messages: Vec<Message>,
    /// The first bad line, after `messages`: the messages before it are still
    /// published, none after it.
    bad_line: Option<(u64, anyhow::Error)>,
}

/// Reads one line (waiting for it if needed), then every further complete line
/// that is already buffered, up to [`CHUNK_LINES`]. An empty chunk means end of
/// input. Lines longer than the size limit are refused without being held in
/// memory whole.
async fn read_chunk(
    input: &mut BufReader<impl AsyncRead + Unpin>,
    line_no: &mut u64,
    limit: usize,
    envelope: &dyn Fn(String) -> Result<Message>,
) -> Result<Chunk> {
    let mut messages = Vec::new();
    let mut buf = Vec::new();
    while messages.len() < CHUNK_LINES {
        if !messages.is_empty() && !input.buffer().contains(&b'\n') {
            // The next line is not here yet: send what we have first.
            break;
        }
        buf.clear();
        // A valid line is at most `limit` bytes plus "\r\n".
        let max = limit as u64 + 2;
        let n = (&mut *input)
            .take(max + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            break;
        }
        *line_no += 1;
        if buf.len() as u64 > max && buf.last() != Some(&b'\n') {
            let e = anyhow::anyhow!(
                "line is longer than the message size limit of {limit} bytes; nothing was written for it"
            );
            return Ok(Chunk {
                messages,
                bad_line: Some((*line_no, e)),
            });
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(_) => {
                let e = anyhow::anyhow!("not valid UTF-8");
                return Ok(Chunk {
                    messages,
                    bad_line: Some((*line_no, e)),
                });
            }
        };
        if text.is_empty() {
            continue;
        }
        match envelope(text.to_owned()) {
            Ok(m) => messages.push(m),
            Err(e) => {
                return Ok(Chunk {
                    messages,
                    bad_line: Some((*line_no, e)),
                })
            }
        }
    }
    Ok(Chunk {
        messages,
        bad_line: None,
    })
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
