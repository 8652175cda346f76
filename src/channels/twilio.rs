//! Twilio: SMS and WhatsApp-via-Twilio messages, and voice calls.
//!
//! Inbound (all form-encoded, all signed with `X-Twilio-Signature`):
//! - `POST /webhooks/twilio/{name}/sms`: a message; answered with an empty
//!   `<Response/>` once committed. Idempotent on `MessageSid`.
//! - `POST /webhooks/twilio/{name}/voice`: a call; becomes an inquiry and is
//!   answered with TwiML that greets the caller (template
//!   `voice_greeting.<lang>.txt`, with the inquiry's reference) and records
//!   a voicemail with a transcription.
//! - `…/voice/recording` and `…/voice/transcription`: Twilio's callbacks for
//!   that recording; they attach to the call's inquiry (thread key from
//!   `CallSid`). An `absent` recording (silence, hang-up) is still recorded,
//!   marked `callback_requested` in the message's metadata.
//! - `…/status`: delivery status of our own messages (`MessageStatus`).
//!
//! The signature is HMAC-SHA1 (auth token) over the URL Twilio called plus
//! the form parameters sorted by name, base64. The URL is `public_url` +
//! path and query (the daemon usually sits behind a proxy), tried with and
//! without the default port as Twilio's own libraries do. JSON bodies use the
//! `bodySHA256` variant: the URL carries the body's SHA-256 and only the URL
//! is signed.
//!
//! Outbound: the Messages API, `POST {api_base}/2010-04-01/Accounts/{sid}/
//! Messages.json` with Basic auth; voice acknowledgements go out as SMS.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::support::{self, Pacer, Problems, id_field, xml_escape};
use super::{
    Answer, ChannelAdapter, Delivered, DeliveryError, DeliveryFuture, Inbound, InboundRequest,
    IntakeError, Outbound, ProviderStatus, classify_response,
};
use crate::config::secret::Secret;
use crate::inquiry::{
    Adapter, AttachmentMeta, ChannelId, Customer, IntakeOutcome, Medium, NewMessage, ThreadHints,
};
use crate::templates::{AckContext, AckTemplates};

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";
/// Template of the spoken greeting: `voice_greeting.<lang>.txt`.
pub const VOICE_GREETING: &str = "voice_greeting";
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";
const MAX_MEDIA: usize = 10;

/// `[channels.twilio.<name>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `AC…`: the account the webhooks come from and messages go out on.
    pub account_sid: Option<String>,
    /// Signs inbound webhooks and authenticates outbound calls.
    pub auth_token: Option<String>,
    pub auth_token_env: Option<String>,
    pub auth_token_file: Option<String>,
    /// Number acknowledgements are sent from (`+1…` or `whatsapp:+1…`).
    /// Default: the number the customer wrote to (for calls: the number
    /// called).
    pub from: Option<String>,
    /// Send through a Messaging Service instead of a fixed `from`.
    pub messaging_service_sid: Option<String>,
    /// Scheme, host and optional port Twilio calls, e.g.
    /// `https://support.example.com`; without it the request's Host is used.
    pub public_url: Option<String>,
    /// Default `https://api.twilio.com`.
    pub api_base: Option<String>,
    /// Messages (and calls) from the same number within this window join
    /// the open inquiry. Default `24h`; `0s` turns it off.
    #[serde(default, with = "humantime_serde")]
    pub follow_up_window: Option<Duration>,
    /// `<Say language=…>` of the greeting, e.g. `de-DE`. Default `en-US`.
    /// Its primary tag picks the template language.
    pub voice_language: Option<String>,
    /// Longest voicemail, default `120s`.
    #[serde(default, with = "humantime_serde")]
    pub voice_max_recording: Option<Duration>,
    /// Acknowledge calls by SMS to the caller (default true; callers with
    /// withheld or non-phone ids are never texted).
    pub voice_ack_sms: Option<bool>,
    /// At most this many outbound messages per second (default: no limit
    /// beyond Twilio's own 429s).
    pub max_per_second: Option<f64>,
}

/// A configured Twilio channel instance.
#[derive(Debug)]
pub struct TwilioChannel {
    id: ChannelId,
    account_sid: String,
    auth_token: Secret,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    public_url: Option<String>,
    api_base: String,
    follow_up_window: Option<Duration>,
    voice_language: String,
    voice_max_recording: Duration,
    voice_ack_sms: bool,
    templates: Option<AckTemplates>,
    pacer: Pacer,
}

