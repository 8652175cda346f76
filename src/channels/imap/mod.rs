//! The email channel: IMAP mailboxes in, SMTP acknowledgements out.
//!
//! `[channels.imap.<name>]` configures one IMAP account and the mailboxes
//! to watch; the daemon runs one [`mailbox`] task per mailbox. Each task
//! fetches new mail (by UID, from the checkpoint the store keeps per
//! mailbox), normalizes it ([`mime`]), marks what must not be answered
//! ([`loops`]), and commits the batch with its checkpoint in one
//! transaction; only then does it flag, move or delete the mail.
//!
//! Acknowledgements go out through the shared `[smtp]` sender: threaded to
//! the customer's mail (In-Reply-To, References), marked
//! `Auto-Submitted: auto-replied` with our loop header, the reference in
//! the subject.

pub mod health;
pub mod loops;
pub mod mailbox;
pub mod mime;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox as Address, MultiPart, SinglePart};
use serde::Deserialize;

use super::smtp::{SmtpSender, TlsMode, is_loopback, read_pem_certificates};
use super::{
    Answer, ChannelAdapter, Delivered, DeliveryError, DeliveryFuture, Inbound, InboundRequest,
    IntakeError, Outbound,
};
use crate::config::secret::{Secret, SecretSource};
use crate::inquiry::{Adapter, ChannelId, IntakeOutcome};

/// What to do with a mail once it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Set `\Seen`.
    Seen,
    /// Move it to this folder (UID MOVE, or COPY + delete).
    Move(String),
    /// Delete and expunge it.
    Delete,
}

impl After {
    fn parse(s: &str) -> Result<After, String> {
        match s {
            "seen" => Ok(After::Seen),
            "delete" => Ok(After::Delete),
            other => match other.strip_prefix("move:") {
                Some(folder) if !folder.trim().is_empty() => Ok(After::Move(folder.to_owned())),
                _ => Err("expected `seen`, `delete` or `move:<folder>`".into()),
            },
        }
    }
}

/// `[channels.imap.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub host: String,
    /// Default: 993 for `implicit`, 143 otherwise.
    pub port: Option<u16>,
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// PEM file of extra CA certificates to trust (relative to the config file).
    pub ca_file: Option<String>,
    pub username: String,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    /// Mailboxes to watch, one task each.
    #[serde(default = "default_mailboxes")]
    pub mailboxes: Vec<String>,
    /// `seen` | `move:<folder>` | `delete` (only ever after the commit).
    #[serde(default = "default_after")]
    pub after: String,
    /// Our address at this mailbox (lower-cased): never acknowledged, and
    /// `local+INQ-…@domain` recipients thread to that inquiry.
    pub address: Option<String>,
    /// Use IMAP IDLE when the server offers it (else poll).
    #[serde(default = "yes")]
    pub idle: bool,
    /// How often to look for mail without IDLE.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// IDLE is restarted after this long (RFC 2177: under 29 minutes).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Timeout of one IMAP operation (connect, login, one fetch batch, …).
    #[serde(default = "default_op_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Mails fetched and committed per batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Larger mail is not downloaded: an inquiry with a note is recorded.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: u64,
    /// Raw mail (with attachments) up to this size is kept in the store.
    #[serde(default = "default_max_message")]
    pub keep_raw_bytes: u64,
    /// Whether `+INQ-…` recipient tokens thread.
    #[serde(default = "yes")]
    pub plus_tokens: bool,
    /// Most backoff between reconnects.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

