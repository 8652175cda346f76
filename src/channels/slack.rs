//! Slack Events API: `POST /webhooks/slack/{name}`.
//!
//! Inbound: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<raw
//! body>">` with the signing secret, `X-Slack-Request-Timestamp` within five
//! minutes of our clock. `url_verification` is answered with its challenge.
//! `message` and `app_mention` events from people become messages; bot
//! messages and housekeeping subtypes are ignored so the router never
//! answers itself; `message_changed` edits the stored message.
//!
//! Idempotency: the message's identity `<channel>:<ts>` is the provider id,
//! so Slack's retries of an `event_id` (`X-Slack-Retry-Num`) and the
//! `message` + `app_mention` pair Slack sends for one mention both land on
//! the one stored message.
//!
//! Outbound: `chat.postMessage` in the message's thread, Bearer bot token;
//! the `ok` field decides, not only the HTTP status; 429 `Retry-After` and
//! `ratelimited` are honoured.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::signature::{hmac_sha256_hex, verify_hmac_sha256_hex};
use super::support::{self, Pacer, Problems, id_field};
use super::{
    Answer, ChannelAdapter, Delivered, DeliveryError, DeliveryFuture, Inbound, InboundRequest,
    IntakeError, MessageEdit, Outbound, classify_response,
};
use crate::config::secret::Secret;
use crate::inquiry::{
    Adapter, AttachmentMeta, ChannelId, Customer, IntakeOutcome, Medium, NewMessage, ThreadHints,
};

pub const SIGNATURE_HEADER: &str = "x-slack-signature";
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
pub const DEFAULT_API_BASE: &str = "https://slack.com/api";
/// How far a request's timestamp may be from our clock (Slack's advice).
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// `[channels.slack.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The app's signing secret (Basic Information → App Credentials).
    pub signing_secret: Option<String>,
    pub signing_secret_env: Option<String>,
    pub signing_secret_file: Option<String>,
    /// `xoxb-…`: posts acknowledgements. Without it none are sent.
    pub bot_token: Option<String>,
    pub bot_token_env: Option<String>,
    pub bot_token_file: Option<String>,
    /// Default `https://slack.com/api`.
    pub api_base: Option<String>,
    /// Messages from the same user within this window join the open
    /// inquiry. Default `24h`; `0s` turns it off.
    #[serde(default, with = "humantime_serde")]
    pub follow_up_window: Option<Duration>,
    /// At most this many outbound messages per second (Slack allows about
    /// one per second per conversation).
    pub max_per_second: Option<f64>,
}

/// A configured Slack app instance.
#[derive(Debug)]
pub struct SlackChannel {
    id: ChannelId,
    signing_secret: Secret,
    bot_token: Option<Secret>,
    api_base: String,
    follow_up_window: Option<Duration>,
    pacer: Pacer,
}

/// Subtypes that are still a person writing.
const PERSON_SUBTYPES: [&str; 3] = ["file_share", "thread_broadcast", "me_message"];

