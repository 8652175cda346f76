//! Associate notifications: "you have an offer", "this is now yours",
//! delivered through the outbox like acknowledgements, so a crash neither
//! loses nor repeats one.
//!
//! The target comes from the live roster at delivery time: a changed
//! webhook URL applies to notifications still pending.

use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use serde_json::json;

use crate::channels::generic::DELIVERY_HEADER;
use crate::channels::{DeliveryError, classify_response, classify_transport};
use crate::config::Settings;
use crate::routing::roster::NotifyVia;
use crate::store::OutboxEntry;

/// Sends one notification entry; returns the text sent.
pub async fn deliver(
    http: &reqwest::Client,
    settings: &Settings,
    entry: &OutboxEntry,
) -> Result<String, DeliveryError> {
    let field = |name: &str| entry.payload.get(name).and_then(|v| v.as_str());
    let who = field("associate")
        .ok_or_else(|| DeliveryError::Permanent("notification without an associate".into()))?;
    let associate = settings
        .roster
        .get(who)
        .ok_or_else(|| DeliveryError::Permanent(format!("{who} is no longer on the roster")))?;
    let what = field("what").unwrap_or("offer");
    let text = text(entry, what);
    match &associate.notify {
        NotifyVia::None => Ok(text),
        NotifyVia::Webhook(url) => {
            let body = json!({
                "text": text,
                "associate": who,
                "inquiry": entry.reference,
                "what": what,
                "subject": entry.subject,
                "expires_at": entry
                    .payload
                    .get("expires_at")
                    .and_then(|v| v.as_i64())
                    .map(crate::routing::engine::ms_to_rfc3339),
            });
            let response = http
                .post(url.clone())
                .header(DELIVERY_HEADER, entry.id.to_string())
                .json(&body)
                .send()
                .await
                .map_err(|e| classify_transport(&e))?;
            classify_response(response.status(), response.headers().get("retry-after"))?;
            Ok(text)
        }
        NotifyVia::Email(address) => {
            let smtp = settings.smtp.as_ref().ok_or_else(|| {
                DeliveryError::Permanent(
                    "email notifications need an [smtp] section (not configured)".into(),
                )
            })?;
            let to: Mailbox = format!("{} <{address}>", associate.name)
                .parse()
                .or_else(|_| address.parse())
                .map_err(|e| DeliveryError::Permanent(format!("bad address {address}: {e}")))?;
            let subject = match what {
                "assignment" => format!("Assigned to you: {}", entry.reference),
                _ => format!("New offer: {}", entry.reference),
            };
            let message = Message::builder()
                .from(smtp.from().clone())
                .to(to)
                .subject(subject)
                // Notifications are machine mail: no auto-replies to them.
                .header(AutoSubmitted)
                .message_id(Some(format!(
                    "<notify-{}.{}@{}>",
                    entry.id,
                    entry.reference,
                    smtp.domain()
                )))
                .header(ContentType::TEXT_PLAIN)
                .body(text.clone())
                .map_err(|e| {
                    DeliveryError::Permanent(format!("cannot build the notification: {e}"))
                })?;
            smtp.send(message).await?;
            Ok(text)
        }
    }
}

/// `Auto-Submitted: auto-generated` (RFC 3834): a notification is not a
/// reply, and nobody should auto-reply to it.
#[derive(Debug, Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".into())
    }
}

fn text(entry: &OutboxEntry, what: &str) -> String {
    let subject = entry.subject.as_deref().unwrap_or("(no subject)");
    match what {
        "assignment" => format!("{} is now assigned to you: {subject}", entry.reference),
        _ => format!(
            "New offer {}: {subject} — accept or decline in Switchboard",
            entry.reference
        ),
    }
}