fn default_tls() -> TlsMode {
    TlsMode::Implicit
}
fn default_mailboxes() -> Vec<String> {
    vec!["INBOX".into()]
}
fn default_after() -> String {
    "seen".into()
}
fn yes() -> bool {
    true
}
fn default_poll() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(25 * 60)
}
fn default_op_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_batch() -> usize {
    200
}
fn default_max_message() -> u64 {
    25 * 1024 * 1024
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

/// A validated IMAP channel: what the mailbox tasks connect with, and the
/// adapter that sends acknowledgements.
pub struct ImapChannel {
    pub id: ChannelId,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Extra trusted CA certificates (DER).
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub username: String,
    pub password: Secret,
    pub mailboxes: Vec<String>,
    pub after: After,
    pub address: Option<String>,
    pub idle: bool,
    pub poll_interval: Duration,
    pub idle_timeout: Duration,
    pub timeout: Duration,
    pub batch_size: usize,
    pub max_message_bytes: u64,
    pub keep_raw_bytes: u64,
    pub plus_tokens: bool,
    pub max_backoff: Duration,
    smtp: Option<Arc<SmtpSender>>,
}

impl std::fmt::Debug for ImapChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapChannel")
            .field("id", &self.id.to_string())
            .field("host", &self.host)
            .field("port", &self.port)
            .field("mailboxes", &self.mailboxes)
            .finish_non_exhaustive()
    }
}

impl ImapChannel {
    /// Validates `config`; problems come back as `(key, message)` pairs
    /// relative to this channel's table.
    pub fn from_config(
        name: &str,
        config: &Config,
        smtp: Option<Arc<SmtpSender>>,
        base: &Path,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut problem = |k: &str, m: String| problems.push((k.to_owned(), m));
        if config.host.trim().is_empty() {
            problem("host", "must not be empty".into());
        }
        if config.tls == TlsMode::None && !is_loopback(&config.host) {
            problem(
                "tls",
                "`none` is only allowed for a loopback host; use `implicit` or `starttls`".into(),
            );
        }
        let password = SecretSource::new(
            "password",
            &config.password,
            &config.password_env,
            &config.password_file,
        )
        .resolve(base);
        let password = match password {
            Ok(Some(p)) => Some(p),
            Ok(None) => {
                problem(
                    "password",
                    "required: give `password`, `password_env` or `password_file`".into(),
                );
                None
            }
            Err(e) => {
                problem("password", e);
                None
            }
        };
        if config.mailboxes.is_empty() {
            problem("mailboxes", "name at least one mailbox".into());
        }
        for m in &config.mailboxes {
            if m.is_empty() || m.contains(['"', '\\', '\r', '\n']) {
                problem("mailboxes", format!("unusable mailbox name {m:?}"));
            }
        }
        let after = After::parse(&config.after)
            .map_err(|e| problem("after", e))
            .ok();
        if let Some(After::Move(folder)) = &after
            && config.mailboxes.contains(folder)
        {
            problem("after", "cannot move mail into a watched mailbox".into());
        }
        let address = config
            .address
            .as_ref()
            .map(|a| a.trim().to_ascii_lowercase());
        if let Some(a) = &address
            && a.parse::<lettre::Address>().is_err()
        {
            problem("address", "expected an email address".into());
        }
        if config.batch_size == 0 || config.batch_size > 5000 {
            problem("batch_size", "must be between 1 and 5000".into());
        }
        if config.idle_timeout > Duration::from_secs(29 * 60)
            || config.idle_timeout < Duration::from_secs(1)
        {
            problem(
                "idle_timeout",
                "must be between 1s and 29m (RFC 2177)".into(),
            );
        }
        if config.poll_interval < Duration::from_millis(100) {
            problem("poll_interval", "must be at least 100ms".into());
        }
        if config.max_message_bytes < 1024 {
            problem("max_message_bytes", "must be at least 1024".into());
        }
        let mut extra_roots = Vec::new();
        if let Some(file) = &config.ca_file {
            match read_pem_certificates(&base.join(file)) {
                Ok(pems) => {
                    for pem in pems {
                        use rustls_pki_types::pem::PemObject;
                        match rustls_pki_types::CertificateDer::from_pem_slice(&pem) {
                            Ok(c) => extra_roots.push(c),
                            Err(e) => problem("ca_file", format!("bad certificate: {e}")),
                        }
                    }
                }
                Err(e) => problem("ca_file", e),
            }
        }
        let (Some(password), Some(after), true) = (password, after, problems.is_empty()) else {
            return Err(problems);
        };
        Ok(ImapChannel {
            id: ChannelId::new(Adapter::Imap, name),
            host: config.host.clone(),
            port: config.port.unwrap_or(match config.tls {
                TlsMode::Implicit => 993,
                _ => 143,
            }),
            tls: config.tls,
            extra_roots,
            username: config.username.clone(),
            password,
            mailboxes: config.mailboxes.clone(),
            after,
            address,
            idle: config.idle,
            poll_interval: config.poll_interval,
            idle_timeout: config.idle_timeout,
            timeout: config.timeout,
            batch_size: config.batch_size,
            max_message_bytes: config.max_message_bytes,
            keep_raw_bytes: config.keep_raw_bytes,
            plus_tokens: config.plus_tokens,
            max_backoff: config.max_backoff.max(Duration::from_secs(1)),
            smtp,
        })
    }