impl TwilioChannel {
    pub fn from_config(
        name: &str,
        config: &Config,
        base: &Path,
        templates: Option<&AckTemplates>,
    ) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let account_sid = support::required("account_sid", &config.account_sid, &mut problems);
        if !account_sid.is_empty() && !account_sid.starts_with("AC") {
            problems.push(("account_sid".into(), "expected an `AC…` account SID".into()));
        }
        let auth_token = support::secret(
            "auth_token",
            (
                &config.auth_token,
                &config.auth_token_env,
                &config.auth_token_file,
            ),
            base,
            true,
            &mut problems,
        );
        if config.from.is_some() && config.messaging_service_sid.is_some() {
            problems.push((
                "from".into(),
                "give `from` or `messaging_service_sid`, not both".into(),
            ));
        }
        if let Some(from) = &config.from
            && support::normalize_phone(from).is_none()
            && !from.starts_with("whatsapp:")
        {
            problems.push((
                "from".into(),
                "expected a number like `+14155550100`".into(),
            ));
        }
        let public_url = config
            .public_url
            .as_ref()
            .map(|u| support::base_url("public_url", &Some(u.clone()), "", &mut problems));
        if let Some(u) = &public_url
            && reqwest::Url::parse(u).is_ok_and(|u| u.path() != "/")
        {
            problems.push((
                "public_url".into(),
                "give only scheme, host and port: the request's path is appended".into(),
            ));
        }
        let api_base = support::base_url(
            "api_base",
            &config.api_base,
            DEFAULT_API_BASE,
            &mut problems,
        );
        let voice_language = config
            .voice_language
            .clone()
            .unwrap_or_else(|| "en-US".to_owned());
        if !super::generic::is_language_tag(&voice_language) {
            problems.push((
                "voice_language".into(),
                "expected a language tag such as `en-US`".into(),
            ));
        }
        support::check_rate(config.max_per_second, &mut problems);
        match auth_token {
            Some(auth_token) if problems.is_empty() => Ok(TwilioChannel {
                id: ChannelId::new(Adapter::Twilio, name),
                account_sid,
                auth_token,
                from: config.from.clone(),
                messaging_service_sid: config.messaging_service_sid.clone(),
                public_url,
                api_base,
                follow_up_window: support::follow_up_window(config.follow_up_window),
                voice_language,
                voice_max_recording: config
                    .voice_max_recording
                    .unwrap_or(Duration::from_secs(120)),
                voice_ack_sms: config.voice_ack_sms.unwrap_or(true),
                templates: templates.cloned(),
                pacer: Pacer::new(config.max_per_second),
            }),
            _ => Err(problems),
        }
    }

    /// The URL Twilio called, as it signed it: `public_url` (or the Host
    /// the request came to) + path and query.
    fn called_url(&self, request: &InboundRequest<'_>) -> String {
        format!("{}{}", self.origin(request), request.path_and_query)
    }

    fn origin(&self, request: &InboundRequest<'_>) -> String {
        if let Some(u) = &self.public_url {
            return u.clone();
        }
        let proto = request
            .header("x-forwarded-proto")
            .filter(|p| matches!(*p, "http" | "https"))
            .unwrap_or("http");
        let host = request.header("host").unwrap_or("localhost");
        format!("{proto}://{host}")
    }

    /// Checks `X-Twilio-Signature`, returning the request's parameters.
    pub fn verify(
        &self,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<(String, String)>, IntakeError> {
        let given = request
            .header(SIGNATURE_HEADER)
            .ok_or_else(|| IntakeError::BadSignature("missing signature".into()))?;
        let url = self.called_url(request);
        let body_hash = form_urlencoded::parse(request.query().as_bytes())
            .find(|(k, _)| k == "bodySHA256")
            .map(|(_, v)| v.into_owned());
        let params = match &body_hash {
            None => form_urlencoded::parse(request.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            Some(_) => Vec::new(),
        };
        if !verify_signature(self.auth_token.expose(), &url, &params, given) {
            return Err(IntakeError::BadSignature("invalid signature".into()));
        }
        if let Some(hash) = body_hash {
            let actual = hex::encode(Sha256::digest(request.body));
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                actual.as_bytes(),
                hash.to_ascii_lowercase().as_bytes(),
            )) {
                return Err(IntakeError::BadSignature("invalid signature".into()));
            }
            return json_params(request.body);
        }
        Ok(params)
    }

    fn thread_key(&self, call_sid: &str) -> String {
        format!("{}:call:{call_sid}", self.id)
    }

    fn message(&self, request: &InboundRequest<'_>, p: &Params) -> Result<NewMessage, IntakeError> {
        let sid = id_field("MessageSid", p.get("MessageSid"))?;
        let from = id_field("From", p.get("From"))?;
        let to = id_field("To", p.get("To"))?;
        let whatsapp = from.starts_with("whatsapp:");
        let mut attachments = Vec::new();
        let num_media: usize = p
            .get("NumMedia")
            .map(|n| {
                n.parse()
                    .map_err(|_| IntakeError::Malformed("`NumMedia` is not a number".into()))
            })
            .transpose()?
            .unwrap_or(0);
        for i in 0..num_media.min(MAX_MEDIA) {
            if let Some(url) = p.get(&format!("MediaUrl{i}")) {
                attachments.push(AttachmentMeta {
                    name: None,
                    content_type: p.get(&format!("MediaContentType{i}")).map(str::to_owned),
                    size: None,
                    url: Some(url.to_owned()),
                });
            }
        }
        // SMS has no reply threading: a customer's texts gather by number
        // within the follow-up window.
        let thread = ThreadHints {
            follow_up_window: self.follow_up_window,
            ..ThreadHints::default()
        };
        Ok(NewMessage {
            channel: self.id.clone(),
            medium: if whatsapp { Medium::Chat } else { Medium::Sms },
            provider_id: sid,
            customer: Customer {
                name: p.get("ProfileName").map(str::to_owned),
                phone: support::normalize_phone(&from),
                ..Customer::default()
            },
            customer_key: support::phone_customer_key(&from),
            subject: None,
            text: p.get("Body").unwrap_or_default().to_owned(),
            language: None,
            thread,
            attachments,
            metadata: serde_json::json!({
                "to": to,
                "whatsapp": whatsapp,
                "account_sid": p.get("AccountSid"),
                "messaging_service_sid": p.get("MessagingServiceSid"),
                "num_segments": p.get("NumSegments"),
            }),
            reply_context: serde_json::json!({"kind": "sms", "to": from, "from": to}),
            no_ack_reason: opt_out_keyword(p).then(|| {
                "an opt-out or help keyword: Twilio answers it, and texting back may be refused"
                    .to_owned()
            }),
            received_at: request.received_at,
        })
    }

    fn call(&self, request: &InboundRequest<'_>, p: &Params) -> Result<NewMessage, IntakeError> {
        let call_sid = id_field("CallSid", p.get("CallSid"))?;
        let from = p.get("From").or(p.get("Caller")).unwrap_or("").to_owned();
        let to = p.get("To").or(p.get("Called")).unwrap_or("").to_owned();
        let phone = support::normalize_phone(&from);
        let no_ack_reason = if !self.voice_ack_sms {
            Some("voice acknowledgements by SMS are turned off (voice_ack_sms)".to_owned())
        } else if phone.is_none() {
            Some("the caller's number is withheld or cannot receive SMS".to_owned())
        } else {
            None
        };
        let key = self.thread_key(&call_sid);
        let thread = ThreadHints {
            refers_to: Vec::new(),
            provides: vec![key],
            reference: None,
            follow_up_window: self.follow_up_window,
        };
        Ok(NewMessage {
            channel: self.id.clone(),
            medium: Medium::Voice,
            provider_id: format!("call:{call_sid}"),
            customer: Customer {
                name: p.get("CallerName").map(str::to_owned),
                phone: phone.clone(),
                ..Customer::default()
            },
            customer_key: support::phone_customer_key(&from),
            subject: None,
            text: "Incoming phone call".to_owned(),
            language: None,
            thread,
            attachments: Vec::new(),
            metadata: serde_json::json!({
                "call_sid": call_sid,
                "to": to,
                "call_status": p.get("CallStatus"),
                "direction": p.get("Direction"),
            }),
            reply_context: serde_json::json!({"kind": "voice", "to": phone, "from": to}),
            no_ack_reason,
            received_at: request.received_at,
        })
    }

    /// A voice callback (recording or transcription) attached to its call.
    fn callback(
        &self,
        request: &InboundRequest<'_>,
        call_sid: String,
        provider_id: String,
        text: String,
        attachments: Vec<AttachmentMeta>,
        metadata: serde_json::Value,
    ) -> NewMessage {
        NewMessage {
            channel: self.id.clone(),
            medium: Medium::Voice,
            provider_id,
            customer: Customer::default(),
            customer_key: None,
            subject: None,
            text,
            language: None,
            thread: ThreadHints {
                refers_to: vec![self.thread_key(&call_sid)],
                ..ThreadHints::default()
            },
            attachments,
            metadata,
            reply_context: serde_json::Value::Null,
            no_ack_reason: Some("a voicemail callback; its call is acknowledged".to_owned()),
            received_at: request.received_at,
        }
    }

    fn recording(&self, request: &InboundRequest<'_>, p: &Params) -> Result<Inbound, IntakeError> {
        let Some(status) = p.get("RecordingStatus") else {
            // The <Record action>: the caller finished speaking. Nothing to
            // store (the status callback carries the recording); hang up.
            return Ok(Inbound::Answer(twiml(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Hangup/></Response>",
            )));
        };
        let call_sid = id_field("CallSid", p.get("CallSid"))?;
        let recording_sid = p.get("RecordingSid").map(str::to_owned);
        let provider_id = match &recording_sid {
            Some(r) => format!("recording:{}", id_field("RecordingSid", Some(r))?),
            None => format!("recording:{call_sid}:{status}"),
        };
        let message = match status {
            "completed" => {
                let seconds: Option<u64> = p.get("RecordingDuration").and_then(|d| d.parse().ok());
                let url = id_field("RecordingUrl", p.get("RecordingUrl"))?;
                self.callback(
                    request,
                    call_sid,
                    provider_id,
                    match seconds {
                        Some(s) => format!("Voicemail ({s} s)"),
                        None => "Voicemail".to_owned(),
                    },
                    vec![AttachmentMeta {
                        name: Some("voicemail".into()),
                        content_type: Some("audio/x-wav".into()),
                        size: None,
                        url: Some(url),
                    }],
                    serde_json::json!({
                        "recording_sid": recording_sid,
                        "recording_status": status,
                        "duration_seconds": seconds,
                        "callback_requested": false,
                    }),
                )
            }
            "absent" | "failed" => self.callback(
                request,
                call_sid,
                provider_id,
                "No voicemail was left: please call the customer back.".to_owned(),
                Vec::new(),
                serde_json::json!({
                    "recording_sid": recording_sid,
                    "recording_status": status,
                    "callback_requested": true,
                }),
            ),
            // in-progress and anything new: nothing to keep yet.
            _ => return Ok(Inbound::Answer(twiml(EMPTY_TWIML))),
        };
        Ok(Inbound::Messages(vec![message]))
    }

    fn transcription(
        &self,
        request: &InboundRequest<'_>,
        p: &Params,
    ) -> Result<Inbound, IntakeError> {
        let call_sid = id_field("CallSid", p.get("CallSid"))?;
        let sid = id_field("TranscriptionSid", p.get("TranscriptionSid"))?;
        let status = p.get("TranscriptionStatus").unwrap_or("completed");
        let text = match (status, p.get("TranscriptionText")) {
            ("completed", Some(t)) if !t.trim().is_empty() => t.to_owned(),
            _ => "(the voicemail could not be transcribed)".to_owned(),
        };
        Ok(Inbound::Messages(vec![self.callback(
            request,
            call_sid,
            format!("transcription:{sid}"),
            text,
            Vec::new(),
            serde_json::json!({
                "transcription_sid": sid,
                "transcription_status": status,
                "recording_sid": p.get("RecordingSid"),
            }),
        )]))
    }

    fn status(&self, p: &Params) -> Result<Inbound, IntakeError> {
        let sid = id_field("MessageSid", p.get("MessageSid"))?;
        let status = id_field("MessageStatus", p.get("MessageStatus"))?;
        Ok(Inbound::Statuses(vec![ProviderStatus {
            provider_message_id: sid,
            status,
            detail: serde_json::json!({"error_code": p.get("ErrorCode")}),
        }]))
    }

    /// The TwiML answering a call: greeting with the reference, then a
    /// recorded voicemail with its callbacks.
    ///
    /// `language` is what the rules chose for the caller (e.g. `de`); the
    /// configured `voice_language` applies when they chose none.
    fn voice_twiml(
        &self,
        request: &InboundRequest<'_>,
        reference: &str,
        language: Option<&str>,
    ) -> String {
        let spoken = spell_reference(reference);
        let configured = self
            .voice_language
            .split('-')
            .next()
            .unwrap_or("en")
            .to_ascii_lowercase();
        let primary = language
            .map(|l| l.split('-').next().unwrap_or(l).to_ascii_lowercase())
            .unwrap_or_else(|| configured.clone());
        let say_language = if primary == configured {
            self.voice_language.clone()
        } else {
            say_language(&primary)
        };
        let greeting = self
            .templates
            .as_ref()
            .and_then(|t| {
                let language = t.resolve_language(VOICE_GREETING, Some(&primary));
                let ctx = AckContext {
                    reference: &spoken,
                    customer_name: None,
                    subject: None,
                    channel: "voice",
                    language: &language,
                };
                t.render(VOICE_GREETING, &ctx).ok()
            })
            .unwrap_or_else(|| {
                format!(
                    "Thank you for calling. Your reference is {spoken}. \
                     Please leave a message after the tone."
                )
            });
        // Callbacks go to this channel's own URLs, as Twilio reaches them.
        let base = format!(
            "{}{}",
            self.origin(request),
            request
                .path_and_query
                .split('?')
                .next()
                .unwrap_or("")
                .trim_end_matches('/')
        );
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>\
             <Say language=\"{lang}\">{greeting}</Say>\
             <Record action=\"{rec}\" method=\"POST\" maxLength=\"{max}\" playBeep=\"true\" \
             recordingStatusCallback=\"{rec}\" recordingStatusCallbackMethod=\"POST\" \
             recordingStatusCallbackEvent=\"completed absent\" \
             transcribe=\"true\" transcribeCallback=\"{tr}\"/>\
             </Response>",
            lang = xml_escape(&say_language),
            greeting = xml_escape(&greeting),
            rec = xml_escape(&format!("{base}/recording")),
            tr = xml_escape(&format!("{base}/transcription")),
            max = self.voice_max_recording.as_secs().max(1),
        )
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        out: &Outbound,
    ) -> Result<Delivered, DeliveryError> {
        let ctx = &out.reply_context;
        let to = ctx["to"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| DeliveryError::Permanent("no number to answer to".into()))?;
        let mut form: Vec<(&str, String)> = vec![("To", to.to_owned()), ("Body", out.text.clone())];
        if let Some(service) = &self.messaging_service_sid {
            form.push(("MessagingServiceSid", service.clone()));
        } else if let Some(from) = self.from.as_deref().or(ctx["from"].as_str()) {
            // WhatsApp through Twilio: the sender must carry the same prefix.
            let from = if to.starts_with("whatsapp:") && !from.starts_with("whatsapp:") {
                format!("whatsapp:{from}")
            } else {
                from.to_owned()
            };
            form.push(("From", from));
        } else {
            return Err(DeliveryError::Permanent("no number to send from".into()));
        }
        if let Some(public) = &self.public_url {
            form.push((
                "StatusCallback",
                format!("{public}/webhooks/twilio/{}/status", self.id.name),
            ));
        }
        self.pacer.wait().await?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.api_base, self.account_sid
        );
        let request = http
            .post(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form);
        let (status, headers, json) = support::send_json(request).await?;
        if let Err(e) = classify_response(status, headers.get(reqwest::header::RETRY_AFTER)) {
            return Err(with_twilio_error(e, &json));
        }
        Ok(Delivered {
            provider_message_id: json["sid"].as_str().map(str::to_owned),
        })
    }
}

