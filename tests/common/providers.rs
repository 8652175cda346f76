//! A local stand-in for the providers' outbound APIs (Twilio Messages,
//! Slack `chat.postMessage`, WhatsApp Cloud `/{id}/messages`, Telegram
//! `sendMessage`). Each request is checked the way the provider would
//! (auth, path, required fields); what was wrong is recorded, and the
//! answer comes from a per-provider script so tests can make a provider
//! throttle (429) or fail (500) before it accepts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;

pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "twilio-test-token";
pub const SLACK_SECRET: &str = "slack-signing-secret";
pub const SLACK_BOT_TOKEN: &str = "xoxb-test-bot-token";
pub const WA_VERIFY_TOKEN: &str = "wa-verify-token";
pub const WA_APP_SECRET: &str = "wa-app-secret";
pub const WA_ACCESS_TOKEN: &str = "wa-access-token";
pub const WA_PHONE_NUMBER_ID: &str = "106540352242922";
pub const TG_SECRET: &str = "tg-secret-token";
pub const TG_BOT_TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";

/// What a scripted answer looks like.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Ok,
    /// HTTP 429 with `Retry-After: 1` (Telegram: 429 with `retry_after` 1).
    Throttle,
    /// HTTP 500.
    Fail,
    /// Slack only: HTTP 200 with `{"ok": false, "error": "channel_not_found"}`.
    NotOk,
}

/// One request as the fake provider saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub provider: &'static str,
    pub path: String,
    /// Form fields (Twilio) or the JSON body.
    pub body: serde_json::Value,
    /// What the real provider would have refused; empty when valid.
    pub problems: Vec<String>,
}

#[derive(Default)]
struct FakeState {
    scripts: HashMap<&'static str, VecDeque<Reply>>,
    seen: Vec<Seen>,
    counter: u64,
}

type Shared = Arc<Mutex<FakeState>>;

#[derive(Clone)]
pub struct FakeProviders {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    state: Shared,
}

impl FakeProviders {
    pub async fn start() -> FakeProviders {
        let state = Shared::default();
        let app = axum::Router::new()
            .route(
                "/twilio/2010-04-01/Accounts/{sid}/Messages.json",
                post(twilio),
            )
            .route("/slack/api/chat.postMessage", post(slack))
            .route("/graph/v21.0/{phone}/messages", post(whatsapp))
            .route("/telegram/{bot}/sendMessage", post(telegram))
            .fallback(|uri: axum::http::Uri| async move {
                (StatusCode::NOT_FOUND, format!("no such API: {uri}"))
            })
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeProviders { base, state }
    }

    /// Answers for the next requests to `provider`, in order; `Ok` after.
    pub fn script(&self, provider: &'static str, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(provider, replies.iter().copied().collect());
    }

    pub fn seen(&self, provider: &str) -> Vec<Seen> {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.provider == provider)
            .cloned()
            .collect()
    }

    /// Config tables pointing every provider at this server.
    pub fn config(&self) -> String {
        format!(
            r#"
[channels.twilio.main]
account_sid = "{TWILIO_SID}"
auth_token = "{TWILIO_TOKEN}"
public_url = "https://support.example.com"
api_base = "{base}/twilio"
voice_language = "en-GB"

[channels.slack.team]
signing_secret = "{SLACK_SECRET}"
bot_token = "{SLACK_BOT_TOKEN}"
api_base = "{base}/slack/api"

[channels.whatsapp.biz]
verify_token = "{WA_VERIFY_TOKEN}"
app_secret = "{WA_APP_SECRET}"
access_token = "{WA_ACCESS_TOKEN}"
phone_number_id = "{WA_PHONE_NUMBER_ID}"
api_base = "{base}/graph/v21.0"

[channels.telegram.bot]
secret_token = "{TG_SECRET}"
bot_token = "{TG_BOT_TOKEN}"
api_base = "{base}/telegram"
"#,
            base = self.base
        )
    }
}

fn record(
    state: &Shared,
    provider: &'static str,
    path: String,
    body: serde_json::Value,
    problems: Vec<String>,
) -> (Reply, u64) {
    let mut s = state.lock().unwrap();
    s.counter += 1;
    let n = s.counter;
    s.seen.push(Seen {
        provider,
        path,
        body,
        problems,
    });
    let reply = s
        .scripts
        .get_mut(provider)
        .and_then(|q| q.pop_front())
        .unwrap_or(Reply::Ok);
    (reply, n)
}

fn bearer(headers: &HeaderMap, token: &str, problems: &mut Vec<String>) {
    let expected = format!("Bearer {token}");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        problems.push("missing or wrong bearer token".into());
    }
}

