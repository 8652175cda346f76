//! Outgoing mail over SMTP (lettre, tokio, rustls): one shared connection
//! pool built from the top-level `[smtp]` section. The email channel sends
//! acknowledgements with it; associate notifications by email can use the
//! same sender.
//!
//! Replies are classified for the outbox: a 4xx (or a connection problem)
//! is [`DeliveryError::Transient`] and retried, a 5xx is
//! [`DeliveryError::Permanent`] with the server's text.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::{Message, transport::smtp::Error as SmtpError};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::DeliveryError;
use crate::config::secret::SecretSource;

/// How a connection to a mail server is secured. `none` is refused for
/// anything but a loopback address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (SMTPS 465, IMAPS 993).
    Implicit,
    /// Plain connection upgraded with STARTTLS before authenticating.
    #[default]
    Starttls,
    /// No TLS at all: only for servers on a loopback address.
    None,
}

/// Whether `host` names this machine, where `tls = "none"` is acceptable.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `[smtp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default: 465 for `implicit`, 587 for `starttls`, 25 for `none`.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of extra CA certificates to trust (relative to the config
    /// file), e.g. a company CA. Public roots are always trusted.
    pub ca_file: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    /// Sender of acknowledgements, e.g. `Support <support@example.com>`.
    pub from: String,
    /// Connections kept open to the server.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Send MAIL, RCPT and DATA in one write when the server announces
    /// PIPELINING (RFC 2920). Off only for a server or proxy that
    /// announces it but mishandles it.
    #[serde(default = "default_true")]
    pub pipelining: bool,
    /// Timeout of one SMTP command.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most acknowledgements one sender address gets per hour (loop guard).
    #[serde(default = "default_per_sender")]
    pub max_acks_per_sender_per_hour: u32,
    /// Circuit breaker: when more acknowledgements than this were queued in
    /// the last minute across all mailboxes, stop acknowledging for
    /// `breaker_cooldown`.
    #[serde(default = "default_breaker")]
    pub breaker_acks_per_minute: u32,
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

fn default_pool_size() -> u32 {
    8
}
fn default_true() -> bool {
    true
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_per_sender() -> u32 {
    5
}
fn default_breaker() -> u32 {
    600
}
fn default_cooldown() -> Duration {
    Duration::from_secs(600)
}

/// Limits of the acknowledgement guard, from `[smtp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckLimits {
    pub per_sender_per_hour: u32,
    pub breaker_per_minute: u32,
    pub breaker_cooldown: Duration,
}

