//! Telegram Bot API: `POST /webhooks/telegram/{name}`.
//!
//! Inbound: `X-Telegram-Bot-Api-Secret-Token` must equal the `secret_token`
//! given to `setWebhook` (compared in constant time). A `message` from a
//! person becomes a message; `edited_message` edits the stored one instead
//! of opening an inquiry; bots and other update kinds are acknowledged and
//! dropped.
//!
//! Idempotency: Telegram re-sends an update (same `update_id`) until it gets
//! a 2xx; the update's message identity `<chat_id>:<message_id>` is the
//! provider id, so a re-sent update is a duplicate and a later edit finds
//! the message it changes. The `update_id` is kept in the metadata.
//!
//! Outbound: `sendMessage` with `reply_parameters` pointing at the
//! customer's message. The bot token is part of the URL path, so URLs are
//! never logged.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::support::{self, Pacer, Problems};
use super::{
    Answer, ChannelAdapter, Delivered, DeliveryError, DeliveryFuture, Inbound, InboundRequest,
    IntakeError, MessageEdit, Outbound, classify_response,
};
use crate::config::secret::Secret;
use crate::inquiry::{
    Adapter, AttachmentMeta, ChannelId, Customer, IntakeOutcome, Medium, NewMessage, ThreadHints,
};

pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";

/// `[channels.telegram.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `secret_token` passed to `setWebhook` (1–256 of `A-Z a-z 0-9 _ -`).
    pub secret_token: Option<String>,
    pub secret_token_env: Option<String>,
    pub secret_token_file: Option<String>,
    /// The bot's token from @BotFather: sends acknowledgements. Without it
    /// none are sent.
    pub bot_token: Option<String>,
    pub bot_token_env: Option<String>,
    pub bot_token_file: Option<String>,
    /// Default `https://api.telegram.org`.
    pub api_base: Option<String>,
    /// Messages from the same user within this window join the open
    /// inquiry. Default `24h`; `0s` turns it off.
    #[serde(default, with = "humantime_serde")]
    pub follow_up_window: Option<Duration>,
    /// At most this many outbound messages per second (Telegram allows
    /// about 30 per bot).
    pub max_per_second: Option<f64>,
}

/// A configured Telegram bot.
#[derive(Debug)]
pub struct TelegramChannel {
    id: ChannelId,
    secret_token: Secret,
    bot_token: Option<Secret>,
    api_base: String,
    follow_up_window: Option<Duration>,
    pacer: Pacer,
}