/// Adds Twilio's error code and message (e.g. 21610, unsubscribed
/// recipient) to a failed delivery's reason.
fn with_twilio_error(e: DeliveryError, json: &serde_json::Value) -> DeliveryError {
    let Some(code) = json["code"].as_i64() else {
        return e;
    };
    let detail = format!(
        "Twilio error {code}: {}",
        support::excerpt(json["message"].as_str().unwrap_or(""))
    );
    match e {
        DeliveryError::Transient(r) => DeliveryError::Transient(format!("{r}; {detail}")),
        DeliveryError::Permanent(r) => DeliveryError::Permanent(format!("{r}; {detail}")),
        DeliveryError::RetryAfter { after, reason } => DeliveryError::RetryAfter {
            after,
            reason: format!("{reason}; {detail}"),
        },
    }
}

/// Twilio's default opt-out, opt-in and help keywords (or its Advanced
/// Opt-Out marker): Twilio answers those itself, and after STOP it refuses
/// messages to the sender (error 21610).
fn opt_out_keyword(p: &Params) -> bool {
    const KEYWORDS: [&str; 14] = [
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "OPTOUT",
        "REVOKE",
        "START",
        "YES",
        "UNSTOP",
        "HELP",
        "INFO",
        "OPTIN",
    ];
    if p.get("OptOutType").is_some_and(|t| !t.is_empty()) {
        return true;
    }
    let body = p.get("Body").unwrap_or("").trim().to_ascii_uppercase();
    KEYWORDS.contains(&body.as_str())
}

