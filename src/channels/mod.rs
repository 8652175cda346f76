//! Channel adapters: one per provider, each verifying, normalizing and
//! answering on its own wire format. An adapter knows nothing of the store,
//! rules or associates; it turns provider bytes into a [`NewMessage`] and an
//! [`Outbound`] back into provider bytes.
//!
//! Adding a provider: a file here with its `Config` (serde, documented), a
//! type implementing [`ChannelAdapter`], its tests beside it; a field in
//! `config::ChannelsConfig` (built in `Settings::validate`). The API routes `/webhooks/<adapter>/<name>/…`
//! to it without further wiring.

pub mod generic;
pub mod imap;
pub mod signature;
pub mod slack;
pub mod smtp;
pub mod support;
pub mod telegram;
pub mod twilio;
pub mod whatsapp;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::inquiry::{Adapter, ChannelId, IntakeOutcome, NewMessage};
pub use crate::inquiry::{MessageEdit, ProviderStatus};

/// Why an inbound request was refused. Each maps to one HTTP status and one
/// `kind` label in the intake error metric.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntakeError {
    #[error("no {adapter} channel named `{name}` is configured")]
    UnknownChannel { adapter: &'static str, name: String },
    #[error("signature rejected: {0}")]
    BadSignature(String),
    /// Signed, but outside the provider's replay window (Slack's 5
    /// minutes): 401, counted apart from forgeries.
    #[error("signature rejected: request timestamp outside the allowed window")]
    Stale,
    #[error("{0}")]
    Malformed(String),
    #[error("body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// A verification handshake failed (wrong verify token): 403.
    #[error("forbidden")]
    Forbidden,
    /// Nothing answers this method or path on this channel: 404.
    #[error("not found")]
    NotFound,
}

impl IntakeError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IntakeError::UnknownChannel { .. } => "unknown_channel",
            IntakeError::BadSignature(_) => "bad_signature",
            IntakeError::Stale => "stale_timestamp",
            IntakeError::Malformed(_) => "malformed",
            IntakeError::TooLarge { .. } => "too_large",
            IntakeError::Forbidden => "forbidden",
            IntakeError::NotFound => "not_found",
        }
    }
}

/// One message Switchboard sends on a channel: an acknowledgement to the
/// customer (and, later, notifications).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbound {
    /// The outbox entry id: stable across retries, so receivers can dedupe.
    pub delivery_id: i64,
    pub inquiry: String,
    /// The provider id of the customer message this answers.
    pub in_reply_to: String,
    pub text: String,
    /// The HTML alternative, rendered only for channels that send one
    /// (email) and only when the template has an HTML variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// What the adapter stored at intake to address the answer.
    pub reply_context: serde_json::Value,
}

/// Why a delivery did not go through. The outbox decides from the variant
/// whether to try again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying with backoff: 5xx, timeout, connection refused.
    #[error("{0}")]
    Transient(String),
    /// The provider asked us to wait this long before the next try.
    #[error("{reason} (retry after {after:?})")]
    RetryAfter { after: Duration, reason: String },
    /// Retrying cannot help: 4xx, no such channel, no reply address.
    #[error("{0}")]
    Permanent(String),
}

/// An inbound webhook request as an adapter sees it.
#[derive(Debug)]
pub struct InboundRequest<'a> {
    pub method: &'a http::Method,
    /// Path and query exactly as received (Twilio signs the full URL).
    pub path_and_query: &'a str,
    /// The URL after `/webhooks/<adapter>/<name>/`: `sms`, `voice`,
    /// `voice/recording`, … or empty.
    pub action: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

impl InboundRequest<'_> {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query string, without the `?`.
    pub fn query(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
    }
}

/// An HTTP answer chosen by an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: http::StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub fn json(status: http::StatusCode, body: &serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    pub fn text(status: http::StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What a verified inbound request carries.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// Messages to commit; answer with [`ChannelAdapter::committed`] after.
    Messages(Vec<NewMessage>),
    /// Answer at once, nothing to store (handshakes, bot echoes, pings).
    Answer(Answer),
    /// Delivery-state updates of messages we sent; never inquiries.
    Statuses(Vec<ProviderStatus>),
    /// Edits of stored messages; never new inquiries.
    Edits(Vec<MessageEdit>),
}

/// What became of an outbound message at the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The provider's id for it, when it returns one (WhatsApp's wamid,
    /// Twilio's MessageSid), so later status updates can find it.
    pub provider_message_id: Option<String>,
}

pub type DeliveryFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Delivered, DeliveryError>> + Send + 'a>>;

/// One configured channel instance of some provider. Implementations live
/// one per file in this folder, each with its `Config`, parsing and tests.
pub trait ChannelAdapter: Send + Sync + fmt::Debug {
    fn id(&self) -> &ChannelId;

