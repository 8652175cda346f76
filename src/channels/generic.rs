//! The generic JSON webhook channel: any system that can POST signed JSON
//! (a contact form, a CRM, an in-house chat) becomes a Switchboard channel.
//!
//! Inbound: `POST /webhooks/generic/{name}` with
//! `X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
//! Outbound: acknowledgements are POSTed as JSON to `reply_url`, signed the
//! same way, with `X-Switchboard-Delivery` carrying a stable id per
//! acknowledgement so the receiver can drop a retried duplicate.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::signature::{hmac_sha256_hex, verify_hmac_sha256_hex};
use super::{
    Answer, ChannelAdapter, Delivered, DeliveryError, DeliveryFuture, Inbound, InboundRequest,
    IntakeError, Outbound, classify_response, classify_transport,
};
use crate::config::secret::{Secret, SecretSource};
use crate::inquiry::{
    Adapter, ChannelId, Customer, IntakeOutcome, Medium, NewMessage, ThreadHints,
};

/// The signature header, inbound and outbound.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// The per-acknowledgement id header on outbound requests.
pub const DELIVERY_HEADER: &str = "x-switchboard-delivery";

const MAX_ID_LEN: usize = 256;
const MAX_THREAD_LEN: usize = 512;

/// `[channels.generic.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HMAC-SHA256 key shared with the sender; signs both directions.
    pub secret: Option<String>,
    /// Name of an environment variable holding `secret`.
    pub secret_env: Option<String>,
    /// Path of a file holding `secret` (relative to the config file).
    pub secret_file: Option<String>,
    /// Where acknowledgements are POSTed. Without it the channel takes
    /// messages but sends no acknowledgements.
    pub reply_url: Option<String>,
}

/// A configured, validated generic channel instance.
#[derive(Debug)]
pub struct GenericChannel {
    pub id: ChannelId,
    secret: Secret,
    reply_url: Option<reqwest::Url>,
}

