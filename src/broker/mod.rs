//! RabbitMQ: connecting, declaring the topology, publishing with confirms, and the
//! `x-wxpush-*` headers. Used by `run`, `publish`, `replay`, `dead`, `demo` and `bench`.

pub mod dead_letter;
pub mod headers;
pub mod outcome;
pub mod publish;
pub mod topology;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Queue};

use crate::config::{AmqpConfig, redact_url};

/// How long one node may take to accept a connection before the next is tried.
const NODE_CONNECT_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// RabbitMQ's default `frame_max`, proposed when the URL names none (`?frame_max=N` in
/// `amqp.url` still wins, and a broker configured lower still lowers it).
///
/// Why propose it at all: lapin sizes each connection's receive and send buffers at 32
/// frames. Proposing nothing, it starts them at 32 × 4 KiB and, once the broker's
/// 128 KiB is agreed, grows them to 4 MiB each by filling them with zeros, so every
/// connection costs 8 MiB of resident memory from its first second (a worker has two).
/// Knowing the size up front, lapin allocates them once, and untouched pages cost nothing
/// until traffic reaches them.
pub const FRAME_MAX: u32 = 131_072;

/// Opens a connection, naming it so operators can tell wxpush processes apart in the
/// management UI. Errors never carry the URL's password.
pub async fn connect(url: &str, purpose: &str) -> anyhow::Result<Connection> {
    let name = format!("wxpush {purpose} (pid {})", std::process::id());
    let failed = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("cannot connect to RabbitMQ at {}: {e}", redact_url(url))
    };
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| failed(&e))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Connection::connect_uri(
        uri,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .map_err(|e| failed(&e))
}

/// Connects to the first node of the cluster (`amqp.urls`, or `amqp.url`) that accepts.
pub async fn connect_any(amqp: &AmqpConfig, purpose: &str) -> anyhow::Result<Connection> {
    Ok(connect_first(&amqp.nodes(), 0, purpose).await?.0)
}

/// Tries the nodes in order from `start` (wrapping around) and returns the first
/// connection made, with its node's index in `urls`. The error names every node's failure.
pub async fn connect_first(
    urls: &[String],
    start: usize,
    purpose: &str,
) -> anyhow::Result<(Connection, usize)> {
    let mut failures = Vec::new();
    for i in (0..urls.len()).map(|n| (start + n) % urls.len()) {
        match tokio::time::timeout(NODE_CONNECT_WITHIN, connect(&urls[i], purpose)).await {
            Ok(Ok(connection)) => return Ok((connection, i)),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push(format!(
                "{}: no answer within {NODE_CONNECT_WITHIN:?}",
                redact_url(&urls[i])
            )),
        }
    }
    if failures.is_empty() {
        anyhow::bail!("no RabbitMQ node configured (amqp.url / amqp.urls)");
    }
    anyhow::bail!("{}", failures.join("; "))
}

/// Looks at a queue without creating it (a passive declare): its ready-message and consumer
/// counts, or a 404 error if it does not exist (which closes the channel).
pub async fn inspect_queue(channel: &Channel, queue: &str) -> Result<Queue, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
}
