//! WhatsApp Cloud API (Meta): `/webhooks/whatsapp/{name}`.
//!
//! - `GET`: the subscription handshake; answers `hub.challenge` when
//!   `hub.verify_token` matches (constant time), 403 otherwise.
//! - `POST`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body
//!   with the app secret>`. Messages (idempotent on their `wamid`) become
//!   messages; `statuses[]` update the delivery state of what we sent and
//!   never become inquiries. Changes for another phone number of the same
//!   app are left to the channel configured for it.
//!
//! Outbound: `POST {api_base}/{phone_number_id}/messages` (Bearer access
//! token), a text replying in context to the customer's message; the wamid
//! Meta returns is kept so status webhooks can find it.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::signature::verify_hmac_sha256_hex;
use super::support::{self, Pacer, Problems, id_field};
use super::{
    Answer, ChannelAdapter, Delivered, DeliveryError, DeliveryFuture, Inbound, InboundRequest,
    IntakeError, Outbound, ProviderStatus, classify_response,
};
use crate::config::secret::Secret;
use crate::inquiry::{
    Adapter, AttachmentMeta, ChannelId, Customer, IntakeOutcome, Medium, NewMessage, ThreadHints,
};

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const DEFAULT_API_BASE: &str = "https://graph.facebook.com/v21.0";
/// Graph API error codes that mean "slow down".
const RATE_LIMIT_CODES: [i64; 5] = [4, 80007, 130429, 131048, 131056];

/// `[channels.whatsapp.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Chosen by you and entered in the app's webhook settings.
    pub verify_token: Option<String>,
    pub verify_token_env: Option<String>,
    pub verify_token_file: Option<String>,
    /// The Meta app's secret: signs webhook bodies.
    pub app_secret: Option<String>,
    pub app_secret_env: Option<String>,
    pub app_secret_file: Option<String>,
    /// System-user access token: sends acknowledgements. Without it none
    /// are sent.
    pub access_token: Option<String>,
    pub access_token_env: Option<String>,
    pub access_token_file: Option<String>,
    /// The business phone number's id (not the number itself).
    pub phone_number_id: Option<String>,
    /// Default `https://graph.facebook.com/v21.0`.
    pub api_base: Option<String>,
    /// Messages from the same number within this window join the open
    /// inquiry. Default `24h` (WhatsApp's customer-service window); `0s`
    /// turns it off.
    #[serde(default, with = "humantime_serde")]
    pub follow_up_window: Option<Duration>,
    /// At most this many outbound messages per second.
    pub max_per_second: Option<f64>,
}

/// A configured WhatsApp business number.
#[derive(Debug)]
pub struct WhatsappChannel {
    id: ChannelId,
    verify_token: Secret,
    app_secret: Secret,
    access_token: Option<Secret>,
    phone_number_id: String,
    api_base: String,
    follow_up_window: Option<Duration>,
    pacer: Pacer,
}