/// A reference read aloud character by character: `I N Q, 7 K 3 F 9 Q`.
fn spell_reference(reference: &str) -> String {
    let (prefix, code) = reference.split_once('-').unwrap_or(("", reference));
    let spell = |s: &str| {
        s.chars()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if prefix.is_empty() {
        spell(code)
    } else {
        format!("{}, {}", spell(prefix), spell(code))
    }
}

fn twiml(body: &str) -> Answer {
    Answer {
        status: http::StatusCode::OK,
        content_type: "text/xml; charset=utf-8",
        body: body.to_owned(),
    }
}

/// Request parameters with first-wins lookup.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The parameters of a `bodySHA256` (JSON) request: a flat object.
fn json_params(body: &[u8]) -> Result<Vec<(String, String)>, IntakeError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| support::json_error(&e))?;
    let object = value
        .as_object()
        .ok_or_else(|| IntakeError::Malformed("expected a JSON object".into()))?;
    Ok(object
        .iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k.clone(), s.clone())),
            serde_json::Value::Number(n) => Some((k.clone(), n.to_string())),
            serde_json::Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect())
}

/// Twilio's signature of `url` and `params`: base64 HMAC-SHA1 of the URL
/// followed by each parameter's name and value, sorted by name (then value).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(signature_mac(auth_token, url, params))
}

