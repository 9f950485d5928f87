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

use crate::config::redact_url;

/// Opens a connection, naming it so operators can tell wxpush processes apart in the
/// management UI. Errors never carry the URL's password.
pub async fn connect(url: &str, purpose: &str) -> anyhow::Result<Connection> {
    let name = format!("wxpush {purpose} (pid {})", std::process::id());
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot connect to RabbitMQ at {}: {e}", redact_url(url)))
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