impl WhatsappChannel {
    pub fn from_config(name: &str, config: &Config, base: &Path) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let verify_token = support::secret(
            "verify_token",
            (
                &config.verify_token,
                &config.verify_token_env,
                &config.verify_token_file,
            ),
            base,
            true,
            &mut problems,
        );
        let app_secret = support::secret(
            "app_secret",
            (
                &config.app_secret,
                &config.app_secret_env,
                &config.app_secret_file,
            ),
            base,
            true,
            &mut problems,
        );
        let access_token = support::secret(
            "access_token",
            (
                &config.access_token,
                &config.access_token_env,
                &config.access_token_file,
            ),
            base,
            false,
            &mut problems,
        );
        let phone_number_id =
            support::required("phone_number_id", &config.phone_number_id, &mut problems);
        if !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(("phone_number_id".into(), "expected digits".into()));
        }
        let api_base = support::base_url(
            "api_base",
            &config.api_base,
            DEFAULT_API_BASE,
            &mut problems,
        );
        support::check_rate(config.max_per_second, &mut problems);
        match (verify_token, app_secret) {
            (Some(verify_token), Some(app_secret)) if problems.is_empty() => Ok(WhatsappChannel {
                id: ChannelId::new(Adapter::Whatsapp, name),
                verify_token,
                app_secret,
                access_token,
                phone_number_id,
                api_base,
                follow_up_window: support::follow_up_window(config.follow_up_window),
                pacer: Pacer::new(config.max_per_second),
            }),
            _ => Err(problems),
        }
    }

    /// Checks `X-Hub-Signature-256` against the raw body.
    pub fn verify(&self, header: Option<&str>, body: &[u8]) -> Result<(), IntakeError> {
        verify_signature(self.app_secret.expose(), header, body)
    }

    fn key(&self, wamid: &str) -> String {
        format!("{}:{wamid}", self.id)
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        let payload: Payload =
            serde_json::from_slice(request.body).map_err(|e| support::json_error(&e))?;
        let mut messages = Vec::new();
        let mut statuses = Vec::new();
        for change in payload.entry.iter().flat_map(|e| e.changes.iter()) {
            if change.field != "messages" {
                continue;
            }
            let value = &change.value;
            let for_us = value
                .metadata
                .as_ref()
                .and_then(|m| m.phone_number_id.as_deref())
                .is_none_or(|id| id == self.phone_number_id);
            if !for_us {
                continue;
            }
            for m in &value.messages {
                if let Some(message) = self.message(request, value, m)? {
                    messages.push(message);
                }
            }
            for s in &value.statuses {
                statuses.push(ProviderStatus {
                    provider_message_id: id_field("statuses[].id", s.id.as_deref())?,
                    status: id_field("statuses[].status", s.status.as_deref())?,
                    detail: serde_json::json!({
                        "timestamp": s.timestamp,
                        "recipient_id": s.recipient_id,
                        "errors": s.errors,
                    }),
                });
            }
        }
        // Meta sends messages and statuses in separate notifications; should
        // one carry both, the messages are what must not be lost, and the
        // next status for the same wamid supersedes the skipped one anyway.
        if !messages.is_empty() {
            if !statuses.is_empty() {
                tracing::debug!(channel = %self.id, skipped = statuses.len(), "statuses beside messages not recorded");
            }
            Ok(Inbound::Messages(messages))
        } else if !statuses.is_empty() {
            Ok(Inbound::Statuses(statuses))
        } else {
            Ok(Inbound::Answer(ok()))
        }
    }

    fn message(
        &self,
        request: &InboundRequest<'_>,
        value: &Value,
        m: &WaMessage,
    ) -> Result<Option<NewMessage>, IntakeError> {
        let wamid = id_field("messages[].id", m.id.as_deref())?;
        let from = id_field("messages[].from", m.from.as_deref())?;
        let kind = m.kind.as_deref().unwrap_or("text");
        let media = |media: &Option<Media>| {
            media.as_ref().map(|x| AttachmentMeta {
                name: x.filename.clone(),
                content_type: x.mime_type.clone(),
                size: None,
                url: x.id.as_ref().map(|id| format!("whatsapp-media:{id}")),
            })
        };
        let (text, attachment) = match kind {
            "text" => (m.text.as_ref().and_then(|t| t.body.clone()), None),
            "image" => (
                m.image.as_ref().and_then(|x| x.caption.clone()),
                media(&m.image),
            ),
            "document" => (
                m.document.as_ref().and_then(|x| x.caption.clone()),
                media(&m.document),
            ),
            "audio" | "voice" => (None, media(&m.audio)),
            "video" => (
                m.video.as_ref().and_then(|x| x.caption.clone()),
                media(&m.video),
            ),
            "button" => (m.button.as_ref().and_then(|b| b.text.clone()), None),
            "interactive" => (
                m.interactive.as_ref().and_then(|i| {
                    i.button_reply
                        .as_ref()
                        .or(i.list_reply.as_ref())
                        .and_then(|r| r.title.clone())
                }),
                None,
            ),
            // Reactions, system notices, unsupported types: not a message
            // to answer.
            _ => return Ok(None),
        };
        if text.is_none() && attachment.is_none() {
            return Ok(None);
        }
        let name = value
            .contacts
            .iter()
            .find(|c| c.wa_id.as_deref() == Some(from.as_str()))
            .and_then(|c| c.profile.as_ref()?.name.clone());
        let mut thread = ThreadHints {
            follow_up_window: self.follow_up_window,
            ..ThreadHints::default()
        };
        if let Some(context) = m.context.as_ref().and_then(|c| c.id.as_deref()) {
            thread.refers_to.push(self.key(context));
        }
        thread.provides.push(self.key(&wamid));
        Ok(Some(NewMessage {
            channel: self.id.clone(),
            medium: Medium::Chat,
            provider_id: wamid.clone(),
            customer: Customer {
                name,
                phone: support::normalize_phone(&from),
                ..Customer::default()
            },
            customer_key: support::phone_customer_key(&from),
            subject: None,
            text: text.unwrap_or_default(),
            language: None,
            thread,
            attachments: attachment.into_iter().collect(),
            metadata: serde_json::json!({
                "type": kind,
                "wa_id": from,
                "timestamp": m.timestamp,
                "phone_number_id": self.phone_number_id,
            }),
            reply_context: serde_json::json!({"to": from, "message_id": wamid}),
            no_ack_reason: None,
            received_at: request.received_at,
        }))
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        out: &Outbound,
    ) -> Result<Delivered, DeliveryError> {
        let token = self
            .access_token
            .as_ref()
            .ok_or_else(|| DeliveryError::Permanent("no access_token configured".into()))?;
        let to = out.reply_context["to"]
            .as_str()
            .ok_or_else(|| DeliveryError::Permanent("no WhatsApp number to answer".into()))?;
        let mut body = serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"preview_url": false, "body": out.text},
        });
        if let Some(id) = out.reply_context["message_id"].as_str() {
            body["context"] = serde_json::json!({ "message_id": id });
        }
        self.pacer.wait().await?;
        let request = http
            .post(format!(
                "{}/{}/messages",
                self.api_base, self.phone_number_id
            ))
            .bearer_auth(token.expose())
            .json(&body);
        let (status, headers, json) = support::send_json(request).await?;
        if let Err(e) = classify_response(status, headers.get(reqwest::header::RETRY_AFTER)) {
            return Err(graph_error(e, &json));
        }
        let wamid = json["messages"][0]["id"]
            .as_str()
            .ok_or_else(|| DeliveryError::Transient("no message id in the answer".into()))?;
        Ok(Delivered {
            provider_message_id: Some(wamid.to_owned()),
        })
    }
}