impl GenericChannel {
    /// Validates `config`; problems come back as `(key, message)` pairs
    /// with keys relative to this channel's table.
    pub fn from_config(
        name: &str,
        config: &Config,
        base: &Path,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let secret = SecretSource::new(
            "secret",
            &config.secret,
            &config.secret_env,
            &config.secret_file,
        )
        .resolve(base);
        let secret = match secret {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                problems.push((
                    "secret".to_owned(),
                    "required: give `secret`, `secret_env` or `secret_file`".to_owned(),
                ));
                None
            }
            Err(e) => {
                problems.push(("secret".to_owned(), e));
                None
            }
        };
        let reply_url = match &config.reply_url {
            None => None,
            Some(u) => match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
                Ok(_) => {
                    problems.push(("reply_url".to_owned(), "expected an http(s) URL".to_owned()));
                    None
                }
                Err(e) => {
                    problems.push(("reply_url".to_owned(), format!("not a URL: {e}")));
                    None
                }
            },
        };
        match secret {
            Some(secret) if problems.is_empty() => Ok(GenericChannel {
                id: ChannelId::new(Adapter::Generic, name),
                secret,
                reply_url,
            }),
            _ => Err(problems),
        }
    }

    /// Checks `X-Switchboard-Signature` against the raw body.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), IntakeError> {
        let header = header.ok_or_else(|| {
            IntakeError::BadSignature("missing X-Switchboard-Signature header".into())
        })?;
        let header = std::str::from_utf8(header)
            .map_err(|_| IntakeError::BadSignature("header is not ASCII".into()))?;
        let hex = header.trim().strip_prefix("sha256=").ok_or_else(|| {
            IntakeError::BadSignature("expected `sha256=<hex HMAC-SHA256 of the body>`".into())
        })?;
        if verify_hmac_sha256_hex(self.secret.expose().as_bytes(), body, hex) {
            Ok(())
        } else {
            Err(IntakeError::BadSignature(
                "signature does not match the body".into(),
            ))
        }
    }

    /// Normalizes a verified body into a [`NewMessage`].
    pub fn parse(&self, body: &[u8], now: DateTime<Utc>) -> Result<NewMessage, IntakeError> {
        Self::parse_body(&self.id, body, now)
    }

    /// Normalizes a body of this JSON shape into a [`NewMessage`] of
    /// `channel`, without a signature (for `switchboard test-rules` and
    /// other tools that replay messages).
    pub fn parse_body(
        channel: &ChannelId,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<NewMessage, IntakeError> {
        let payload: Payload = serde_json::from_slice(body)
            .map_err(|e| IntakeError::Malformed(format!("invalid JSON body: {e}")))?;
        let id = payload.id.trim();
        if id.is_empty() {
            return Err(IntakeError::Malformed("`id` must not be empty".into()));
        }
        if id.len() > MAX_ID_LEN {
            return Err(IntakeError::Malformed(format!(
                "`id` is longer than {MAX_ID_LEN} bytes"
            )));
        }
        if payload.text.trim().is_empty() {
            return Err(IntakeError::Malformed("`text` must not be empty".into()));
        }
        if let Some(lang) = &payload.language
            && !is_language_tag(lang)
        {
            return Err(IntakeError::Malformed(
                "`language` must be a BCP 47 tag such as `de` or `en-GB`".into(),
            ));
        }
        let metadata = match payload.metadata {
            None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
            Some(v @ serde_json::Value::Object(_)) => v,
            Some(_) => {
                return Err(IntakeError::Malformed(
                    "`metadata` must be a JSON object".into(),
                ));
            }
        };
        let mut thread = ThreadHints::default();
        if let Some(t) = payload
            .thread
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if t.len() > MAX_THREAD_LEN {
                return Err(IntakeError::Malformed(format!(
                    "`thread` is longer than {MAX_THREAD_LEN} bytes"
                )));
            }
            // Threads are scoped to this channel instance.
            let key = format!("{channel}:{t}");
            thread.refers_to.push(key.clone());
            thread.provides.push(key);
        }
        let from = payload.from.unwrap_or_default();
        let customer = Customer {
            name: non_empty(from.name),
            email: non_empty(from.email),
            phone: non_empty(from.phone),
            handle: non_empty(from.handle),
        };
        Ok(NewMessage {
            channel: channel.clone(),
            medium: Medium::Generic,
            provider_id: id.to_owned(),
            customer_key: customer.key(),
            customer,
            subject: non_empty(payload.subject),
            text: payload.text,
            language: payload.language,
            thread,
            attachments: Vec::new(),
            metadata,
            reply_context: serde_json::Value::Null,
            no_ack_reason: None,
            received_at: now,
        })
    }

    /// POSTs an acknowledgement to `reply_url`, signed like inbound calls.
    async fn post_reply(
        &self,
        http: &reqwest::Client,
        out: &Outbound,
    ) -> Result<Delivered, DeliveryError> {
        let Some(url) = &self.reply_url else {
            return Err(DeliveryError::Permanent(format!(
                "channel {} has no reply_url",
                self.id
            )));
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "inquiry": out.inquiry,
            "in_reply_to": out.in_reply_to,
            "text": out.text,
        }))
        .expect("a JSON object of strings serializes");
        let signature = format!(
            "sha256={}",
            hmac_sha256_hex(self.secret.expose().as_bytes(), &body)
        );
        let response = http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(DELIVERY_HEADER, out.delivery_id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| classify_transport(&e))?;
        let verdict = classify_response(
            response.status(),
            response.headers().get(reqwest::header::RETRY_AFTER),
        );
        super::support::discard_body(response).await;
        verdict?;
        Ok(Delivered::default())
    }
}

impl ChannelAdapter for GenericChannel {
    fn id(&self) -> &ChannelId {
        &self.id
    }

    fn inbound(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        if request.method != http::Method::POST || !request.action.is_empty() {
            return Err(IntakeError::NotFound);
        }
        self.verify(
            request.headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes()),
            request.body,
        )?;
        let message = self.parse(request.body, request.received_at)?;
        Ok(Inbound::Messages(vec![message]))
    }

    /// `202 {"inquiry", "duplicate": false}` for a new message,
    /// `200 {…, "duplicate": true}` for one we had.
    fn committed(&self, _request: &InboundRequest<'_>, outcomes: &[IntakeOutcome]) -> Answer {
        let Some(outcome) = outcomes.first() else {
            return Answer::json(http::StatusCode::OK, &serde_json::json!({}));
        };
        let status = if outcome.duplicate {
            http::StatusCode::OK
        } else {
            http::StatusCode::ACCEPTED
        };
        Answer::json(
            status,
            &serde_json::json!({ "inquiry": outcome.inquiry, "duplicate": outcome.duplicate }),
        )
    }

    fn can_reply(&self) -> bool {
        self.reply_url.is_some()
    }

    fn deliver<'a>(&'a self, http: &'a reqwest::Client, out: &'a Outbound) -> DeliveryFuture<'a> {
        Box::pin(self.post_reply(http, out))
    }
}