fn signature_mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac.finalize().into_bytes().to_vec()
}

/// Checks `given` against the URL as is, without its port, and with the
/// scheme's default port, in constant time per candidate.
pub fn verify_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    given: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(given.trim()) else {
        return false;
    };
    url_variants(url).iter().any(|candidate| {
        let expected = signature_mac(auth_token, candidate, params);
        bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_slice(),
            given.as_slice(),
        ))
    })
}

/// `url`, `url` without an explicit port, `url` with the default port.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    // The port is after the last ':' unless that is inside an IPv6 literal.
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (hostport, None),
    };
    match port {
        Some(_) => out.push(format!("{scheme}://{userinfo}{host}{tail}")),
        None => {
            let default = match scheme.to_ascii_lowercase().as_str() {
                "https" => "443",
                "http" => "80",
                _ => return out,
            };
            out.push(format!("{scheme}://{userinfo}{host}:{default}{tail}"));
        }
    }
    out
}

impl ChannelAdapter for TwilioChannel {
    fn id(&self) -> &ChannelId {
        &self.id
    }

    fn inbound(&self, request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        if request.method != http::Method::POST {
            return Err(IntakeError::NotFound);
        }
        let action = request.action.trim_end_matches('/');
        if !matches!(
            action,
            "sms" | "voice" | "voice/recording" | "voice/transcription" | "status"
        ) {
            return Err(IntakeError::NotFound);
        }
        let params = Params(self.verify(request)?);
        if let Some(account) = params.get("AccountSid")
            && account != self.account_sid
        {
            return Err(IntakeError::Forbidden);
        }
        match action {
            "sms" => Ok(Inbound::Messages(vec![self.message(request, &params)?])),
            "voice" => Ok(Inbound::Messages(vec![self.call(request, &params)?])),
            "voice/recording" => self.recording(request, &params),
            "voice/transcription" => self.transcription(request, &params),
            _ => self.status(&params),
        }
    }

    fn committed(&self, request: &InboundRequest<'_>, outcomes: &[IntakeOutcome]) -> Answer {
        match (request.action.trim_end_matches('/'), outcomes.first()) {
            ("voice", Some(outcome)) => twiml(&self.voice_twiml(
                request,
                outcome.inquiry.as_str(),
                outcome.language.as_deref(),
            )),
            _ => twiml(EMPTY_TWIML),
        }
    }

    fn can_reply(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, http: &'a reqwest::Client, out: &'a Outbound) -> DeliveryFuture<'a> {
        Box::pin(self.send(http, out))
    }
}

