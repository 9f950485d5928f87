//! Operator-facing HTTP on `admin.listen`: `/healthz` (the process is alive), `/readyz`
//! (broker, Redis and consumer up, no app stopped by a credential error), `/metrics`
//! (Prometheus text), the JSON API under `/api/` (`api.rs`, guarded by `auth.rs`) and the
//! operator console at `/` (`console`); both act through `ops.rs`.

pub mod api;
pub mod auth;
pub mod console;
pub mod metrics;
pub mod ops;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports; the worker flips these as connections come and go.
#[derive(Debug, Default)]
pub struct Health {
    pub amqp: AtomicBool,
    pub redis: AtomicBool,
    pub consuming: AtomicBool,
    pub apps_ok: AtomicBool,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            apps_ok: AtomicBool::new(true),
            ..Health::default()
        })
    }

    pub fn set(&self, flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
        ::metrics::gauge!(metrics::READY).set(if self.ready() { 1.0 } else { 0.0 });
        ::metrics::gauge!(metrics::CONSUMER_UP).set(if self.consuming.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
    }

    pub fn ready(&self) -> bool {
        [&self.amqp, &self.redis, &self.consuming, &self.apps_ok]
            .iter()
            .all(|f| f.load(Ordering::Relaxed))
    }

    fn report(&self) -> String {
        let flag = |f: &AtomicBool| {
            if f.load(Ordering::Relaxed) {
                "ok"
            } else {
                "down"
            }
        };
        format!(
            "amqp {}\nredis {}\nconsumer {}\napps {}\n",
            flag(&self.amqp),
            flag(&self.redis),
            flag(&self.consuming),
            if self.apps_ok.load(Ordering::Relaxed) {
                "ok"
            } else {
                "credential failure"
            }
        )
    }
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Binds the admin listener and serves it until `stop`. Returns the bound address (the
/// configured port may be 0 in tests).
pub async fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    api: Arc<api::Api>,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin.listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let state = AdminState {
        health,
        metrics: metrics::install(),
    };
    let rates = Arc::new(console::rates::Sampler::default());
    rates.spawn(state.metrics.clone());
    let console = Arc::new(console::Console {
        api: api.clone(),
        rates,
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { s.metrics.render() }),
        )
        .with_state(state)
        .nest("/api", api::router(api))
        .merge(console::router(console))
        // Nothing the admin listener takes needs more; bigger bodies are refused (413).
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(addr)
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let status = if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, s.health.report())
}