/// The inbound JSON contract. Unknown fields are ignored so senders can
/// add their own without breaking intake.
#[derive(Deserialize)]
struct Payload {
    id: String,
    from: Option<From>,
    subject: Option<String>,
    text: String,
    language: Option<String>,
    thread: Option<String>,
    metadata: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct From {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    handle: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A loose BCP 47 shape check: alphanumeric subtags of 1–8 joined by `-`,
/// starting with a 2–3 letter language.
pub(crate) fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let lang_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    lang_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> GenericChannel {
        let cfg = Config {
            secret: Some("s3cret".into()),
            reply_url: Some("http://127.0.0.1:9/replies".into()),
            ..Default::default()
        };
        GenericChannel::from_config("shop", &cfg, Path::new(".")).unwrap()
    }

    fn sign(body: &[u8]) -> String {
        format!("sha256={}", hmac_sha256_hex(b"s3cret", body))
    }

    #[test]
    fn accepts_a_correct_signature_only() {
        let c = channel();
        let body = br#"{"id":"1","text":"hi"}"#;
        assert!(c.verify(Some(sign(body).as_bytes()), body).is_ok());
        let upper = sign(body).to_uppercase().replace("SHA256=", "sha256=");
        assert!(c.verify(Some(upper.as_bytes()), body).is_ok());
        for bad in [
            None,
            Some(&b"sha256=00"[..]),
            Some(b"md5=abc"),
            Some(b"\xff"),
        ] {
            assert!(matches!(
                c.verify(bad, body),
                Err(IntakeError::BadSignature(_))
            ));
        }
        let tampered = br#"{"id":"1","text":"hI"}"#;
        assert!(c.verify(Some(sign(body).as_bytes()), tampered).is_err());
    }

    #[test]
    fn parses_the_contract() {
        let c = channel();
        let body = br#"{"id":" m-1 ","from":{"name":"Ada","email":"ada@example.org","phone":""},
            "subject":"Card","text":"my card is blocked","language":"en-GB","thread":"t9",
            "metadata":{"crm":"42"},"extra":true}"#;
        let m = c.parse(body, Utc::now()).unwrap();
        assert_eq!(m.provider_id, "m-1");
        assert_eq!(m.customer.name.as_deref(), Some("Ada"));
        assert_eq!(m.customer.phone, None);
        assert_eq!(m.language.as_deref(), Some("en-GB"));
        assert_eq!(m.thread.refers_to, vec!["generic/shop:t9".to_string()]);
        assert_eq!(m.metadata["crm"], "42");
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let c = channel();
        let cases: &[(&[u8], &str)] = &[
            (b"{not json", "invalid JSON"),
            (br#"{"text":"x"}"#, "missing field `id`"),
            (br#"{"id":"1"}"#, "missing field `text`"),
            (br#"{"id":"","text":"x"}"#, "`id` must not be empty"),
            (br#"{"id":"1","text":"  "}"#, "`text` must not be empty"),
            (br#"{"id":1,"text":"x"}"#, "invalid type"),
            (br#"{"id":"1","text":"x","language":"english!"}"#, "BCP 47"),
            (
                br#"{"id":"1","text":"x","metadata":[1]}"#,
                "`metadata` must be a JSON object",
            ),
            (b"\xff\xfe", "invalid JSON"),
        ];
        for (body, expected) in cases {
            match c.parse(body, Utc::now()) {
                Err(IntakeError::Malformed(msg)) => {
                    assert!(msg.contains(expected), "{msg:?} lacks {expected:?}")
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn config_problems_name_keys() {
        let cfg = Config {
            reply_url: Some("ftp://x".into()),
            ..Default::default()
        };
        let problems = GenericChannel::from_config("x", &cfg, Path::new(".")).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["secret", "reply_url"]);
    }

    #[test]
    fn language_tags() {
        for ok in ["de", "en-GB", "zh-Hant-TW", "gsw"] {
            assert!(is_language_tag(ok), "{ok}");
        }
        for bad in ["", "e", "english", "de_DE", "en-", "1a"] {
            assert!(!is_language_tag(bad), "{bad}");
        }
    }
}