/// A `<Say language>` tag for a primary language subtag: Twilio's voices
/// want a region.
fn say_language(primary: &str) -> String {
    match primary {
        "de" => "de-DE",
        "en" => "en-US",
        "fr" => "fr-FR",
        "es" => "es-ES",
        "it" => "it-IT",
        "nl" => "nl-NL",
        "pt" => "pt-PT",
        "pl" => "pl-PL",
        "tr" => "tr-TR",
        other => other,
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    const TOKEN: &str = "12345";
    const DOCS_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn docs_params(caller: &str) -> Vec<(String, String)> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", caller),
            ("Digits", "1234"),
            ("From", caller),
            ("To", "+18005551212"),
        ])
    }

    /// Twilio's published request-validation example (twilio.com/docs/usage/
    /// security, and the test suites of twilio-python / twilio-node): auth
    /// token `12345`, this URL, these five parameters. The docs have used
    /// two caller numbers over the years; both published signatures hold.
    #[test]
    fn matches_twilios_published_examples() {
        assert_eq!(
            twilio_signature(TOKEN, DOCS_URL, &docs_params("+14158675309")),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            twilio_signature(TOKEN, DOCS_URL, &docs_params("+14158675310")),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        assert!(verify_signature(
            TOKEN,
            DOCS_URL,
            &docs_params("+14158675309"),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    /// twilio-go's request validator tests: parameters sorted by name
    /// (`Reason` before `ReasonConferenceEnded`), the port variants, and the
    /// `bodySHA256` signature of a JSON body.
    #[test]
    fn matches_twilio_library_vectors_for_ports_and_body_hash() {
        let params = pairs(&[
            ("Digits", "1234"),
            ("CallSid", "CA1234567890ABCDE"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
            ("From", "+14158675309"),
            ("ReasonConferenceEnded", "test"),
            ("Reason", "Participant"),
        ]);
        let sig = "vOEb5UThFn24KEfnOFLQY2AE5FY=";
        assert_eq!(twilio_signature(TOKEN, DOCS_URL, &params), sig);
        // A port in the URL we see, none in what Twilio signed.
        let with_port = DOCS_URL.replace(".com", ".com:1234");
        assert!(verify_signature(TOKEN, &with_port, &params, sig));
        // Twilio signed with the default port, we see none.
        let default_port = DOCS_URL.replace(".com", ".com:443");
        let signed_with_port = twilio_signature(TOKEN, &default_port, &params);
        assert!(verify_signature(
            TOKEN,
            DOCS_URL,
            &params,
            &signed_with_port
        ));
        let http_url = DOCS_URL.replace("https", "http");
        assert!(verify_signature(
            TOKEN,
            &http_url,
            &params,
            "n2xBNyzSW7rfYStDtOFiFMv7qNo="
        ));
        // Sorted wrongly (ReasonConferenceEnded before Reason): rejected.
        assert!(!verify_signature(
            TOKEN,
            DOCS_URL,
            &params,
            "95+Bu0JVPi0r/SsESZCVf0dWAjw="
        ));
        let body = br#"{"property": "value", "boolean": true}"#;
        let hash = hex::encode(Sha256::digest(body));
        assert_eq!(
            hash,
            "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        let url = format!("https://mycompany.com/myapp.php?bodySHA256={hash}");
        assert!(verify_signature(
            TOKEN,
            &url,
            &[],
            "y77kIzt2vzLz71DgmJGsen2scGs="
        ));
    }

    #[test]
    fn rejects_tampering_wrong_token_and_garbage() {
        let params = docs_params("+14158675309");
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let mut tampered = params.clone();
        tampered[2].1 = "9999".into();
        assert!(!verify_signature(TOKEN, DOCS_URL, &tampered, sig));
        assert!(!verify_signature("54321", DOCS_URL, &params, sig));
        assert!(!verify_signature(
            TOKEN,
            "https://mycompany.com/other.php?foo=1&bar=2",
            &params,
            sig
        ));
        assert!(!verify_signature(TOKEN, DOCS_URL, &params, "not base64!"));
        assert!(!verify_signature(TOKEN, DOCS_URL, &params, ""));
    }

    #[test]
    fn url_variants_toggle_the_port() {
        assert_eq!(
            url_variants("https://a.example/x?y=1"),
            ["https://a.example/x?y=1", "https://a.example:443/x?y=1"]
        );
        assert_eq!(
            url_variants("http://a.example:8080/x"),
            ["http://a.example:8080/x", "http://a.example/x"]
        );
        assert_eq!(
            url_variants("http://[::1]:8080/x"),
            ["http://[::1]:8080/x", "http://[::1]/x"]
        );
        assert_eq!(
            url_variants("http://[::1]/x"),
            ["http://[::1]/x", "http://[::1]:80/x"]
        );
    }

    fn channel() -> TwilioChannel {
        let cfg = Config {
            account_sid: Some("AC123".into()),
            auth_token: Some(TOKEN.into()),
            public_url: Some("https://support.example.com".into()),
            ..Config::default()
        };
        TwilioChannel::from_config("main", &cfg, Path::new("."), None).unwrap()
    }

    fn request<'a>(
        action: &'a str,
        path: &'a str,
        headers: &'a http::HeaderMap,
        body: &'a [u8],
    ) -> InboundRequest<'a> {
        static POST: http::Method = http::Method::POST;
        InboundRequest {
            method: &POST,
            path_and_query: path,
            action,
            headers,
            body,
            received_at: Utc::now(),
        }
    }

    fn signed(path: &str, body: &str) -> http::HeaderMap {
        let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let sig = twilio_signature(
            TOKEN,
            &format!("https://support.example.com{path}"),
            &params,
        );
        let mut h = http::HeaderMap::new();
        h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        h
    }

    #[test]
    fn sms_becomes_a_message_with_media_and_phone_identity() {
        let c = channel();
        let path = "/webhooks/twilio/main/sms";
        let body = "MessageSid=SM1&AccountSid=AC123&From=whatsapp%3A%2B49+30+1234567&To=whatsapp%3A%2B14155238886\
                    &Body=Hallo&NumMedia=1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm0&MediaContentType0=image%2Fjpeg&ProfileName=Jonas";
        let headers = signed(path, body);
        let req = request("sms", path, &headers, body.as_bytes());
        let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
            panic!()
        };
        let m = &m[0];
        assert_eq!(m.provider_id, "SM1");
        assert_eq!(m.medium, Medium::Chat);
        assert_eq!(m.customer_key.as_deref(), Some("tel:+49301234567"));
        assert_eq!(m.customer.name.as_deref(), Some("Jonas"));
        assert_eq!(m.text, "Hallo");
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(m.reply_context["to"], "whatsapp:+49 30 1234567");
        assert!(m.thread.follow_up_window.is_some());
        let answer = c.committed(&req, &[]);
        assert_eq!(answer.body, EMPTY_TWIML);
        assert!(answer.content_type.starts_with("text/xml"));
    }

    #[test]
    fn refuses_bad_signatures_and_other_accounts() {
        let c = channel();
        let path = "/webhooks/twilio/main/sms";
        let body = "MessageSid=SM1&From=%2B15550001111&To=%2B15550002222&Body=hi";
        let headers = signed(path, body);
        let tampered = body.replace("hi", "ho");
        let req = request("sms", path, &headers, tampered.as_bytes());
        assert!(matches!(c.inbound(&req), Err(IntakeError::BadSignature(_))));
        let none = http::HeaderMap::new();
        let req = request("sms", path, &none, body.as_bytes());
        assert!(matches!(c.inbound(&req), Err(IntakeError::BadSignature(_))));
        let other = format!("{body}&AccountSid=AC999");
        let headers = signed(path, &other);
        let req = request("sms", path, &headers, other.as_bytes());
        assert!(matches!(c.inbound(&req), Err(IntakeError::Forbidden)));
        let missing = "From=%2B15550001111&To=%2B15550002222&Body=hi";
        let headers = signed(path, missing);
        let req = request("sms", path, &headers, missing.as_bytes());
        match c.inbound(&req) {
            Err(IntakeError::Malformed(m)) => assert!(m.contains("MessageSid"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn body_hash_variant_is_verified_against_the_body() {
        let c = channel();
        let body = br#"{"MessageSid":"SM9","From":"+15550001111","To":"+15550002222","Body":"hi"}"#;
        let hash = hex::encode(Sha256::digest(body));
        let path = format!("/webhooks/twilio/main/sms?bodySHA256={hash}");
        let sig = twilio_signature(TOKEN, &format!("https://support.example.com{path}"), &[]);
        let mut headers = http::HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        let req = request("sms", &path, &headers, body);
        let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].provider_id, "SM9");
        let other =
            br#"{"MessageSid":"SM9","From":"+15550001111","To":"+15550002222","Body":"ho"}"#;
        let req = request("sms", &path, &headers, other);
        assert!(matches!(c.inbound(&req), Err(IntakeError::BadSignature(_))));
    }

    #[test]
    fn a_call_threads_its_recording_and_transcription() {
        let c = channel();
        let call = "CallSid=CA77&From=%2B4930123456&To=%2B4930999999&CallStatus=ringing";
        let path = "/webhooks/twilio/main/voice";
        let headers = signed(path, call);
        let req = request("voice", path, &headers, call.as_bytes());
        let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].medium, Medium::Voice);
        assert_eq!(m[0].provider_id, "call:CA77");
        assert_eq!(m[0].customer_key.as_deref(), Some("tel:+4930123456"));
        assert_eq!(m[0].no_ack_reason, None);
        let key = m[0].thread.provides[0].clone();
        let mut outcome = IntakeOutcome {
            inquiry: crate::inquiry::Reference("INQ-7K3F9Q".into()),
            inquiry_id: 1,
            duplicate: false,
            opened: true,
            reopened: false,
            language: None,
        };
        let twiml = c.committed(&req, &[outcome.clone()]).body;
        assert!(twiml.contains("I N Q, 7 K 3 F 9 Q"), "{twiml}");
        // The rules chose German for this caller: German voice and greeting.
        outcome.language = Some("de".into());
        let german = c.committed(&req, &[outcome]).body;
        assert!(german.contains("<Say language=\"de-DE\">"), "{german}");
        assert_ne!(german, twiml, "the greeting follows the rules' language");
        assert!(
            twiml.contains(
                "recordingStatusCallback=\"https://support.example.com/webhooks/twilio/main/voice/recording\""
            ),
            "{twiml}"
        );
        assert!(twiml.contains("transcribeCallback=\"https://support.example.com/webhooks/twilio/main/voice/transcription\""));

        let rec_path = "/webhooks/twilio/main/voice/recording";
        let absent = "CallSid=CA77&RecordingSid=RE1&RecordingStatus=absent";
        let headers = signed(rec_path, absent);
        let req = request("voice/recording", rec_path, &headers, absent.as_bytes());
        let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].thread.refers_to, vec![key.clone()]);
        assert_eq!(m[0].metadata["callback_requested"], true);
        assert!(m[0].no_ack_reason.is_some());

        let done = "CallSid=CA77&RecordingSid=RE2&RecordingStatus=completed&RecordingDuration=12\
                    &RecordingUrl=https%3A%2F%2Fapi.twilio.com%2Frec%2FRE2";
        let headers = signed(rec_path, done);
        let req = request("voice/recording", rec_path, &headers, done.as_bytes());
        let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].text, "Voicemail (12 s)");
        assert_eq!(m[0].metadata["callback_requested"], false);

        let action = "CallSid=CA77&RecordingUrl=https%3A%2F%2Fx&RecordingDuration=3";
        let headers = signed(rec_path, action);
        let req = request("voice/recording", rec_path, &headers, action.as_bytes());
        assert!(
            matches!(c.inbound(&req).unwrap(), Inbound::Answer(a) if a.body.contains("Hangup"))
        );

        let tr_path = "/webhooks/twilio/main/voice/transcription";
        let tr = "CallSid=CA77&TranscriptionSid=TR1&TranscriptionStatus=completed&TranscriptionText=Please+call+me";
        let headers = signed(tr_path, tr);
        let req = request("voice/transcription", tr_path, &headers, tr.as_bytes());
        let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
            panic!()
        };
        assert_eq!(m[0].text, "Please call me");
        assert_eq!(m[0].thread.refers_to, vec![key]);
    }

    #[test]
    fn without_public_url_the_request_host_is_signed() {
        let cfg = Config {
            account_sid: Some("AC123".into()),
            auth_token: Some(TOKEN.into()),
            ..Config::default()
        };
        let c = TwilioChannel::from_config("main", &cfg, Path::new("."), None).unwrap();
        let path = "/webhooks/twilio/main/sms?tenant=7";
        let body = "MessageSid=SM1&From=%2B15550001111&To=%2B15550002222&Body=hi";
        let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let sign_for = |url: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("host", "hooks.example.net".parse().unwrap());
            h.insert(
                SIGNATURE_HEADER,
                twilio_signature(TOKEN, url, &params).parse().unwrap(),
            );
            h
        };
        let plain = sign_for("http://hooks.example.net/webhooks/twilio/main/sms?tenant=7");
        assert!(
            c.inbound(&request("sms", path, &plain, body.as_bytes()))
                .is_ok()
        );
        let mut behind_tls =
            sign_for("https://hooks.example.net/webhooks/twilio/main/sms?tenant=7");
        assert!(
            c.inbound(&request("sms", path, &behind_tls, body.as_bytes()))
                .is_err()
        );
        behind_tls.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(
            c.inbound(&request("sms", path, &behind_tls, body.as_bytes()))
                .is_ok()
        );
        // The query is part of what Twilio signs.
        let no_query = sign_for("http://hooks.example.net/webhooks/twilio/main/sms");
        assert!(
            c.inbound(&request("sms", path, &no_query, body.as_bytes()))
                .is_err()
        );
    }

    #[test]
    fn opt_out_keywords_are_not_acknowledged() {
        let c = channel();
        let path = "/webhooks/twilio/main/sms";
        for (body, silent) in [
            (
                "MessageSid=SM5&From=%2B15550001111&To=%2B15550002222&Body=+stop+",
                true,
            ),
            (
                "MessageSid=SM6&From=%2B15550001111&To=%2B15550002222&Body=Hi&OptOutType=HELP",
                true,
            ),
            (
                "MessageSid=SM7&From=%2B15550001111&To=%2B15550002222&Body=Please+stop+it",
                false,
            ),
        ] {
            let headers = signed(path, body);
            let req = request("sms", path, &headers, body.as_bytes());
            let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
                panic!()
            };
            assert_eq!(m[0].no_ack_reason.is_some(), silent, "{body}");
        }
    }

    #[test]
    fn withheld_callers_are_not_texted() {
        let c = channel();
        let call = "CallSid=CA78&From=%2B266696687&To=%2B4930999999";
        let path = "/webhooks/twilio/main/voice";
        let headers = signed(path, call);
        let req = request("voice", path, &headers, call.as_bytes());
        let Inbound::Messages(m) = c.inbound(&req).unwrap() else {
            panic!()
        };
        assert!(m[0].no_ack_reason.is_some());
        assert_eq!(m[0].customer_key, None);
    }

    #[test]
    fn config_problems_name_keys() {
        let cfg = Config {
            account_sid: Some("XX1".into()),
            from: Some("+15550001111".into()),
            messaging_service_sid: Some("MG1".into()),
            public_url: Some("https://x.example/prefix".into()),
            max_per_second: Some(0.0),
            ..Config::default()
        };
        let problems = TwilioChannel::from_config("x", &cfg, Path::new("."), None).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "account_sid",
                "auth_token",
                "from",
                "public_url",
                "max_per_second"
            ]
        );
    }
}