    /// Authenticates and normalizes a webhook request. Must not block or
    /// call out: the provider is waiting for the answer.
    fn inbound(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError>;

    /// The answer once the messages from `request` are committed (one
    /// outcome per message, in order).
    fn committed(&self, request: &InboundRequest<'_>, outcomes: &[IntakeOutcome]) -> Answer;

    /// Answers a GET on the webhook URL (e.g. WhatsApp's verification
    /// handshake). By default there is nothing there.
    fn verify_get(&self, _request: &InboundRequest<'_>) -> Result<Answer, IntakeError> {
        Err(IntakeError::NotFound)
    }

    /// Whether acknowledgements can be sent on this channel.
    fn can_reply(&self) -> bool;

    /// Whether this channel sends an HTML alternative beside the text
    /// (email) when the template has one. Others send the text only.
    fn sends_html(&self) -> bool {
        false
    }

    /// Sends `out` to the customer through the provider.
    fn deliver<'a>(&'a self, http: &'a reqwest::Client, out: &'a Outbound) -> DeliveryFuture<'a>;
}

/// The configured channel instances, built from settings and swapped whole
/// on reload.
#[derive(Debug, Default)]
pub struct Channels {
    by_id: BTreeMap<(Adapter, String), Arc<dyn ChannelAdapter>>,
}

impl Channels {
    pub fn insert(&mut self, channel: Arc<dyn ChannelAdapter>) {
        let id = channel.id().clone();
        self.by_id.insert((id.adapter, id.name), channel);
    }

    pub fn get(&self, adapter: Adapter, name: &str) -> Option<&Arc<dyn ChannelAdapter>> {
        self.by_id.get(&(adapter, name.to_owned()))
    }

    /// Looks a channel up by its `adapter/name` form, as stored.
    pub fn by_name(&self, channel: &str) -> Option<&Arc<dyn ChannelAdapter>> {
        let (adapter, name) = channel.split_once('/')?;
        let adapter = Adapter::parse(adapter)?;
        self.get(adapter, name)
    }

    /// Whether acknowledgements can be sent on `channel` at all.
    pub fn can_reply(&self, channel: &ChannelId) -> bool {
        self.get(channel.adapter, &channel.name)
            .is_some_and(|c| c.can_reply())
    }

    /// Whether the channel written as `adapter/name` sends HTML alternatives.
    pub fn sends_html(&self, channel: &str) -> bool {
        self.by_name(channel).is_some_and(|c| c.sends_html())
    }

    /// Every configured instance, for `/api/v1/channels` and `check`.
    pub fn ids(&self) -> Vec<ChannelId> {
        self.by_id.values().map(|c| c.id().clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Sends `out` on the channel written as `adapter/name`.
    pub async fn deliver(
        &self,
        http: &reqwest::Client,
        channel: &str,
        out: &Outbound,
    ) -> Result<Delivered, DeliveryError> {
        match self.by_name(channel) {
            Some(c) => c.deliver(http, out).await,
            None => Err(DeliveryError::Permanent(format!(
                "channel {channel} is no longer configured"
            ))),
        }
    }
}

/// Classifies an HTTP response from a provider or reply endpoint the way
/// every adapter should: 2xx done, 429 and 408 wait, other 4xx permanent,
/// 5xx transient.
pub(crate) fn classify_response(
    status: reqwest::StatusCode,
    retry_after: Option<&reqwest::header::HeaderValue>,
) -> Result<(), DeliveryError> {
    if status.is_success() {
        return Ok(());
    }
    if status.is_redirection() {
        // Not followed (see the dispatcher's client). The target is not
        // echoed: it may carry a token.
        return Err(DeliveryError::Permanent(format!(
            "endpoint answered {status}; redirects are not followed, so configure the address it redirects to"
        )));
    }
    let reason = format!("endpoint answered {status}");
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let after = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        return Err(DeliveryError::RetryAfter { after, reason });
    }
    if status == reqwest::StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        return Err(DeliveryError::Transient(reason));
    }
    Err(DeliveryError::Permanent(reason))
}

/// Classifies a transport error: all of them are worth a retry, but the
/// reason names the kind without echoing URLs that may carry tokens.
pub(crate) fn classify_transport(err: &reqwest::Error) -> DeliveryError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    DeliveryError::Transient(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn response_classes() {
        assert!(classify_response(StatusCode::ACCEPTED, None).is_ok());
        assert!(matches!(
            classify_response(StatusCode::BAD_GATEWAY, None),
            Err(DeliveryError::Transient(_))
        ));
        assert!(matches!(
            classify_response(StatusCode::NOT_FOUND, None),
            Err(DeliveryError::Permanent(_))
        ));
        assert!(matches!(
            classify_response(StatusCode::PERMANENT_REDIRECT, None),
            Err(DeliveryError::Permanent(reason)) if reason.contains("redirects are not followed")
        ));
        let h = reqwest::header::HeaderValue::from_static("7");
        match classify_response(StatusCode::TOO_MANY_REQUESTS, Some(&h)) {
            Err(DeliveryError::RetryAfter { after, .. }) => assert_eq!(after.as_secs(), 7),
            other => panic!("{other:?}"),
        }
    }
}