impl TelegramChannel {
    pub fn from_config(name: &str, config: &Config, base: &Path) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let secret_token = support::secret(
            "secret_token",
            (
                &config.secret_token,
                &config.secret_token_env,
                &config.secret_token_file,
            ),
            base,
            true,
            &mut problems,
        );
        if let Some(s) = &secret_token {
            let v = s.expose();
            if v.len() > 256
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                problems.push((
                    "secret_token".into(),
                    "Telegram allows 1-256 of A-Z, a-z, 0-9, `_` and `-`".into(),
                ));
            }
        }
        let bot_token = support::secret(
            "bot_token",
            (
                &config.bot_token,
                &config.bot_token_env,
                &config.bot_token_file,
            ),
            base,
            false,
            &mut problems,
        );
        let api_base = support::base_url(
            "api_base",
            &config.api_base,
            DEFAULT_API_BASE,
            &mut problems,
        );
        support::check_rate(config.max_per_second, &mut problems);
        match secret_token {
            Some(secret_token) if problems.is_empty() => Ok(TelegramChannel {
                id: ChannelId::new(Adapter::Telegram, name),
                secret_token,
                bot_token,
                api_base,
                follow_up_window: support::follow_up_window(config.follow_up_window),
                pacer: Pacer::new(config.max_per_second),
            }),
            _ => Err(problems),
        }
    }

    /// Compares the secret-token header in constant time.
    pub fn verify(&self, header: Option<&[u8]>) -> Result<(), IntakeError> {
        let given =
            header.ok_or_else(|| IntakeError::BadSignature("missing secret token".into()))?;
        if bool::from(given.ct_eq(self.secret_token.expose().as_bytes())) {
            Ok(())
        } else {
            Err(IntakeError::BadSignature("invalid secret token".into()))
        }
    }

    fn key(&self, chat: i64, message: i64) -> String {
        format!("{}:{chat}:{message}", self.id)
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        let update: Update =
            serde_json::from_slice(request.body).map_err(|e| support::json_error(&e))?;
        if let Some(edited) = update.edited_message {
            let Some(text) = edited.text.or(edited.caption) else {
                return Ok(Inbound::Answer(ok()));
            };
            return Ok(Inbound::Edits(vec![MessageEdit {
                provider_id: format!("{}:{}", edited.chat.id, edited.message_id),
                text,
            }]));
        }
        let Some(message) = update.message else {
            // channel posts, callback queries, member updates, …
            return Ok(Inbound::Answer(ok()));
        };
        let Some(from) = message.from.as_ref().filter(|f| !f.is_bot) else {
            return Ok(Inbound::Answer(ok()));
        };
        let mut attachments = Vec::new();
        if let Some(photo) = message.photo.as_ref().and_then(|p| p.last()) {
            attachments.push(file(photo, Some("image/jpeg")));
        }
        for f in [
            &message.document,
            &message.audio,
            &message.voice,
            &message.video,
        ]
        .into_iter()
        .flatten()
        {
            attachments.push(file(f, None));
        }
        let text = message
            .text
            .clone()
            .or_else(|| message.caption.clone())
            .unwrap_or_default();
        if text.trim().is_empty() && attachments.is_empty() {
            // Stickers, joins, pins: nothing to answer.
            return Ok(Inbound::Answer(ok()));
        }
        let chat = message.chat.id;
        let mut thread = ThreadHints {
            follow_up_window: self.follow_up_window,
            ..ThreadHints::default()
        };
        if let Some(replied) = &message.reply_to_message {
            thread.refers_to.push(self.key(chat, replied.message_id));
        }
        thread.provides.push(self.key(chat, message.message_id));
        let name = [from.first_name.as_deref(), from.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let language = from
            .language_code
            .clone()
            .filter(|l| super::generic::is_language_tag(l));
        Ok(Inbound::Messages(vec![NewMessage {
            channel: self.id.clone(),
            medium: Medium::Chat,
            provider_id: format!("{chat}:{}", message.message_id),
            customer: Customer {
                name: Some(name).filter(|n| !n.trim().is_empty()),
                handle: Some(
                    from.username
                        .as_ref()
                        .map(|u| format!("@{u}"))
                        .unwrap_or_else(|| from.id.to_string()),
                ),
                ..Customer::default()
            },
            customer_key: Some(format!("telegram:{}", from.id)),
            subject: None,
            text,
            language,
            thread,
            attachments,
            metadata: serde_json::json!({
                "update_id": update.update_id,
                "chat_id": chat,
                "chat_type": message.chat.kind,
                "date": message.date,
            }),
            reply_context: serde_json::json!({"chat_id": chat, "message_id": message.message_id}),
            no_ack_reason: None,
            received_at: request.received_at,
        }]))
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        out: &Outbound,
    ) -> Result<Delivered, DeliveryError> {
        let token = self
            .bot_token
            .as_ref()
            .ok_or_else(|| DeliveryError::Permanent("no bot_token configured".into()))?;
        let chat = out.reply_context["chat_id"]
            .as_i64()
            .ok_or_else(|| DeliveryError::Permanent("no Telegram chat to answer in".into()))?;
        let mut body = serde_json::json!({"chat_id": chat, "text": out.text});
        if let Some(id) = out.reply_context["message_id"].as_i64() {
            body["reply_parameters"] =
                serde_json::json!({"message_id": id, "allow_sending_without_reply": true});
        }
        self.pacer.wait().await?;
        let request = http
            .post(format!(
                "{}/bot{}/sendMessage",
                self.api_base,
                token.expose()
            ))
            .json(&body);
        let (status, headers, json) = support::send_json(request).await?;
        let description = support::excerpt(json["description"].as_str().unwrap_or(""));
        if let Some(after) = json["parameters"]["retry_after"].as_u64() {
            return Err(DeliveryError::RetryAfter {
                after: Duration::from_secs(after),
                reason: format!("Telegram asked to wait: {description}"),
            });
        }
        classify_response(status, headers.get(reqwest::header::RETRY_AFTER)).map_err(
            |e| match e {
                DeliveryError::Permanent(r) => {
                    DeliveryError::Permanent(format!("{r}: {description}"))
                }
                other => other,
            },
        )?;
        if json["ok"].as_bool() != Some(true) {
            return Err(DeliveryError::Permanent(format!(
                "sendMessage failed: {description}"
            )));
        }
        Ok(Delivered {
            provider_message_id: json["result"]["message_id"]
                .as_i64()
                .map(|id| format!("{chat}:{id}")),
        })
    }
}

fn ok() -> Answer {
    Answer::text(http::StatusCode::OK, "")
}

fn file(f: &TgFile, content_type: Option<&str>) -> AttachmentMeta {
    AttachmentMeta {
        name: f.file_name.clone(),
        content_type: f
            .mime_type
            .clone()
            .or_else(|| content_type.map(str::to_owned)),
        size: f.file_size,
        url: Some(format!("telegram-file:{}", f.file_id)),
    }
}

#[derive(Deserialize)]
struct Update {
    update_id: i64,
    message: Option<Message>,
    edited_message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    message_id: i64,
    from: Option<User>,
    chat: Chat,
    date: Option<i64>,
    text: Option<String>,
    caption: Option<String>,
    reply_to_message: Option<Box<Replied>>,
    photo: Option<Vec<TgFile>>,
    document: Option<TgFile>,
    audio: Option<TgFile>,
    voice: Option<TgFile>,
    video: Option<TgFile>,
}

