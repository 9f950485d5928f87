//! The admin JSON API under `/api/` on `admin.listen`, guarded by [`super::auth`]:
//! `GET /api/events/{id}` answers an event's delivery record.
//!
//! Every refusal is answered with a JSON `{"error": …}` naming why, and logged.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::auth::Access;
use crate::store::{HotPath, Keys, event_record};
use crate::telemetry::ErrorChain;

/// What the API handlers need.
pub struct Api {
    pub access: Access,
    pub redis: HotPath,
    pub keys: Keys,
}

/// The `/api` routes, to be nested under `/api`.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/events/{id}", get(event))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api)
}

async fn authenticate(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    match api.access.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err((status, reason)) => {
            tracing::warn!(path = %request.uri().path(), status = status.as_u16(), reason, "admin API request refused");
            error(status, reason)
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn event(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let found = api
        .redis
        .run("event record", async |conn| {
            event_record::trace(conn, &api.keys, &id).await
        })
        .await;
    match found {
        Ok(Some(record)) => Json(json!({ "id": id, "record": record })).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no delivery record for event `{id}` (never received, or older than policy.idempotency_ttl)"
            ),
        ),
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "admin API: Redis unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, "Redis is unavailable")
        }
    }
}
