//! Channel adapters: one per provider, each verifying, normalizing and
//! answering on its own wire format. An adapter knows nothing of the store,
//! rules or associates; it turns provider bytes into a [`NewMessage`] and an
//! [`Outbound`] back into provider bytes.
//!
//! [`NewMessage`]: crate::inquiry::NewMessage

pub mod generic;
pub mod signature;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inquiry::{Adapter, ChannelId};

/// Why an inbound request was refused. Each maps to one HTTP status and one
/// `kind` label in the intake error metric.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntakeError {
    #[error("no {adapter} channel named `{name}` is configured")]
    UnknownChannel { adapter: &'static str, name: String },
    #[error("signature rejected: {0}")]
    BadSignature(String),
    #[error("{0}")]
    Malformed(String),
    #[error("body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
}

impl IntakeError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IntakeError::UnknownChannel { .. } => "unknown_channel",
            IntakeError::BadSignature(_) => "bad_signature",
            IntakeError::Malformed(_) => "malformed",
            IntakeError::TooLarge { .. } => "too_large",
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

/// The configured channel instances, built from settings and swapped whole
/// on reload.
#[derive(Debug, Default)]
pub struct Channels {
    pub generic: BTreeMap<String, Arc<generic::GenericChannel>>,
}

impl Channels {
    /// Whether acknowledgements can be sent on `channel` at all.
    pub fn can_reply(&self, channel: &ChannelId) -> bool {
        match channel.adapter {
            Adapter::Generic => self
                .generic
                .get(&channel.name)
                .is_some_and(|c| c.can_reply()),
            _ => false,
        }
    }

    /// Every configured instance, for `/api/v1/channels` and `check`.
    pub fn ids(&self) -> Vec<ChannelId> {
        self.generic
            .keys()
            .map(|n| ChannelId::new(Adapter::Generic, n.clone()))
            .collect()
    }

    /// Sends `out` on the channel written as `adapter/name`.
    pub async fn deliver(
        &self,
        http: &reqwest::Client,
        channel: &str,
        out: &Outbound,
    ) -> Result<(), DeliveryError> {
        let (adapter, name) = channel.split_once('/').unwrap_or((channel, ""));
        match adapter {
            "generic" => match self.generic.get(name) {
                Some(c) => c.deliver(http, out).await,
                None => Err(DeliveryError::Permanent(format!(
                    "channel {channel} is no longer configured"
                ))),
            },
            _ => Err(DeliveryError::Permanent(format!(
                "channel {channel} cannot send messages"
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
        let h = reqwest::header::HeaderValue::from_static("7");
        match classify_response(StatusCode::TOO_MANY_REQUESTS, Some(&h)) {
            Err(DeliveryError::RetryAfter { after, .. }) => assert_eq!(after.as_secs(), 7),
            other => panic!("{other:?}"),
        }
    }
}
