//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// `GET /healthz`: the process is up and serving.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the store answers, migrations ran, and we are not draining.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if !state.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    match state.store.outbox_counts().await {
        Ok(c) => {
            metrics::gauge!("switchboard_outbox_entries", "status" => "pending")
                .set(c.pending as f64);
            metrics::gauge!("switchboard_outbox_entries", "status" => "sent").set(c.sent as f64);
            metrics::gauge!("switchboard_outbox_entries", "status" => "failed")
                .set(c.failed as f64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot count outbox entries for metrics"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