/// Meta answers throttling with 400 and an error code: treat those as
/// "retry later", and name the code in every failure.
fn graph_error(e: DeliveryError, json: &serde_json::Value) -> DeliveryError {
    let Some(code) = json["error"]["code"].as_i64() else {
        return e;
    };
    let detail = format!(
        "Graph API error {code}: {}",
        support::excerpt(json["error"]["message"].as_str().unwrap_or(""))
    );
    if RATE_LIMIT_CODES.contains(&code) {
        return DeliveryError::RetryAfter {
            after: Duration::from_secs(60),
            reason: detail,
        };
    }
    match e {
        DeliveryError::Transient(r) => DeliveryError::Transient(format!("{r}; {detail}")),
        DeliveryError::Permanent(r) => DeliveryError::Permanent(format!("{r}; {detail}")),
        DeliveryError::RetryAfter { after, reason } => DeliveryError::RetryAfter {
            after,
            reason: format!("{reason}; {detail}"),
        },
    }
}

fn ok() -> Answer {
    Answer::text(http::StatusCode::OK, "")
}

/// `X-Hub-Signature-256` over the raw body.
pub fn verify_signature(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), IntakeError> {
    let header = header.ok_or_else(|| IntakeError::BadSignature("missing signature".into()))?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| IntakeError::BadSignature("invalid signature".into()))?;
    if verify_hmac_sha256_hex(secret.as_bytes(), body, hex) {
        Ok(())
    } else {
        Err(IntakeError::BadSignature("invalid signature".into()))
    }
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    value: Value,
}