fn json_content(headers: &HeaderMap, problems: &mut Vec<String>) {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        problems.push(format!("content type {ct:?}, expected JSON"));
    }
}

fn require(body: &serde_json::Value, pointer: &str, problems: &mut Vec<String>) {
    let ok = match body.pointer(pointer) {
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Number(_)) => true,
        _ => false,
    };
    if !ok {
        problems.push(format!("missing {pointer}"));
    }
}

fn failure(reply: Reply) -> Option<Response> {
    match reply {
        Reply::Throttle => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                r#"{"error":"slow down"}"#,
            )
                .into_response(),
        ),
        Reply::Fail => Some((StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()),
        _ => None,
    }
}

async fn twilio(
    State(state): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut problems = Vec::new();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        problems.push("missing or wrong Basic auth".into());
    }
    if sid != TWILIO_SID {
        problems.push(format!("account {sid} in the path"));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/x-www-form-urlencoded" {
        problems.push(format!("content type {ct:?}"));
    }
    let form: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
        .collect();
    let form = serde_json::Value::Object(form);
    require(&form, "/To", &mut problems);
    require(&form, "/Body", &mut problems);
    if form.get("From").is_none() && form.get("MessagingServiceSid").is_none() {
        problems.push("neither From nor MessagingServiceSid".into());
    }
    let (reply, n) = record(
        &state,
        "twilio",
        format!("/2010-04-01/Accounts/{sid}/Messages.json"),
        form,
        problems.clone(),
    );
    if !problems.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"code": 21604, "message": problems.join("; ")})),
        )
            .into_response();
    }
    if let Some(r) = failure(reply) {
        return r;
    }
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"sid": format!("SMout{n}"), "status": "queued"})),
    )
        .into_response()
}

async fn slack(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut problems = Vec::new();
    bearer(&headers, SLACK_BOT_TOKEN, &mut problems);
    json_content(&headers, &mut problems);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    require(&json, "/channel", &mut problems);
    require(&json, "/text", &mut problems);
    let (reply, n) = record(
        &state,
        "slack",
        "/api/chat.postMessage".into(),
        json,
        problems.clone(),
    );
    if !problems.is_empty() {
        return axum::Json(serde_json::json!({"ok": false, "error": "invalid_auth"}))
            .into_response();
    }
    if let Some(r) = failure(reply) {
        return r;
    }
    if let Reply::NotOk = reply {
        return axum::Json(serde_json::json!({"ok": false, "error": "channel_not_found"}))
            .into_response();
    }
    axum::Json(serde_json::json!({"ok": true, "ts": format!("1700000000.{n:06}")})).into_response()
}

async fn whatsapp(
    State(state): State<Shared>,
    Path(phone): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut problems = Vec::new();
    bearer(&headers, WA_ACCESS_TOKEN, &mut problems);
    json_content(&headers, &mut problems);
    if phone != WA_PHONE_NUMBER_ID {
        problems.push(format!("phone number id {phone}"));
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if json["messaging_product"] != "whatsapp" {
        problems.push("messaging_product must be whatsapp".into());
    }
    if json["type"] != "text" {
        problems.push("type must be text".into());
    }
    require(&json, "/to", &mut problems);
    require(&json, "/text/body", &mut problems);
    let (reply, n) = record(
        &state,
        "whatsapp",
        format!("/v21.0/{phone}/messages"),
        json,
        problems.clone(),
    );
    if !problems.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": {"message": problems.join("; "), "code": 100}})),
        )
            .into_response();
    }
    if let Some(r) = failure(reply) {
        return r;
    }
    axum::Json(serde_json::json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": "x", "wa_id": "x"}],
        "messages": [{"id": format!("wamid.OUT{n}")}]
    }))
    .into_response()
}

async fn telegram(
    State(state): State<Shared>,
    Path(bot): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut problems = Vec::new();
    if bot != format!("bot{TG_BOT_TOKEN}") {
        problems.push("wrong bot token in the path".into());
    }
    json_content(&headers, &mut problems);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    require(&json, "/chat_id", &mut problems);
    require(&json, "/text", &mut problems);
    let chat_id = json["chat_id"].clone();
    let (reply, n) = record(
        &state,
        "telegram",
        "/bot<token>/sendMessage".into(),
        json,
        problems.clone(),
    );
    if !problems.is_empty() {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                serde_json::json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
            ),
        )
            .into_response();
    }
    match reply {
        Reply::Throttle => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({
                "ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1}
            })),
        )
            .into_response(),
        Reply::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        _ => axum::Json(serde_json::json!({
            "ok": true,
            "result": {"message_id": n, "chat": {"id": chat_id}}
        }))
        .into_response(),
    }
}
