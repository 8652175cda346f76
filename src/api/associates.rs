//! The associate and ops API over routing: presence, offers, assignments,
//! the queue, and the actions on an inquiry (accept, decline, resolve,
//! transfer).
//!
//! Associates authenticate with their own token and act only on their own
//! work; the ops token sees everything and may act for an associate by
//! naming them in the body (`{"associate": "anna"}`).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState, bearer, settings};
use crate::inquiry::{Reference, Status};
use crate::routing::engine::ms_to_rfc3339;
use crate::routing::service::CommandError;
use crate::routing::{Caller, Engine, Presence, RoutingError};
use crate::store::StoreError;

/// Who the bearer token belongs to.
pub(super) fn caller(state: &State<AppState>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let settings = settings(state);
    let given = bearer(headers)?;
    if let Some(ops) = &settings.ops_token
        && bool::from(given.as_bytes().ct_eq(ops.expose().as_bytes()))
    {
        return Ok(Caller::Ops);
    }
    settings
        .roster
        .by_token(given)
        .map(|a| Caller::Associate(a.id.clone()))
        .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))
}

fn require_self_or_ops(caller: &Caller, id: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Ops => Ok(()),
        Caller::Associate(me) if me == id => Ok(()),
        Caller::Associate(_) => Err(ApiError::Forbidden(
            "associates may only see and act on their own work".into(),
        )),
    }
}

fn require_ops_caller(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Ops => Ok(()),
        Caller::Associate(_) => Err(ApiError::Forbidden("this needs the ops token".into())),
    }
}

fn known_associate(state: &State<AppState>, id: &str) -> Result<(), ApiError> {
    if settings(state).roster.get(id).is_some() {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no associate `{id}` in the roster"
        )))
    }
}

/// `GET /api/v1/associates` (ops)
pub(super) async fn list(
    state: State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_ops_caller(&caller(&state, &headers)?)?;
    let associates = state
        .router
        .query(|e| json!(e.associates()))
        .await
        .map_err(command)?;
    Ok(Json(json!({ "associates": associates })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    presence: String,
}

/// `PUT /api/v1/associates/{id}/presence` `{"presence": "available"}`
pub(super) async fn set_presence(
    state: State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&state, &headers)?;
    require_self_or_ops(&who, &id)?;
    known_associate(&state, &id)?;
    let body: PresenceBody = parse_body(&body)?.ok_or_else(|| {
        ApiError::BadRequest("expected a JSON body `{\"presence\": \"available\"}`".into())
    })?;
    let presence = Presence::parse(&body.presence).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "`presence` must be one of available, busy, away, offline (got `{}`)",
            body.presence
        ))
    })?;
    state
        .router
        .set_presence(&id, presence)
        .await
        .map_err(command)?;
    Ok(Json(json!({ "associate": id, "presence": presence })))
}

/// `GET /api/v1/associates/{id}/offers`
pub(super) async fn offers(
    state: State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    own_work(&state, id, &headers, "offers", |e, id| {
        e.offers_of(id)
            .into_iter()
            .map(|(reference, _, expires)| {
                json!({ "inquiry": reference, "expires_at": ms_to_rfc3339(expires) })
            })
            .collect()
    })
    .await
}

/// `GET /api/v1/associates/{id}/assignments`
pub(super) async fn assignments(
    state: State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    own_work(&state, id, &headers, "assignments", |e, id| {
        e.assignments_of(id)
            .into_iter()
            .map(|(reference, _)| json!({ "inquiry": reference }))
            .collect()
    })
    .await
}

/// Answers `{key: [...]}` listing associate `id`'s work, for them or ops.
async fn own_work(
    state: &State<AppState>,
    id: String,
    headers: &HeaderMap,
    key: &str,
    list: impl FnOnce(&Engine, &str) -> Vec<Value> + Send + 'static,
) -> Result<Json<Value>, ApiError> {
    require_self_or_ops(&caller(state, headers)?, &id)?;
    known_associate(state, &id)?;
    let items = state
        .router
        .query(move |e| json!(list(e, &id)))
        .await
        .map_err(command)?;
    Ok(Json(json!({ key: items })))
}