#[derive(Deserialize)]
struct Value {
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<WaMessage>,
    #[serde(default)]
    statuses: Vec<Status>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct Contact {
    wa_id: Option<String>,
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    name: Option<String>,
}

#[derive(Deserialize)]
struct WaMessage {
    id: Option<String>,
    from: Option<String>,
    timestamp: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<Text>,
    image: Option<Media>,
    document: Option<Media>,
    audio: Option<Media>,
    video: Option<Media>,
    button: Option<Button>,
    interactive: Option<Interactive>,
    context: Option<Context>,
}

#[derive(Deserialize)]
struct Text {
    body: Option<String>,
}

#[derive(Deserialize)]
struct Media {
    id: Option<String>,
    mime_type: Option<String>,
    caption: Option<String>,
    filename: Option<String>,
}

#[derive(Deserialize)]
struct Button {
    text: Option<String>,
}

#[derive(Deserialize)]
struct Interactive {
    button_reply: Option<Reply>,
    list_reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    title: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    id: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    id: Option<String>,
    status: Option<String>,
    timestamp: Option<String>,
    recipient_id: Option<String>,
    errors: Option<serde_json::Value>,
}

impl ChannelAdapter for WhatsappChannel {
    fn id(&self) -> &ChannelId {
        &self.id
    }

    fn inbound(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        if request.method != http::Method::POST || !request.action.is_empty() {
            return Err(IntakeError::NotFound);
        }
        self.verify(request.header(SIGNATURE_HEADER), request.body)?;
        self.parse(request)
    }

    fn committed(&self, _request: &InboundRequest<'_>, _outcomes: &[IntakeOutcome]) -> Answer {
        ok()
    }

    /// `GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`
    fn verify_get(&self, request: &InboundRequest<'_>) -> Result<Answer, IntakeError> {
        if !request.action.is_empty() {
            return Err(IntakeError::NotFound);
        }
        let mut mode = None;
        let mut token = None;
        let mut challenge = None;
        for (k, v) in form_urlencoded::parse(request.query().as_bytes()) {
            match k.as_ref() {
                "hub.mode" => mode = Some(v.into_owned()),
                "hub.verify_token" => token = Some(v.into_owned()),
                "hub.challenge" => challenge = Some(v.into_owned()),
                _ => {}
            }
        }
        let token_ok = token
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(self.verify_token.expose().as_bytes())));
        if mode.as_deref() != Some("subscribe") || !token_ok {
            return Err(IntakeError::Forbidden);
        }
        let challenge = challenge
            .filter(|c| {
                !c.is_empty()
                    && c.len() <= 128
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .ok_or_else(|| IntakeError::Malformed("missing or odd `hub.challenge`".into()))?;
        Ok(Answer::text(http::StatusCode::OK, challenge))
    }

    fn can_reply(&self) -> bool {
        self.access_token.is_some()
    }

    fn deliver<'a>(&'a self, http: &'a reqwest::Client, out: &'a Outbound) -> DeliveryFuture<'a> {
        Box::pin(self.send(http, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::signature::hmac_sha256_hex;
    use chrono::Utc;

    /// Meta documents the scheme (HMAC-SHA256 of the payload with the app
    /// secret, `sha256=` + hex) but publishes no example values. The same
    /// header scheme (`X-Hub-Signature-256`) is GitHub's, whose docs publish
    /// this vector: secret "It's a Secret to Everybody", payload
    /// "Hello, World!".
    #[test]
    fn matches_the_published_x_hub_signature_256_example() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(
            verify_signature("It's a Secret to Everybody", Some(sig), b"Hello, World!").is_ok()
        );
        for (secret, header, body) in [
            (
                "It's a Secret to Everybody",
                Some(sig),
                &b"Hello, World?"[..],
            ),
            ("wrong", Some(sig), b"Hello, World!"),
            ("It's a Secret to Everybody", None, b"Hello, World!"),
            (
                "It's a Secret to Everybody",
                Some(&sig[7..]),
                b"Hello, World!",
            ),
            (
                "It's a Secret to Everybody",
                Some("sha256=zz"),
                b"Hello, World!",
            ),
        ] {
            assert!(matches!(
                verify_signature(secret, header, body),
                Err(IntakeError::BadSignature(_))
            ));
        }
    }

    fn channel() -> WhatsappChannel {
        let cfg = Config {
            verify_token: Some("vt".into()),
            app_secret: Some("as".into()),
            access_token: Some("at".into()),
            phone_number_id: Some("106540352242922".into()),
            ..Config::default()
        };
        WhatsappChannel::from_config("biz", &cfg, Path::new(".")).unwrap()
    }

    fn post(c: &WhatsappChannel, body: &serde_json::Value) -> Result<Inbound, IntakeError> {
        let raw = serde_json::to_vec(body).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            format!("sha256={}", hmac_sha256_hex(b"as", &raw))
                .parse()
                .unwrap(),
        );
        static POST: http::Method = http::Method::POST;
        c.inbound(&InboundRequest {
            method: &POST,
            path_and_query: "/webhooks/whatsapp/biz",
            action: "",
            headers: &headers,
            body: &raw,
            received_at: Utc::now(),
        })
    }

