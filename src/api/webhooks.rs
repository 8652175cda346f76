//! Provider webhooks: `/webhooks/<adapter>/<name>[/<action>]`.
//!
//! One handler serves every adapter: it finds the channel instance, reads
//! the raw body under the size limit, lets the adapter verify and normalize
//! it, commits what it carries through the pipeline, and only then answers
//! with what the adapter chooses (JSON, TwiML, a challenge).

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::{ApiError, AppState, settings};
use crate::channels::{Answer, Inbound, InboundRequest, IntakeError};
use crate::inquiry::Adapter;

/// The path of `/webhooks/{adapter}/{name}` and `…/{name}/{*action}`.
#[derive(Deserialize)]
pub(super) struct WebhookPath {
    adapter: String,
    name: String,
    #[serde(default)]
    action: String,
}

/// Every webhook route and method (a GET's body is simply empty).
pub(super) async fn webhook(
    state: State<AppState>,
    Path(path): Path<WebhookPath>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    handle(
        state,
        &path.adapter,
        &path.name,
        &path.action,
        method,
        uri,
        headers,
        body,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    state: State<AppState>,
    adapter_name: &str,
    name: &str,
    action: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let settings = settings(&state);
    let refuse = |e: IntakeError| intake_failed(adapter_name, name, e);
    // Read (within the limit) before any refusal, so the connection is
    // left clean for the client's next request.
    let body = read_body(&headers, body, settings.limits.max_body_bytes)
        .await
        .map_err(refuse)?;
    let adapter = Adapter::parse(adapter_name)
        .ok_or_else(|| ApiError::NotFound(format!("no channel adapter `{adapter_name}`")))?;
    let channel = settings
        .channels
        .get(adapter, name)
        .cloned()
        .ok_or_else(|| {
            refuse(IntakeError::UnknownChannel {
                adapter: adapter.as_str(),
                name: name.to_owned(),
            })
        })?;
    drop(settings);
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = InboundRequest {
        method: &method,
        path_and_query,
        action,
        headers: &headers,
        body: &body,
        received_at: Utc::now(),
    };
    let channel_id = channel.id().to_string();
    if method == Method::GET {
        return Ok(respond(channel.verify_get(&request).map_err(refuse)?));
    }
    let answer = match channel.inbound(&request).map_err(refuse)? {
        Inbound::Answer(answer) => answer,
        Inbound::Messages(messages) => {
            let mut outcomes = Vec::with_capacity(messages.len());
            for message in messages {
                outcomes.push(state.pipeline.accept(message).await?);
            }
            channel.committed(&request, &outcomes)
        }
        Inbound::Statuses(statuses) => {
            let matched = state.store.record_statuses(&channel_id, statuses).await?;
            tracing::debug!(channel = channel_id, matched, "delivery statuses recorded");
            channel.committed(&request, &[])
        }
        Inbound::Edits(edits) => {
            let changed = state.store.apply_edits(&channel_id, edits).await?;
            tracing::debug!(channel = channel_id, changed, "message edits applied");
            channel.committed(&request, &[])
        }
    };
    Ok(respond(answer))
}

fn respond(answer: Answer) -> Response {
    (
        answer.status,
        [(header::CONTENT_TYPE, answer.content_type)],
        answer.body,
    )
        .into_response()
}

fn intake_failed(adapter: &str, name: &str, error: IntakeError) -> ApiError {
    // Unknown names are not configured channels: do not let callers mint labels.
    let channel = match &error {
        IntakeError::UnknownChannel { .. } => format!("{adapter}/unknown"),
        _ => format!("{adapter}/{name}"),
    };
    metrics::counter!("switchboard_intake_errors_total", "channel" => channel.clone(), "kind" => error.kind())
        .increment(1);
    tracing::warn!(channel, kind = error.kind(), error = %error, "webhook refused");
    ApiError::Intake(error)
}

/// Reads the whole body, refusing more than `limit` bytes whether or not
/// the sender declared a Content-Length.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, IntakeError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IntakeError::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            IntakeError::TooLarge { limit }
        } else {
            IntakeError::Malformed(format!("could not read the request body: {e}"))
        }
    })
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}