    /// The shared SMTP sender, when `[smtp]` is configured.
    pub fn smtp(&self) -> Option<&Arc<SmtpSender>> {
        self.smtp.as_ref()
    }

    /// Our addresses, lower case: never answered.
    pub fn own_addresses(&self) -> Vec<String> {
        let mut own: Vec<String> = self.address.iter().cloned().collect();
        if let Some(smtp) = &self.smtp {
            own.push(smtp.from().email.to_string().to_ascii_lowercase());
        }
        own
    }

    /// The acknowledgement mail for `out`.
    pub fn ack_message(&self, smtp: &SmtpSender, out: &Outbound) -> Result<Message, DeliveryError> {
        let ctx = &out.reply_context;
        let field = |k: &str| ctx.get(k).and_then(|v| v.as_str());
        let to_addr = field("to")
            .ok_or_else(|| DeliveryError::Permanent("the mail had no sender address".into()))?;
        let to_addr: lettre::Address = to_addr
            .parse()
            .map_err(|e| DeliveryError::Permanent(format!("unusable sender address: {e}")))?;
        let to = Address::new(field("to_name").map(str::to_owned), to_addr);
        let mut builder = Message::builder()
            .from(smtp.from().clone())
            .to(to)
            .subject(mime::ack_subject(field("subject"), &out.inquiry))
            .message_id(Some(format!(
                "<{}.ack-{}@{}>",
                out.inquiry,
                out.delivery_id,
                smtp.domain()
            )));
        if let Some(id) = field("message_id") {
            builder = builder.in_reply_to(id.to_owned());
        }
        let references: Vec<&str> = ctx
            .get("references")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if !references.is_empty() {
            builder = builder.references(references.join(" "));
        }
        // UTF-8 throughout (`charset=utf-8`); lettre picks the transfer
        // encoding. With an HTML variant of the template the mail is
        // multipart/alternative, plain text first; without, plain text.
        let text = SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(out.text.clone());
        let built = match &out.html {
            Some(html) => builder.multipart(
                MultiPart::alternative().singlepart(text).singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html.clone()),
                ),
            ),
            None => builder.singlepart(text),
        };
        let mut message =
            built.map_err(|e| DeliveryError::Permanent(format!("cannot build the mail: {e}")))?;
        let headers = message.headers_mut();
        let raw = |name: &'static str, value: String| {
            HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
        };
        headers.insert_raw(raw("Auto-Submitted", "auto-replied".into()));
        headers.insert_raw(raw(loops::LOOP_HEADER, smtp.from().email.to_string()));
        headers.insert_raw(raw("X-Auto-Response-Suppress", "All".into()));
        Ok(message)
    }
}

impl ChannelAdapter for ImapChannel {
    fn id(&self) -> &ChannelId {
        &self.id
    }

