//! The ops API over inquiries and channels (bearer `api.ops_token`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;

use super::{ApiError, AppState, require_ops, settings};
use crate::inquiry::{Reference, Status};
use crate::routing::Caller;
use crate::store::{InquiryDetail, InquiryFilter};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// `GET /api/v1/inquiries/{reference}`
pub(super) async fn show(
    state: State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Result<Json<InquiryDetail>, ApiError> {
    // Ops see every inquiry; an associate sees those offered or assigned
    // to them.
    if let Caller::Associate(me) = super::associates::caller(&state, &headers)? {
        let id = Reference::to_id(&reference).unwrap_or(0);
        let holder = state
            .router
            .query(move |e| serde_json::json!(e.holder(id)))
            .await
            .ok();
        if holder.as_ref().and_then(|h| h.as_str()) != Some(me.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "inquiry {reference} is not offered or assigned to you"
            )));
        }
    }
    state
        .store
        .inquiry(&reference)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no inquiry {reference}")))
}

/// `GET /api/v1/inquiries?status=&channel=&limit=&cursor=`, newest first.
pub(super) async fn list(
    state: State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_ops(&settings(&state), &headers)?;
    let filter = parse_filter(&params)?;
    let page = state.store.list_inquiries(&filter).await?;
    Ok(Json(serde_json::json!({
        "inquiries": page.inquiries,
        "next_cursor": page.next,
    })))
}

fn parse_filter(params: &HashMap<String, String>) -> Result<InquiryFilter, ApiError> {
    let mut filter = InquiryFilter {
        limit: DEFAULT_LIMIT,
        ..InquiryFilter::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "status" => {
                filter.status = Some(value.parse::<Status>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "`status` must be one of open, offered, assigned, resolved (got `{value}`)"
                    ))
                })?)
            }
            "channel" => filter.channel = Some(value.clone()),
            "limit" => {
                filter.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "`limit` must be an integer from 1 to {MAX_LIMIT}"
                        ))
                    })?
            }
            "cursor" => filter.before = Some(value.clone()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter `{other}` (expected status, channel, limit, cursor)"
                )));
            }
        }
    }
    Ok(filter)
}

/// `GET /api/v1/channels`: configured channel instances.
pub(super) async fn channels(
    state: State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let settings = settings(&state);
    require_ops(&settings, &headers)?;
    let list: Vec<_> = settings
        .channels
        .ids()
        .into_iter()
        .map(|id| {
            let mut entry = serde_json::json!({
                "channel": id.to_string(),
                "adapter": id.adapter,
                "name": id.name,
                "can_reply": settings.channels.can_reply(&id),
            });
            if id.adapter == crate::inquiry::Adapter::Imap {
                entry["mailboxes"] =
                    serde_json::json!(crate::channels::imap::health::of_channel(&id.to_string()));
            }
            entry
        })
        .collect();
    Ok(Json(serde_json::json!({ "channels": list })))
}