/// A configured SMTP sender: a pool of lettre SMTP connections and the
/// `From` address.
///
/// The pool is our own rather than lettre's: lettre's connections never set
/// `TCP_NODELAY` and write the body and the final dot separately, so every
/// message waits ~40 ms for a delayed ACK (about 23 messages/s on one
/// connection). Here each connection is a TCP stream with `TCP_NODELAY`,
/// handed to lettre's SMTP protocol code.
///
/// lettre sends MAIL, RCPT, DATA and the message as four round trips. When
/// the server announces PIPELINING (RFC 2920) we send MAIL, RCPT and DATA
/// in one write instead (see [`send_pipelined`]): two round trips per mail,
/// and half the wake-ups of the server's SMTP process.
pub struct SmtpSender {
    port: u16,
    tls: TlsMode,
    /// STARTTLS parameters (lettre) and the implicit-TLS connector.
    starttls: Option<TlsParameters>,
    implicit: Option<tokio_rustls::TlsConnector>,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<Pooled>>,
    permits: Semaphore,
    /// `[smtp] pipelining`: use PIPELINING where the server offers it.
    pipelining: bool,
    from: Mailbox,
    /// The domain of `from`, used in the Message-IDs we make.
    domain: String,
    limits: AckLimits,
    host: String,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("host", &self.host)
            .field("from", &self.from.email.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Validates `[smtp]`; problems come back as `(key, message)` pairs
    /// relative to the section. Connections are opened on first use.
    pub fn from_config(config: &SmtpConfig, base: &Path) -> Result<Self, Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        if config.host.trim().is_empty() {
            problems.push(("host".into(), "must not be empty".into()));
        }
        if config.tls == TlsMode::None && !is_loopback(&config.host) {
            problems.push((
                "tls".into(),
                "`none` is only allowed for a loopback host (127.0.0.1, ::1, localhost); use `implicit` or `starttls`".into(),
            ));
        }
        if config.pool_size == 0 {
            problems.push(("pool_size".into(), "must be at least 1".into()));
        }
        let from: Option<Mailbox> = match config.from.parse() {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push((
                    "from".into(),
                    format!("expected an address like `Support <support@example.com>`: {e}"),
                ));
                None
            }
        };
        let password = SecretSource::new(
            "password",
            &config.password,
            &config.password_env,
            &config.password_file,
        )
        .resolve(base)
        .unwrap_or_else(|e| {
            problems.push(("password".into(), e));
            None
        });
        if password.is_some() != config.username.is_some() {
            problems.push((
                "username".into(),
                "give both `username` and a password, or neither".into(),
            ));
        }
        let extra_roots = match &config.ca_file {
            None => Vec::new(),
            Some(file) => match read_pem_certificates(&base.join(file)) {
                Ok(certs) => certs,
                Err(e) => {
                    problems.push(("ca_file".into(), e));
                    Vec::new()
                }
            },
        };
        let mut starttls = None;
        let mut implicit = None;
        match config.tls {
            TlsMode::None => {}
            TlsMode::Starttls => {
                let mut builder = TlsParameters::builder(config.host.clone())
                    .certificate_store(CertificateStore::Default);
                for pem in &extra_roots {
                    match Certificate::from_pem(pem) {
                        Ok(c) => builder = builder.add_root_certificate(c),
                        Err(e) => problems.push(("ca_file".into(), e.to_string())),
                    }
                }
                match builder.build_rustls() {
                    Ok(params) => starttls = Some(params),
                    Err(e) => problems.push(("tls".into(), format!("cannot set up TLS: {e}"))),
                }
            }
            TlsMode::Implicit => {
                let mut ders = Vec::new();
                for pem in &extra_roots {
                    use rustls_pki_types::pem::PemObject;
                    match CertificateDer::from_pem_slice(pem) {
                        Ok(c) => ders.push(c),
                        Err(e) => {
                            problems.push(("ca_file".into(), format!("bad certificate: {e}")))
                        }
                    }
                }
                match tls_connector(&ders) {
                    Ok(c) => implicit = Some(c),
                    Err(e) => problems.push(("ca_file".into(), e)),
                }
            }
        }
        let (Some(from), true) = (from, problems.is_empty()) else {
            return Err(problems);
        };
        let port = config.port.unwrap_or(match config.tls {
            TlsMode::Implicit => 465,
            TlsMode::Starttls => 587,
            TlsMode::None => 25,
        });
        let domain = from.email.domain().to_owned();
        let credentials = match (&config.username, password) {
            (Some(user), Some(password)) => {
                Some(Credentials::new(user.clone(), password.expose().to_owned()))
            }
            _ => None,
        };
        Ok(SmtpSender {
            port,
            tls: config.tls,
            starttls,
            implicit,
            credentials,
            timeout: config.timeout,
            hello: ClientId::Domain(domain.clone()),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(config.pool_size as usize),
            pipelining: config.pipelining,
            from,
            domain,
            limits: AckLimits {
                per_sender_per_hour: config.max_acks_per_sender_per_hour,
                breaker_per_minute: config.breaker_acks_per_minute,
                breaker_cooldown: config.breaker_cooldown,
            },
            host: config.host.clone(),
        })
    }

    /// The `From` of mail we send.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// The domain our Message-IDs use.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn limits(&self) -> AckLimits {
        self.limits
    }

    /// Sends one message; the error says whether retrying can help.
    pub async fn send(&self, message: Message) -> Result<(), DeliveryError> {
        let envelope = message.envelope().clone();
        let bytes = message.formatted();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DeliveryError::Transient("SMTP sender closed".into()))?;
        let pooled = self.idle.lock().expect("smtp pool lock").pop();
        let (mut conn, reused) = match pooled {
            Some(c) if !c.smtp.has_broken() => (c, true),
            _ => (self.connect().await?, false),
        };
        let mut result = self.transaction(&mut conn, &envelope, &bytes).await;
        // A pooled connection the server has closed meanwhile: once more on
        // a new one. (Not after a reply: the server has decided.)
        if reused && matches!(result, Err(Failure::Connection(_))) {
            conn = self.connect().await?;
            result = self.transaction(&mut conn, &envelope, &bytes).await;
        }
        match result {
            Ok(()) => {
                self.idle.lock().expect("smtp pool lock").push(conn);
                Ok(())
            }
            // After a refusal the transaction state is unclear: drop the connection.
            Err(Failure::Reply(e) | Failure::Connection(e)) => Err(classify_smtp(&e)),
            Err(Failure::Local(e)) => Err(e),
        }
    }

    /// One mail on `conn`, within the command timeout.
    async fn transaction(
        &self,
        conn: &mut Pooled,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> Result<(), Failure> {
        let send = async {
            if conn.pipelining {
                send_pipelined(&mut conn.smtp, envelope, bytes).await
            } else {
                conn.smtp
                    .send(envelope, bytes)
                    .await
                    .map(drop)
                    .map_err(Failure::of)
            }
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Local(DeliveryError::Transient(
                "SMTP timed out".into(),
            ))),
        }
    }

    async fn connect(&self) -> Result<Pooled, DeliveryError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            DeliveryError::Transient(format!("SMTP {what} {}:{}: {e}", self.host, self.port))
        };
        let connecting = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail("cannot connect to", &e))?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn AsyncTokioStream> = match &self.implicit {
                Some(connector) => {
                    let name =
                        rustls_pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                            DeliveryError::Permanent(format!("bad SMTP host name: {e}"))
                        })?;
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| fail("TLS failed with", &e))?;
                    Box::new(TlsTcp(tls))
                }
                None => Box::new(tcp),
            };
            let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
                .await
                .map_err(|e| classify_smtp(&e))?;
            if self.tls == TlsMode::Starttls
                && let Some(params) = &self.starttls
            {
                conn.starttls(params.clone(), &self.hello)
                    .await
                    .map_err(|e| classify_smtp(&e))?;
            }
            // lettre keeps only the extensions it uses itself, so ask once
            // more for the list (one round trip per connection), before
            // AUTH so that the greeting cannot touch the login.
            let pipelining = self.pipelining
                && conn
                    .command(Ehlo::new(self.hello.clone()))
                    .await
                    .map_err(|e| classify_smtp(&e))?
                    .message()
                    .any(|line| line.trim().eq_ignore_ascii_case("PIPELINING"));
            if let Some(credentials) = &self.credentials {
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                    .await
                    .map_err(|e| classify_smtp(&e))?;
            }
            Ok(Pooled {
                smtp: conn,
                pipelining,
            })
        };
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Transient("SMTP connect timed out".into())),
        }
    }
}