    /// The shape of Meta's documented text-message notification.
    fn text_notification(wamid: &str, phone_number_id: &str) -> serde_json::Value {
        serde_json::json!({
          "object": "whatsapp_business_account",
          "entry": [{
            "id": "102290129340398",
            "changes": [{
              "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
                "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
                "messages": [{
                  "from": "16505551234", "id": wamid, "timestamp": "1749416383",
                  "type": "text", "text": {"body": "Does it come in another color?"}
                }]
              },
              "field": "messages"
            }]
          }]
        })
    }

    #[test]
    fn text_message_is_normalized() {
        let c = channel();
        let wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=";
        let Inbound::Messages(m) = post(&c, &text_notification(wamid, "106540352242922")).unwrap()
        else {
            panic!()
        };
        let m = &m[0];
        assert_eq!(m.provider_id, wamid);
        assert_eq!(m.customer.name.as_deref(), Some("Sheena Nelson"));
        assert_eq!(m.customer_key.as_deref(), Some("tel:+16505551234"));
        assert_eq!(m.text, "Does it come in another color?");
        assert_eq!(m.reply_context["message_id"], wamid);
        // Another number of the same app: not this channel's.
        assert!(matches!(
            post(&c, &text_notification(wamid, "999")).unwrap(),
            Inbound::Answer(_)
        ));
    }

    #[test]
    fn statuses_are_statuses() {
        let c = channel();
        let body = serde_json::json!({
          "object": "whatsapp_business_account",
          "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": [{"id": "wamid.OUT1", "status": "delivered", "timestamp": "1750263773", "recipient_id": "16505551234"}]
          }}]}]
        });
        match post(&c, &body).unwrap() {
            Inbound::Statuses(s) => {
                assert_eq!(s[0].provider_message_id, "wamid.OUT1");
                assert_eq!(s[0].status, "delivered");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verification_handshake() {
        let c = channel();
        let get = |query: &str| {
            static GET: http::Method = http::Method::GET;
            let headers = http::HeaderMap::new();
            let path = format!("/webhooks/whatsapp/biz?{query}");
            c.verify_get(&InboundRequest {
                method: &GET,
                path_and_query: &path,
                action: "",
                headers: &headers,
                body: b"",
                received_at: Utc::now(),
            })
        };
        let ok = get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=vt").unwrap();
        assert_eq!(ok.body, "1158201444");
        assert!(matches!(
            get("hub.mode=subscribe&hub.challenge=1&hub.verify_token=nope"),
            Err(IntakeError::Forbidden)
        ));
        assert!(matches!(
            get("hub.challenge=1&hub.verify_token=vt"),
            Err(IntakeError::Forbidden)
        ));
        assert!(matches!(
            get("hub.mode=subscribe&hub.challenge=%3Cscript%3E&hub.verify_token=vt"),
            Err(IntakeError::Malformed(_))
        ));
    }

    #[test]
    fn throttling_codes_become_retry_after() {
        let json =
            serde_json::json!({"error": {"message": "(#130429) Rate limit hit", "code": 130429}});
        assert!(matches!(
            graph_error(DeliveryError::Permanent("400".into()), &json),
            DeliveryError::RetryAfter { .. }
        ));
        let json = serde_json::json!({"error": {"message": "Re-engagement", "code": 131047}});
        match graph_error(DeliveryError::Permanent("400".into()), &json) {
            DeliveryError::Permanent(r) => assert!(r.contains("131047"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