#[derive(Deserialize)]
struct Replied {
    message_id: i64,
}

#[derive(Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    language_code: Option<String>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct TgFile {
    file_id: String,
    file_name: Option<String>,
    mime_type: Option<String>,
    file_size: Option<u64>,
}

impl ChannelAdapter for TelegramChannel {
    fn id(&self) -> &ChannelId {
        &self.id
    }

    fn inbound(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        if request.method != http::Method::POST || !request.action.is_empty() {
            return Err(IntakeError::NotFound);
        }
        self.verify(request.headers.get(SECRET_HEADER).map(|v| v.as_bytes()))?;
        self.parse(request)
    }

    fn committed(&self, _request: &InboundRequest<'_>, _outcomes: &[IntakeOutcome]) -> Answer {
        ok()
    }

    fn can_reply(&self) -> bool {
        self.bot_token.is_some()
    }

    fn deliver<'a>(&'a self, http: &'a reqwest::Client, out: &'a Outbound) -> DeliveryFuture<'a> {
        Box::pin(self.send(http, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn channel() -> TelegramChannel {
        let cfg = Config {
            secret_token: Some("tg-secret_1".into()),
            bot_token: Some("123:ABC".into()),
            ..Config::default()
        };
        TelegramChannel::from_config("bot", &cfg, Path::new(".")).unwrap()
    }

    fn post(
        c: &TelegramChannel,
        secret: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Inbound, IntakeError> {
        let raw = serde_json::to_vec(body).unwrap();
        let mut headers = http::HeaderMap::new();
        if let Some(s) = secret {
            headers.insert(SECRET_HEADER, s.parse().unwrap());
        }
        static POST: http::Method = http::Method::POST;
        c.inbound(&InboundRequest {
            method: &POST,
            path_and_query: "/webhooks/telegram/bot",
            action: "",
            headers: &headers,
            body: &raw,
            received_at: Utc::now(),
        })
    }

    fn update(kind: &str, text: &str) -> serde_json::Value {
        serde_json::json!({
            "update_id": 10000,
            kind: {
                "message_id": 1365, "date": 1441645532,
                "from": {"id": 1111111, "is_bot": false, "first_name": "Test", "last_name": "Lastname",
                         "username": "Testusername", "language_code": "de"},
                "chat": {"id": 1111111, "type": "private", "first_name": "Test", "username": "Testusername"},
                "text": text
            }
        })
    }

    #[test]
    fn secret_token_is_required_and_exact() {
        let c = channel();
        let body = update("message", "hi");
        assert!(post(&c, Some("tg-secret_1"), &body).is_ok());
        for bad in [None, Some("tg-secret_2"), Some("tg-secret_1x"), Some("")] {
            assert!(matches!(
                post(&c, bad, &body),
                Err(IntakeError::BadSignature(_))
            ));
        }
    }

    #[test]
    fn message_and_edit() {
        let c = channel();
        let Inbound::Messages(m) =
            post(&c, Some("tg-secret_1"), &update("message", "Hallo")).unwrap()
        else {
            panic!()
        };
        let m = &m[0];
        assert_eq!(m.provider_id, "1111111:1365");
        assert_eq!(m.customer.name.as_deref(), Some("Test Lastname"));
        assert_eq!(m.customer.handle.as_deref(), Some("@Testusername"));
        assert_eq!(m.customer_key.as_deref(), Some("telegram:1111111"));
        assert_eq!(m.language.as_deref(), Some("de"));
        assert_eq!(m.metadata["update_id"], 10000);
        assert_eq!(m.reply_context["message_id"], 1365);
        match post(&c, Some("tg-secret_1"), &update("edited_message", "Hallo!")).unwrap() {
            Inbound::Edits(e) => {
                assert_eq!(e[0].provider_id, "1111111:1365");
                assert_eq!(e[0].text, "Hallo!");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bots_and_other_updates_are_dropped_and_garbage_is_400() {
        let c = channel();
        let mut bot = update("message", "echo");
        bot["message"]["from"]["is_bot"] = true.into();
        assert!(matches!(
            post(&c, Some("tg-secret_1"), &bot).unwrap(),
            Inbound::Answer(_)
        ));
        let poll = serde_json::json!({"update_id": 1, "poll": {"id": "1"}});
        assert!(matches!(
            post(&c, Some("tg-secret_1"), &poll).unwrap(),
            Inbound::Answer(_)
        ));
        let broken = serde_json::json!({"update_id": "x"});
        assert!(matches!(
            post(&c, Some("tg-secret_1"), &broken),
            Err(IntakeError::Malformed(_))
        ));
    }

    #[test]
    fn secret_token_shape_is_checked() {
        let cfg = Config {
            secret_token: Some("has space".into()),
            ..Config::default()
        };
        let problems = TelegramChannel::from_config("x", &cfg, Path::new(".")).unwrap_err();
        assert_eq!(problems[0].0, "secret_token");
    }
}