/// One pooled connection and what its server announced.
struct Pooled {
    smtp: AsyncSmtpConnection,
    /// The server announced PIPELINING (RFC 2920).
    pipelining: bool,
}

/// How one mail on a connection went wrong.
enum Failure {
    /// The server refused (a 4xx or 5xx reply), with its text.
    Reply(SmtpError),
    /// The connection broke before the server answered.
    Connection(SmtpError),
    /// Decided here: a timeout, or the server lacks an extension the mail
    /// needs.
    Local(DeliveryError),
}

impl Failure {
    fn of(e: SmtpError) -> Failure {
        if e.status().is_some() {
            Failure::Reply(e)
        } else {
            Failure::Connection(e)
        }
    }
}

/// Sends one mail with MAIL, every RCPT and DATA in one write (RFC 2920),
/// reads their replies in order, and then sends the message and reads the
/// final reply: two round trips.
///
/// Every reply of the group is read, even after a refusal, so the first
/// refusal is reported with the server's own text. The caller then drops
/// the connection; a DATA that was answered 354 after a refused RCPT is
/// thereby cut off before the final dot, and the server discards it.
async fn send_pipelined(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    body: &[u8],
) -> Result<(), Failure> {
    use std::fmt::Write;
    // The parameters lettre's own `send` would give (RFC 6531, RFC 6152).
    let mut params = Vec::new();
    let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
    let non_ascii =
        envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a));
    if non_ascii {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(Failure::Local(DeliveryError::Permanent(
                "the mail has a non-ASCII address, but the SMTP server does not support SMTPUTF8"
                    .into(),
            )));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(Failure::Local(DeliveryError::Permanent(
                "the mail is not ASCII, but the SMTP server does not support 8BITMIME".into(),
            )));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let mut group = Mail::new(envelope.from().cloned(), params).to_string();
    for to in envelope.to() {
        let _ = write!(group, "{}", Rcpt::new(to.clone(), Vec::new()));
    }
    let _ = write!(group, "{Data}");
    // `command` writes the whole group at once and reads MAIL's reply;
    // one reply follows for every RCPT and one for DATA.
    let mut reply = conn.command(group).await.map(drop);
    let mut refused: Option<SmtpError> = None;
    for left in (0..=envelope.to().len() + 1).rev() {
        match reply.map_err(Failure::of) {
            Ok(()) => {}
            Err(Failure::Reply(e)) => {
                refused.get_or_insert(e);
            }
            // The server may hang up after a refusal (421): report that.
            Err(broken) => return Err(refused.map_or(broken, Failure::Reply)),
        }
        if left == 0 {
            break;
        }
        reply = conn.read_response().await.map(drop);
    }
    if let Some(e) = refused {
        return Err(Failure::Reply(e));
    }
    conn.message(body).await.map(drop).map_err(Failure::of)
}