impl SlackChannel {
    pub fn from_config(name: &str, config: &Config, base: &Path) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let signing_secret = support::secret(
            "signing_secret",
            (
                &config.signing_secret,
                &config.signing_secret_env,
                &config.signing_secret_file,
            ),
            base,
            true,
            &mut problems,
        );
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
        match signing_secret {
            Some(signing_secret) if problems.is_empty() => Ok(SlackChannel {
                id: ChannelId::new(Adapter::Slack, name),
                signing_secret,
                bot_token,
                api_base,
                follow_up_window: support::follow_up_window(config.follow_up_window),
                pacer: Pacer::new(config.max_per_second),
            }),
            _ => Err(problems),
        }
    }

    /// Checks the signature and the timestamp window at `now` (Unix seconds).
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), IntakeError> {
        verify_signature(
            self.signing_secret.expose(),
            timestamp,
            signature,
            body,
            now,
        )
    }

    fn key(&self, channel: &str, ts: &str) -> String {
        format!("{}:{channel}:{ts}", self.id)
    }

    fn parse(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        let envelope: Envelope =
            serde_json::from_slice(request.body).map_err(|e| support::json_error(&e))?;
        match envelope.kind.as_str() {
            "url_verification" => {
                let challenge = envelope
                    .challenge
                    .filter(|c| c.len() <= 256 && c.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| IntakeError::Malformed("missing or odd `challenge`".into()))?;
                return Ok(Inbound::Answer(Answer::json(
                    http::StatusCode::OK,
                    &serde_json::json!({ "challenge": challenge }),
                )));
            }
            "event_callback" => {}
            _ => return Ok(Inbound::Answer(ok())),
        }
        let event = envelope
            .event
            .ok_or_else(|| IntakeError::Malformed("missing `event`".into()))?;
        if !matches!(event.kind.as_str(), "message" | "app_mention") {
            return Ok(Inbound::Answer(ok()));
        }
        let channel = id_field("event.channel", event.channel.as_deref())?;
        if event.subtype.as_deref() == Some("message_changed") {
            let Some(inner) = event.message.filter(|m| m.bot_id.is_none()) else {
                return Ok(Inbound::Answer(ok()));
            };
            let ts = id_field("event.message.ts", inner.ts.as_deref())?;
            return Ok(Inbound::Edits(vec![MessageEdit {
                provider_id: format!("{channel}:{ts}"),
                text: inner.text.unwrap_or_default(),
            }]));
        }
        let from_bot = event.bot_id.is_some()
            || event
                .subtype
                .as_deref()
                .is_some_and(|s| !PERSON_SUBTYPES.contains(&s));
        let Some(user) = event.user.filter(|_| !from_bot) else {
            return Ok(Inbound::Answer(ok()));
        };
        let ts = id_field("event.ts", event.ts.as_deref())?;
        let team = envelope.team_id.or(event.team).unwrap_or_default();
        let mut thread = ThreadHints {
            follow_up_window: self.follow_up_window,
            ..ThreadHints::default()
        };
        let root = event.thread_ts.clone().unwrap_or_else(|| ts.clone());
        // Replies carry their root's ts, so only a root needs to be findable.
        if root != ts {
            thread.refers_to.push(self.key(&channel, &root));
        } else {
            thread.provides.push(self.key(&channel, &ts));
        }
        let attachments = event
            .files
            .unwrap_or_default()
            .into_iter()
            .map(|f| AttachmentMeta {
                name: f.name,
                content_type: f.mimetype,
                size: f.size,
                url: f.url_private,
            })
            .collect();
        Ok(Inbound::Messages(vec![NewMessage {
            channel: self.id.clone(),
            medium: Medium::Chat,
            provider_id: format!("{channel}:{ts}"),
            customer: Customer {
                handle: Some(user.clone()),
                ..Customer::default()
            },
            customer_key: Some(format!("slack:{team}:{user}")),
            subject: None,
            text: event.text.unwrap_or_default(),
            language: None,
            thread,
            attachments,
            metadata: serde_json::json!({
                "event_id": envelope.event_id,
                "event_type": event.kind,
                "team_id": team,
                "channel": channel,
                "channel_type": event.channel_type,
                "retry_num": request.header("x-slack-retry-num"),
            }),
            reply_context: serde_json::json!({"channel": channel, "thread_ts": root}),
            no_ack_reason: None,
            received_at: request.received_at,
        }]))
    }

    async fn post(
        &self,
        http: &reqwest::Client,
        out: &Outbound,
    ) -> Result<Delivered, DeliveryError> {
        let token = self
            .bot_token
            .as_ref()
            .ok_or_else(|| DeliveryError::Permanent("no bot_token configured".into()))?;
        let channel = out.reply_context["channel"]
            .as_str()
            .ok_or_else(|| DeliveryError::Permanent("no Slack channel to answer in".into()))?;
        let mut body = serde_json::json!({"channel": channel, "text": out.text});
        if let Some(ts) = out.reply_context["thread_ts"].as_str() {
            body["thread_ts"] = ts.into();
        }
        self.pacer.wait().await?;
        let request = http
            .post(format!("{}/chat.postMessage", self.api_base))
            .bearer_auth(token.expose())
            .json(&body);
        let (status, headers, json) = support::send_json(request).await?;
        classify_response(status, headers.get(reqwest::header::RETRY_AFTER))?;
        if json["ok"].as_bool() == Some(true) {
            return Ok(Delivered {
                provider_message_id: json["ts"].as_str().map(|ts| format!("{channel}:{ts}")),
            });
        }
        let error = json["error"].as_str().unwrap_or("no `ok` in the answer");
        let reason = format!("chat.postMessage failed: {}", support::excerpt(error));
        Err(match error {
            "ratelimited" => DeliveryError::RetryAfter {
                after: Duration::from_secs(30),
                reason,
            },
            "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
                DeliveryError::Transient(reason)
            }
            _ => DeliveryError::Permanent(reason),
        })
    }
}

fn ok() -> Answer {
    Answer::text(http::StatusCode::OK, "")
}

/// Slack's request signature check, with the replay window.
pub fn verify_signature(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), IntakeError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(IntakeError::BadSignature("missing signature".into()));
    };
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| IntakeError::BadSignature("invalid signature".into()))?;
    if (now - ts).abs() > MAX_SKEW_SECS {
        return Err(IntakeError::Stale);
    }
    let hex = signature
        .trim()
        .strip_prefix("v0=")
        .ok_or_else(|| IntakeError::BadSignature("invalid signature".into()))?;
    let mut base = Vec::with_capacity(body.len() + 24);
    base.extend_from_slice(format!("v0:{}:", timestamp.trim()).as_bytes());
    base.extend_from_slice(body);
    if verify_hmac_sha256_hex(secret.as_bytes(), &base, hex) {
        Ok(())
    } else {
        Err(IntakeError::BadSignature("invalid signature".into()))
    }
}

