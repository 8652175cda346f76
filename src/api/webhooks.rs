//! Provider webhooks: `/webhooks/<adapter>/{name}`. Each handler reads the
//! raw body under the size limit, lets the adapter verify and normalize it,
//! and answers only after the pipeline has committed the message.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::{ApiError, AppState, settings};
use crate::channels::IntakeError;
use crate::channels::generic::SIGNATURE_HEADER;

/// `POST /webhooks/generic/{name}`
pub(super) async fn generic(
    state: State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let settings = settings(&state);
    let result = async {
        let channel = settings
            .channels
            .generic
            .get(&name)
            .cloned()
            .ok_or_else(|| IntakeError::UnknownChannel {
                adapter: "generic",
                name: name.clone(),
            })?;
        let body = read_body(&headers, body, settings.limits.max_body_bytes).await?;
        channel.verify(headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes()), &body)?;
        let message = channel.parse(&body, Utc::now())?;
        Ok::<_, IntakeError>((channel, message))
    }
    .await;
    drop(settings);
    let (channel, message) = result.map_err(|e| intake_failed("generic", &name, e))?;
    let outcome = state.pipeline.accept(message).await?;
    tracing::debug!(
        channel = %channel.id,
        inquiry = %outcome.inquiry,
        duplicate = outcome.duplicate,
        "webhook accepted"
    );
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = serde_json::json!({
        "inquiry": outcome.inquiry,
        "duplicate": outcome.duplicate,
    });
    Ok((status, axum::Json(body)).into_response())
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