/// An implicit-TLS connection for lettre's SMTP protocol code.
#[derive(Debug)]
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for TlsTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A rustls client trusting the public roots and `extra_roots`; used for
/// IMAP and implicit-TLS SMTP.
pub(crate) fn tls_connector(
    extra_roots: &[CertificateDer<'static>],
) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// 4xx and transport problems are worth a retry; 5xx is final, with the
/// server's text.
fn classify_smtp(e: &lettre::transport::smtp::Error) -> DeliveryError {
    if e.is_permanent() {
        DeliveryError::Permanent(format!("SMTP server refused: {e}"))
    } else if e.is_transient() {
        DeliveryError::Transient(format!("SMTP server deferred: {e}"))
    } else if e.is_timeout() {
        DeliveryError::Transient("SMTP timed out".into())
    } else if e.is_tls() {
        DeliveryError::Transient(format!("SMTP TLS failed: {e}"))
    } else {
        DeliveryError::Transient(format!("SMTP failed: {e}"))
    }
}

/// Reads every PEM certificate in `path`, each as its own PEM text.
pub(crate) fn read_pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END CERTIFICATE-----") {
            out.push(std::mem::take(&mut current).into_bytes());
        }
    }
    if out.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(host: &str, tls: TlsMode) -> SmtpConfig {
        SmtpConfig {
            host: host.into(),
            port: None,
            tls,
            ca_file: None,
            username: None,
            password: None,
            password_env: None,
            password_file: None,
            from: "Support <support@example.com>".into(),
            pool_size: 4,
            pipelining: true,
            timeout: Duration::from_secs(5),
            max_acks_per_sender_per_hour: 5,
            breaker_acks_per_minute: 100,
            breaker_cooldown: Duration::from_secs(60),
        }
    }

    #[test]
    fn plain_smtp_only_on_loopback() {
        let base = Path::new(".");
        assert!(SmtpSender::from_config(&config("127.0.0.1", TlsMode::None), base).is_ok());
        assert!(SmtpSender::from_config(&config("localhost", TlsMode::None), base).is_ok());
        let err =
            SmtpSender::from_config(&config("mail.example.com", TlsMode::None), base).unwrap_err();
        assert_eq!(err[0].0, "tls");
        assert!(
            SmtpSender::from_config(&config("mail.example.com", TlsMode::Starttls), base).is_ok()
        );
    }

    #[test]
    fn bad_from_and_half_credentials_are_reported() {
        let mut c = config("127.0.0.1", TlsMode::None);
        c.from = "not an address".into();
        c.username = Some("u".into());
        let err = SmtpSender::from_config(&c, Path::new(".")).unwrap_err();
        let keys: Vec<_> = err.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            keys.contains(&"from") && keys.contains(&"username"),
            "{keys:?}"
        );
    }

    /// A scripted SMTP server on loopback for one connection: announces
    /// PIPELINING, answers MAIL with `mail_reply` (hanging up after a 421)
    /// and RCPT with `rcpt_reply`, and returns everything the client wrote.
    async fn fake_server(
        mail_reply: &'static str,
        rcpt_reply: &'static str,
    ) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut read = BufReader::new(read);
            let mut seen = String::new();
            write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut in_data = false;
            let mut rcpt_ok = false;
            loop {
                let mut line = String::new();
                if read.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                seen.push_str(&line);
                let reply: &str = if in_data {
                    if line != ".\r\n" {
                        continue;
                    }
                    in_data = false;
                    "250 2.0.0 queued\r\n"
                } else {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    match verb.as_str() {
                        "EHLO" => "250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                        "MAIL" if mail_reply.starts_with("421") => {
                            write.write_all(mail_reply.as_bytes()).await.unwrap();
                            // Take the rest of the group, then hang up
                            // (unread input would make it a reset).
                            while !line.starts_with("DATA") {
                                line.clear();
                                if read.read_line(&mut line).await.unwrap() == 0 {
                                    break;
                                }
                                seen.push_str(&line);
                            }
                            break;
                        }
                        "MAIL" => mail_reply,
                        "RCPT" => {
                            rcpt_ok = rcpt_reply.starts_with('2');
                            rcpt_reply
                        }
                        "DATA" if rcpt_ok => {
                            in_data = true;
                            "354 go ahead\r\n"
                        }
                        "DATA" => "554 5.5.1 Error: no valid recipients\r\n",
                        "QUIT" => "221 bye\r\n",
                        _ => "502 5.5.2 what\r\n",
                    }
                };
                write.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        (port, server)
    }

    fn message(sender: &SmtpSender) -> Message {
        Message::builder()
            .from(sender.from().clone())
            .to("Customer <c@customer.test>".parse().unwrap())
            .subject("Re: Order [INQ-000001]")
            .body(".a line with a leading dot\r\nbye\r\n".to_owned())
            .unwrap()
    }

    fn sender(port: u16) -> SmtpSender {
        let mut c = config("127.0.0.1", TlsMode::None);
        c.port = Some(port);
        SmtpSender::from_config(&c, Path::new(".")).unwrap()
    }

    #[tokio::test]
    async fn pipelined_send_is_accepted_and_dot_stuffed() {
        let (port, server) = fake_server("250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n").await;
        let smtp = sender(port);
        smtp.send(message(&smtp)).await.unwrap();
        drop(smtp);
        let seen = server.await.unwrap();
        let mail = seen.find("MAIL FROM:<support@example.com>").unwrap();
        let rcpt = seen.find("RCPT TO:<c@customer.test>").unwrap();
        let data = seen.find("DATA\r\n").unwrap();
        assert!(mail < rcpt && rcpt < data, "{seen}");
        assert!(
            seen.contains("\r\n..a line with a leading dot\r\n"),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn pipelined_refusal_reports_the_server_text() {
        let (port, server) = fake_server(
            "250 2.1.0 Ok\r\n",
            "550 5.1.1 <c@customer.test>: unknown user\r\n",
        )
        .await;
        let smtp = sender(port);
        let err = smtp.send(message(&smtp)).await.unwrap_err();
        match &err {
            DeliveryError::Permanent(text) => assert!(text.contains("unknown user"), "{text}"),
            other => panic!("expected a permanent refusal, got {other:?}"),
        }
        drop(smtp);
        // Refused: the connection was dropped, no body was sent.
        let seen = server.await.unwrap();
        assert!(!seen.contains("leading dot"), "{seen}");

        // A 4xx to RCPT, and a server that hangs up after refusing MAIL:
        // both transient, with the server's reply.
        for (mail, rcpt, reply) in [
            (
                "250 2.1.0 Ok\r\n",
                "452 4.2.2 mailbox full\r\n",
                "mailbox full",
            ),
            (
                "421 4.3.2 shutting down\r\n",
                "250 2.1.5 Ok\r\n",
                "shutting down",
            ),
        ] {
            let (port, server) = fake_server(mail, rcpt).await;
            let smtp = sender(port);
            let err = smtp.send(message(&smtp)).await.unwrap_err();
            assert!(
                matches!(&err, DeliveryError::Transient(t) if t.contains(reply)),
                "{err:?}"
            );
            drop(smtp);
            server.await.unwrap();
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("example.com"));
    }
}
