//! RabbitMQ: connecting, declaring the topology, publishing with confirms, and the
//! `x-wxpush-*` headers. Used by `run`, `publish`, `replay`, `dead`, `demo` and `bench`.

pub mod headers;
pub mod publish;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

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