/// The `v0=` signature Slack sends for `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut base = format!("v0:{timestamp}:").into_bytes();
    base.extend_from_slice(body);
    format!("v0={}", hmac_sha256_hex(secret.as_bytes(), &base))
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    challenge: Option<String>,
    team_id: Option<String>,
    event_id: Option<String>,
    event: Option<Event>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    subtype: Option<String>,
    user: Option<String>,
    bot_id: Option<String>,
    team: Option<String>,
    text: Option<String>,
    channel: Option<String>,
    channel_type: Option<String>,
    ts: Option<String>,
    thread_ts: Option<String>,
    files: Option<Vec<File>>,
    /// `message_changed`: the message as it is now.
    message: Option<Box<Event>>,
}

#[derive(Deserialize)]
struct File {
    name: Option<String>,
    mimetype: Option<String>,
    size: Option<u64>,
    url_private: Option<String>,
}

impl ChannelAdapter for SlackChannel {
    fn id(&self) -> &ChannelId {
        &self.id
    }

    fn inbound(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        if request.method != http::Method::POST || !request.action.is_empty() {
            return Err(IntakeError::NotFound);
        }
        self.verify(
            request.header(TIMESTAMP_HEADER),
            request.header(SIGNATURE_HEADER),
            request.body,
            request.received_at.timestamp(),
        )?;
        self.parse(request)
    }

    fn committed(&self, _request: &InboundRequest<'_>, _outcomes: &[IntakeOutcome]) -> Answer {
        ok()
    }

    fn can_reply(&self) -> bool {
        self.bot_token.is_some()
    }

