//! The HTTP face: webhooks in, the ops API, health and metrics.
//!
//! Handlers are thin: they authenticate, hand provider bytes to a channel
//! adapter, and pass the result to the pipeline. Every refusal is a JSON
//! `{"error": "..."}` with a status that tells the caller whether to retry.

mod associates;
mod forward;
mod health;
mod inquiries;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq;

use crate::channels::IntakeError;
use crate::config::Settings;
use crate::pipeline::Pipeline;

use crate::store::{Store, StoreError};

/// What every handler can reach. One `Arc`: axum clones the state for
/// each request several times (router, middleware, extractor), and cloning
/// the parts one by one cost a dozen contended atomic updates each time.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub settings: Arc<ArcSwap<Settings>>,
    pub store: Arc<Store>,
    pub pipeline: Pipeline,
    pub router: crate::routing::Router,
    pub metrics: PrometheusHandle,
    /// Cleared when shutdown begins, so `/readyz` sends traffic elsewhere.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Builds the router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route(
            "/webhooks/{adapter}/{name}",
            post(webhooks::webhook).get(webhooks::webhook),
        )
        .route(
            "/webhooks/{adapter}/{name}/{*action}",
            post(webhooks::webhook).get(webhooks::webhook),
        )
        .route("/api/v1/inquiries", get(inquiries::list))
        .route("/api/v1/inquiries/{reference}", get(inquiries::show))
        .route(
            "/api/v1/inquiries/{reference}/{action}",
            post(associates::act),
        )
        .route("/api/v1/channels", get(inquiries::channels))
        .route("/api/v1/associates", get(associates::list))
        .route(
            "/api/v1/associates/{id}/presence",
            put(associates::set_presence),
        )
        .route("/api/v1/associates/{id}/offers", get(associates::offers))
        .route(
            "/api/v1/associates/{id}/assignments",
            get(associates::assignments),
        )
        .route("/api/v1/queue", get(associates::queue))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::to_leader,
        ))
        .layer(middleware::from_fn(record_latency))
        .with_state(state)
}

async fn record_latency(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    metrics::histogram!(
        "switchboard_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .record(start.elapsed().as_secs_f64());
    response
}

/// An error answered to an HTTP caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Intake(#[from] IntakeError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// The store could not commit: the provider should retry later.
    #[error("temporarily unable to store the message; retry later")]
    Unavailable(#[source] StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Intake(IntakeError::UnknownChannel { .. } | IntakeError::NotFound)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Intake(IntakeError::Forbidden) | ApiError::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Intake(IntakeError::BadSignature(_) | IntakeError::Stale)
            | ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Intake(IntakeError::Malformed(_)) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Intake(IntakeError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(e) => {
                tracing::error!(error = %e, "request failed on the store");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot carry
            // another request, so say so instead of letting the client reuse it.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

/// Checks `Authorization: Bearer <api.ops_token>` in constant time.
fn require_ops(settings: &Settings, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &settings.ops_token else {
        return Err(ApiError::Unauthorized(
            "the API is disabled: no api.ops_token is configured".into(),
        ));
    };
    let given = bearer(headers)?;
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("invalid token".into()))
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into()))
}

/// Convenience for handlers: the current settings.
fn settings(state: &State<AppState>) -> Arc<Settings> {
    state.settings.load_full()
}