/// `GET /api/v1/queue` (ops): waiting inquiries in offer order.
pub(super) async fn queue(
    state: State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_ops_caller(&caller(&state, &headers)?)?;
    let now = chrono::Utc::now().timestamp_millis();
    let waiting = state
        .router
        .query(move |e| json!(e.queue(now)))
        .await
        .map_err(command)?;
    Ok(Json(json!({ "waiting": waiting })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Ops acting for an associate.
    associate: Option<String>,
    note: Option<String>,
    /// Transfer target; absent for back to the queue.
    to: Option<String>,
}

/// `POST /api/v1/inquiries/{ref}/{action}` for accept, decline, resolve,
/// transfer.
pub(super) async fn act(
    state: State<AppState>,
    Path((reference, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&state, &headers)?;
    let body: ActionBody = parse_body(&body)?.unwrap_or_default();
    if let (Caller::Associate(_), Some(_)) = (&who, &body.associate) {
        return Err(ApiError::Forbidden(
            "only ops may act for another associate".into(),
        ));
    }
    if let Some(a) = &body.associate {
        known_associate(&state, a)?;
    }
    let acting = who.acting_as(body.associate.as_deref()).map(str::to_owned);
    let id = Reference::to_id(&reference)
        .ok_or_else(|| ApiError::NotFound(format!("no inquiry {reference}")))?;
    let need_acting = || {
        acting.clone().ok_or_else(|| {
            ApiError::BadRequest("ops must name the associate: `{\"associate\": \"id\"}`".into())
        })
    };
    if !matches!(
        action.as_str(),
        "accept" | "decline" | "resolve" | "transfer"
    ) {
        return Err(ApiError::NotFound(format!(
            "no action `{action}`: use accept, decline, resolve or transfer"
        )));
    }
    let router = &state.router;
    // A new or reopened inquiry reaches the router just after its commit:
    // an action in that moment waits for it instead of being told that an
    // open inquiry is not open.
    let deadline = tokio::time::Instant::now() + ROUTER_CATCH_UP;
    let result = loop {
        let result = match action.as_str() {
            "accept" => router.accept(id, &need_acting()?).await,
            "decline" => router.decline(id, &need_acting()?).await,
            "resolve" => {
                router
                    .resolve(id, acting.as_deref(), body.note.clone())
                    .await
            }
            _ => {
                router
                    .transfer(id, acting.as_deref(), body.to.as_deref(), body.note.clone())
                    .await
            }
        };
        if !matches!(result, Err(CommandError::Routing(RoutingError::NotOpen)))
            || tokio::time::Instant::now() >= deadline
            || !stored_open(&state, &reference).await?
        {
            break result;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match result {
        Ok(()) => {
            tracing::info!(inquiry = %reference, action, associate = acting.as_deref().unwrap_or("ops"), "inquiry action");
            Ok(Json(
                json!({ "inquiry": reference, "action": action, "ok": true }),
            ))
        }
        Err(CommandError::Routing(RoutingError::NotOpen)) => {
            match state.store.inquiry(&reference).await? {
                Some(detail) if detail.inquiry.status == Status::Resolved => Err(
                    ApiError::Conflict(format!("inquiry {reference} is resolved")),
                ),
                Some(_) => Err(ApiError::Unavailable(StoreError::Unavailable(format!(
                    "inquiry {reference} is not routed yet; retry"
                )))),
                None => Err(ApiError::NotFound(format!("no inquiry {reference}"))),
            }
        }
        Err(e) => Err(command(e)),
    }
}

/// How long an action waits for the router to take an inquiry that the
/// store already holds as open.
const ROUTER_CATCH_UP: Duration = Duration::from_secs(2);

/// Whether the store holds `reference` as not resolved.
async fn stored_open(state: &AppState, reference: &str) -> Result<bool, ApiError> {
    Ok(state
        .store
        .inquiry(reference)
        .await?
        .is_some_and(|d| d.inquiry.status != Status::Resolved))
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn command(e: CommandError) -> ApiError {
    match e {
        CommandError::Routing(r) => match r {
            RoutingError::NotOpen => ApiError::Conflict(r.to_string()),
            RoutingError::UnknownAssociate(_) => ApiError::NotFound(r.to_string()),
            RoutingError::NotYours => ApiError::Forbidden(r.to_string()),
            RoutingError::OfferExpired | RoutingError::Conflict(_) => {
                ApiError::Conflict(r.to_string())
            }
        },
        CommandError::Store(s) => ApiError::Unavailable(s),
        CommandError::Closed => ApiError::Unavailable(crate::store::StoreError::Closed),
        CommandError::NotLeader(_) => ApiError::Unavailable(crate::store::StoreError::Unavailable(
            "this instance is not the routing leader; retry".into(),
        )),
    }
}