    fn deliver<'a>(&'a self, http: &'a reqwest::Client, out: &'a Outbound) -> DeliveryFuture<'a> {
        Box::pin(self.post(http, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    /// Slack's published example ("Verifying requests from Slack"): this
    /// signing secret, timestamp and slash-command body give this signature.
    const DOCS_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const DOCS_TS: i64 = 1531420618;
    const DOCS_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const DOCS_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn matches_slacks_published_example() {
        assert_eq!(sign(DOCS_SECRET, DOCS_TS, DOCS_BODY.as_bytes()), DOCS_SIG);
        let ts = DOCS_TS.to_string();
        assert!(
            verify_signature(
                DOCS_SECRET,
                Some(&ts),
                Some(DOCS_SIG),
                DOCS_BODY.as_bytes(),
                DOCS_TS + 30
            )
            .is_ok()
        );
    }

    #[test]
    fn rejects_tampered_wrong_secret_missing_and_expired() {
        let ts = DOCS_TS.to_string();
        let check = |secret: &str, ts: Option<&str>, sig: Option<&str>, body: &str, now: i64| {
            matches!(
                verify_signature(secret, ts, sig, body.as_bytes(), now),
                Err(IntakeError::BadSignature(_) | IntakeError::Stale)
            )
        };
        let tampered = DOCS_BODY.replace("roadrunner", "coyote");
        assert!(check(
            DOCS_SECRET,
            Some(&ts),
            Some(DOCS_SIG),
            &tampered,
            DOCS_TS
        ));
        assert!(check(
            "wrong",
            Some(&ts),
            Some(DOCS_SIG),
            DOCS_BODY,
            DOCS_TS
        ));
        assert!(check(DOCS_SECRET, None, Some(DOCS_SIG), DOCS_BODY, DOCS_TS));
        assert!(check(DOCS_SECRET, Some(&ts), None, DOCS_BODY, DOCS_TS));
        assert!(check(
            DOCS_SECRET,
            Some("soon"),
            Some(DOCS_SIG),
            DOCS_BODY,
            DOCS_TS
        ));
        assert!(check(
            DOCS_SECRET,
            Some(&ts),
            Some(&DOCS_SIG.replace("v0=", "v1=")),
            DOCS_BODY,
            DOCS_TS
        ));
        // Five minutes and one second late, or early: a replay.
        assert!(check(
            DOCS_SECRET,
            Some(&ts),
            Some(DOCS_SIG),
            DOCS_BODY,
            DOCS_TS + 301
        ));
        assert!(check(
            DOCS_SECRET,
            Some(&ts),
            Some(DOCS_SIG),
            DOCS_BODY,
            DOCS_TS - 301
        ));
        assert!(!check(
            DOCS_SECRET,
            Some(&ts),
            Some(DOCS_SIG),
            DOCS_BODY,
            DOCS_TS + 300
        ));
        // A replay is counted apart from a forgery.
        assert!(matches!(
            verify_signature(
                DOCS_SECRET,
                Some(&ts),
                Some(DOCS_SIG),
                DOCS_BODY.as_bytes(),
                DOCS_TS + 301
            ),
            Err(IntakeError::Stale)
        ));
    }

    fn channel() -> SlackChannel {
        let cfg = Config {
            signing_secret: Some("s".into()),
            bot_token: Some("xoxb-1".into()),
            ..Config::default()
        };
        SlackChannel::from_config("team", &cfg, Path::new(".")).unwrap()
    }

    fn inbound(c: &SlackChannel, body: &serde_json::Value) -> Result<Inbound, IntakeError> {
        let raw = serde_json::to_vec(body).unwrap();
        let now = Utc::now();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TIMESTAMP_HEADER,
            now.timestamp().to_string().parse().unwrap(),
        );
        headers.insert(
            SIGNATURE_HEADER,
            sign("s", now.timestamp(), &raw).parse().unwrap(),
        );
        static POST: http::Method = http::Method::POST;
        c.inbound(&InboundRequest {
            method: &POST,
            path_and_query: "/webhooks/slack/team",
            action: "",
            headers: &headers,
            body: &raw,
            received_at: now,
        })
    }

    fn message(extra: serde_json::Value) -> serde_json::Value {
        let mut event = serde_json::json!({
            "type": "message", "channel": "D024BE91L", "user": "U2147483697",
            "text": "Hello hello can you hear me?", "ts": "1355517523.000005",
            "channel_type": "im"
        });
        for (k, v) in extra.as_object().unwrap() {
            event[k] = v.clone();
        }
        serde_json::json!({
            "token": "x", "team_id": "T061EG9R6", "api_app_id": "A0PNCHHK2",
            "type": "event_callback", "event_id": "Ev0PV52K21", "event_time": 1355517523,
            "event": event
        })
    }

    #[test]
    fn url_verification_answers_the_challenge() {
        let body = serde_json::json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
        match inbound(&channel(), &body).unwrap() {
            Inbound::Answer(a) => assert!(
                a.body
                    .contains("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn person_messages_thread_by_ts_and_bots_are_ignored() {
        let c = channel();
        let Inbound::Messages(m) = inbound(&c, &message(serde_json::json!({}))).unwrap() else {
            panic!()
        };
        let m = &m[0];
        assert_eq!(m.provider_id, "D024BE91L:1355517523.000005");
        assert_eq!(
            m.customer_key.as_deref(),
            Some("slack:T061EG9R6:U2147483697")
        );
        assert_eq!(m.metadata["event_id"], "Ev0PV52K21");
        assert_eq!(m.reply_context["thread_ts"], "1355517523.000005");
        assert_eq!(
            m.thread.provides,
            ["slack/team:D024BE91L:1355517523.000005"]
        );

        let reply = message(
            serde_json::json!({"ts": "1355517600.000001", "thread_ts": "1355517523.000005"}),
        );
        let Inbound::Messages(m) = inbound(&c, &reply).unwrap() else {
            panic!()
        };
        assert_eq!(
            m[0].thread.refers_to,
            ["slack/team:D024BE91L:1355517523.000005"]
        );
        assert!(m[0].thread.provides.is_empty());
        assert_eq!(m[0].reply_context["thread_ts"], "1355517523.000005");

        for ignored in [
            message(serde_json::json!({"bot_id": "B1"})),
            message(serde_json::json!({"subtype": "bot_message"})),
            message(serde_json::json!({"subtype": "channel_join"})),
            serde_json::json!({"type": "event_callback", "event": {"type": "reaction_added"}}),
            serde_json::json!({"type": "app_rate_limited"}),
        ] {
            assert!(
                matches!(inbound(&c, &ignored).unwrap(), Inbound::Answer(_)),
                "{ignored}"
            );
        }
    }

    #[test]
    fn message_changed_is_an_edit() {
        let c = channel();
        let body = message(serde_json::json!({
            "subtype": "message_changed", "user": null,
            "message": {"type": "message", "user": "U2147483697", "text": "fixed", "ts": "1355517523.000005"}
        }));
        match inbound(&c, &body).unwrap() {
            Inbound::Edits(e) => {
                assert_eq!(e[0].provider_id, "D024BE91L:1355517523.000005");
                assert_eq!(e[0].text, "fixed");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_events_say_what_is_missing() {
        let c = channel();
        match inbound(&c, &message(serde_json::json!({"ts": null}))) {
            Err(IntakeError::Malformed(m)) => assert!(m.contains("event.ts"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