    /// Mail does not come by webhook.
    fn inbound(&self, _request: &InboundRequest<'_>) -> Result<Inbound, IntakeError> {
        Err(IntakeError::NotFound)
    }

    fn committed(&self, _request: &InboundRequest<'_>, _outcomes: &[IntakeOutcome]) -> Answer {
        Answer::text(http::StatusCode::NOT_FOUND, "not found")
    }

    fn can_reply(&self) -> bool {
        self.smtp.is_some()
    }

    fn sends_html(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, _http: &'a reqwest::Client, out: &'a Outbound) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let smtp = self.smtp.as_ref().ok_or_else(|| {
                DeliveryError::Permanent("no [smtp] section is configured".into())
            })?;
            let message = self.ack_message(smtp, out)?;
            smtp.send(message).await?;
            Ok(Delivered {
                provider_message_id: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        toml::from_str(
            r#"
            host = "127.0.0.1"
            tls = "none"
            username = "support@example.com"
            password = "secret"
            address = "Support@Example.com"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let c = ImapChannel::from_config("support", &config(), None, Path::new(".")).unwrap();
        assert_eq!(c.port, 143);
        assert_eq!(c.mailboxes, vec!["INBOX".to_owned()]);
        assert_eq!(c.after, After::Seen);
        assert_eq!(c.address.as_deref(), Some("support@example.com"));
        assert!(!c.can_reply());

        let mut bad = config();
        bad.host = "imap.example.com".into();
        bad.after = "archive".into();
        bad.password = None;
        bad.idle_timeout = Duration::from_secs(3600);
        let err = ImapChannel::from_config("support", &bad, None, Path::new(".")).unwrap_err();
        let keys: Vec<_> = err.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["tls", "after", "password", "idle_timeout"] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        let mut moving = config();
        moving.after = "move:Done".into();
        let c = ImapChannel::from_config("support", &moving, None, Path::new(".")).unwrap();
        assert_eq!(c.after, After::Move("Done".into()));
    }

    fn ack(html: Option<&str>) -> String {
        let smtp: crate::channels::smtp::SmtpConfig = toml::from_str(
            "host = \"127.0.0.1\"\ntls = \"none\"\nfrom = \"Support <support@example.com>\"\n",
        )
        .unwrap();
        let smtp = Arc::new(SmtpSender::from_config(&smtp, Path::new(".")).unwrap());
        let c = ImapChannel::from_config("support", &config(), Some(smtp.clone()), Path::new("."))
            .unwrap();
        let out = Outbound {
            delivery_id: 7,
            inquiry: "INQ-7K3F9Q".into(),
            in_reply_to: String::new(),
            text: "Grüße, Ada".into(),
            html: html.map(str::to_owned),
            reply_context: serde_json::json!({ "to": "ada@customer.test", "subject": "Hi" }),
        };
        let mail = c.ack_message(&smtp, &out).unwrap().formatted();
        String::from_utf8(mail).unwrap()
    }

    #[test]
    fn ack_is_multipart_alternative_only_with_an_html_variant() {
        let both = ack(Some("<p>Gr&uuml;&szlig;e, Ada</p>"));
        assert!(
            both.contains("Content-Type: multipart/alternative"),
            "{both}"
        );
        let plain_at = both
            .find("Content-Type: text/plain; charset=utf-8")
            .unwrap();
        let html_at = both.find("Content-Type: text/html; charset=utf-8").unwrap();
        assert!(plain_at < html_at, "plain text comes first: {both}");
        assert!(both.contains("Auto-Submitted: auto-replied"), "{both}");

        let plain = ack(None);
        assert!(!plain.contains("multipart"), "{plain}");
        assert!(!plain.contains("text/html"), "{plain}");
        assert!(
            plain.contains("Content-Type: text/plain; charset=utf-8"),
            "{plain}"
        );
    }
}
