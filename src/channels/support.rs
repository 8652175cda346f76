//! Pieces every provider adapter needs: secrets and base URLs from config,
//! phone-number identity, the follow-up window, outbound pacing, and reading
//! a provider's JSON answer without echoing it into logs.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::secret::{Secret, SecretSource};

use super::{DeliveryError, classify_transport};

/// Problems found while validating one channel table, as `(key, message)`.
pub(crate) type Problems = Vec<(String, String)>;

/// Follow-up window used when a provider channel does not set one.
pub const DEFAULT_FOLLOW_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Longest a delivery waits for its pacing slot before handing the entry
/// back to the outbox with a `RetryAfter`.
const MAX_PACING_WAIT: Duration = Duration::from_secs(2);

/// Resolves a secret given as `<key>`, `<key>_env` or `<key>_file`.
/// `required` ones report a problem when none of the three is set.
pub(crate) fn secret(
    key: &str,
    (inline, env, file): (&Option<String>, &Option<String>, &Option<String>),
    base: &Path,
    required: bool,
    problems: &mut Problems,
) -> Option<Secret> {
    match SecretSource::new(key, inline, env, file).resolve(base) {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            if required {
                problems.push((
                    key.to_owned(),
                    format!("required: give `{key}`, `{key}_env` or `{key}_file`"),
                ));
            }
            None
        }
        Err(e) => {
            problems.push((key.to_owned(), e));
            None
        }
    }
}

/// A required plain (non-secret) string setting.
pub(crate) fn required(key: &str, value: &Option<String>, problems: &mut Problems) -> String {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => {
            problems.push((key.to_owned(), "required".to_owned()));
            String::new()
        }
    }
}

/// An http(s) base URL, without a trailing slash so paths can be appended.
pub(crate) fn base_url(
    key: &str,
    value: &Option<String>,
    default: &str,
    problems: &mut Problems,
) -> String {
    let raw = value.as_deref().unwrap_or(default).trim();
    match reqwest::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            if url.query().is_some() || url.fragment().is_some() {
                problems.push((
                    key.to_owned(),
                    "must not have a query or fragment".to_owned(),
                ));
            }
            raw.trim_end_matches('/').to_owned()
        }
        Ok(_) => {
            problems.push((key.to_owned(), "expected an http(s) URL".to_owned()));
            String::new()
        }
        Err(e) => {
            problems.push((key.to_owned(), format!("not a URL: {e}")));
            String::new()
        }
    }
}

/// The follow-up window of a channel: the default when unset, none when zero.
pub(crate) fn follow_up_window(configured: Option<Duration>) -> Option<Duration> {
    match configured {
        None => Some(DEFAULT_FOLLOW_UP_WINDOW),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    }
}

/// Caller ids Twilio uses for callers who withheld or have no number: they
/// look like E.164 but nobody can be called or texted back on them.
const WITHHELD_NUMBERS: [&str; 4] = ["+266696687", "+7378742833", "+2562533", "+8656696"];

/// Normalizes a phone number to E.164 (`+4930123456`): strips a channel
/// prefix (`whatsapp:`, `sms:`, `tel:`), spaces, dashes, dots and
/// parentheses, turns a leading `00` into `+`, and adds `+` to bare digits
/// (WhatsApp's `wa_id`). Anything else (SIP addresses, `client:` ids,
/// `anonymous`, withheld numbers) is not a phone number.
pub fn normalize_phone(raw: &str) -> Option<String> {
    let mut s = raw.trim();
    for prefix in ["whatsapp:", "sms:", "tel:"] {
        if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
            s = s[prefix.len()..].trim();
        }
    }
    let mut digits = String::with_capacity(s.len());
    let mut plus = false;
    for (i, c) in s.chars().enumerate() {
        match c {
            '+' if i == 0 => plus = true,
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
            _ => return None,
        }
    }
    if !plus && let Some(rest) = digits.strip_prefix("00") {
        digits = rest.to_owned();
    }
    if !(6..=15).contains(&digits.len()) || digits.starts_with('0') {
        return None;
    }
    let e164 = format!("+{digits}");
    (!WITHHELD_NUMBERS.contains(&e164.as_str())).then_some(e164)
}

/// The cross-channel identity of a phone number: `tel:+4930123456`, the same
/// whether it wrote by SMS, WhatsApp (Twilio or Meta) or called.
pub fn phone_customer_key(raw: &str) -> Option<String> {
    normalize_phone(raw).map(|p| format!("tel:{p}"))
}

/// Spaces outbound requests of one channel instance to at most
/// `max_per_second`. A delivery that would wait longer than
/// [`MAX_PACING_WAIT`] is handed back to the outbox with `RetryAfter`
/// instead of holding a delivery slot.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    pub(crate) fn new(max_per_second: Option<f64>) -> Pacer {
        Pacer {
            interval: max_per_second
                .filter(|r| *r > 0.0 && r.is_finite())
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Mutex::new(Instant::now()),
        }
    }

    pub(crate) async fn wait(&self) -> Result<(), DeliveryError> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let slot = {
            let mut next = self.next.lock().expect("pacer lock");
            let now = Instant::now();
            let slot = (*next).max(now);
            let wait = slot - now;
            if wait > MAX_PACING_WAIT {
                return Err(DeliveryError::RetryAfter {
                    after: wait,
                    reason: "channel rate limit (max_per_second) reached".into(),
                });
            }
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
        Ok(())
    }
}

/// Checks `max_per_second` from a config table.
pub(crate) fn check_rate(value: Option<f64>, problems: &mut Problems) {
    if let Some(r) = value
        && !(r > 0.0 && r.is_finite())
    {
        problems.push((
            "max_per_second".to_owned(),
            "must be a positive number".to_owned(),
        ));
    }
}

/// The longest provider answer read: theirs are a few hundred bytes of
/// JSON, and a longer one is not buffered whole.
const ANSWER_LIMIT: usize = 1024 * 1024;

/// Sends a prepared request and returns status, headers and JSON body
/// (`Null` when the body is not JSON, or longer than [`ANSWER_LIMIT`]).
/// Transport errors are classified without echoing the URL, which can
/// carry a token (Telegram).
pub(crate) async fn send_json(
    request: reqwest::RequestBuilder,
) -> Result<
    (
        reqwest::StatusCode,
        reqwest::header::HeaderMap,
        serde_json::Value,
    ),
    DeliveryError,
> {
    let response = request.send().await.map_err(|e| classify_transport(&e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let json = match read_at_most(response, ANSWER_LIMIT).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        Ok(None) => {
            tracing::warn!(
                %status,
                limit = ANSWER_LIMIT,
                "provider answer too long; not read"
            );
            serde_json::Value::Null
        }
        Err(e) => return Err(classify_transport(&e)),
    };
    Ok((status, headers, json))
}

/// The body, or `None` once it passes `limit` bytes: the rest is left
/// unread (and the connection closed), so no answer is buffered whole
/// however long it is. The request's timeout bounds the time spent.
async fn read_at_most(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The most of an answer's body read only to keep its connection.
const DISCARD_LIMIT: usize = 256 * 1024;

/// Reads a response body we have no use for, up to [`DISCARD_LIMIT`]: hyper
/// returns a connection to the pool only once its body was read to the
/// end, and closes it otherwise, so an endpoint answering with more than
/// one read's worth would cost a new connection (and TLS handshake) per
/// delivery. A longer body is dropped and its connection closed.
pub(crate) async fn discard_body(response: reqwest::Response) {
    let _ = read_at_most(response, DISCARD_LIMIT).await;
}

/// A short, single-line excerpt of a provider's error text for the event
/// log (never a message body of ours).
pub(crate) fn excerpt(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(160)
        .collect();
    line.trim().to_owned()
}

/// Escapes text for XML content and attribute values (TwiML).
pub(crate) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A 400 reason for a payload that does not parse. serde quotes offending
/// values (`invalid type: string "…"`), which may be a customer's words;
/// the reason is logged, so quoted values are elided. Field names (in
/// backticks) and the position stay.
pub(crate) fn json_error(e: &serde_json::Error) -> super::IntakeError {
    let mut text = String::new();
    let mut quoted = false;
    for c in e.to_string().chars() {
        match c {
            '"' if quoted => {
                quoted = false;
                text.push_str("…\"");
            }
            '"' => {
                quoted = true;
                text.push('"');
            }
            _ if quoted => {}
            c => text.push(c),
        }
    }
    super::IntakeError::Malformed(format!("invalid JSON body: {text}"))
}

/// A provider id or key taken from a payload: trimmed, non-empty, bounded,
/// printable.
pub(crate) fn id_field(name: &str, value: Option<&str>) -> Result<String, super::IntakeError> {
    let v = value.map(str::trim).unwrap_or("");
    if v.is_empty() {
        return Err(super::IntakeError::Malformed(format!("missing `{name}`")));
    }
    if v.len() > 256 || v.chars().any(char::is_control) {
        return Err(super::IntakeError::Malformed(format!(
            "`{name}` is not a valid id"
        )));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider answering 200 with a JSON body of about `len` bytes.
    async fn answering(len: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let body = serde_json::json!({ "ok": true, "padding": "x".repeat(len) }).to_string();
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn provider_answers_are_read_up_to_a_limit() {
        let http = reqwest::Client::new();
        let url = answering(100).await;
        let (status, _, json) = send_json(http.post(&url)).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(json["ok"], true);
        // Valid JSON, but longer than anything a provider sends: not buffered.
        let url = answering(ANSWER_LIMIT + 1).await;
        let (status, _, json) = send_json(http.post(&url)).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(json, serde_json::Value::Null);
    }

    #[test]
    fn phone_numbers_normalize_to_one_identity() {
        let same = [
            "+49 30 1234567",
            "whatsapp:+4930 1234567",
            "WhatsApp:+49-30-1234567",
            "tel:+49 (30) 1234567",
            "0049301234567",
            "49301234567",
        ];
        for raw in same {
            assert_eq!(
                phone_customer_key(raw).as_deref(),
                Some("tel:+49301234567"),
                "{raw}"
            );
        }
        for not_phone in [
            "",
            "anonymous",
            "client:alice",
            "sip:alice@example.com",
            "+266696687",
            "+12",
            "+1234567890123456",
            "030 1234567",
            "+49 30 12x4567",
        ] {
            assert_eq!(normalize_phone(not_phone), None, "{not_phone}");
        }
    }

    #[test]
    fn follow_up_window_defaults_and_disables() {
        assert_eq!(follow_up_window(None), Some(DEFAULT_FOLLOW_UP_WINDOW));
        assert_eq!(follow_up_window(Some(Duration::ZERO)), None);
        assert_eq!(
            follow_up_window(Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        let mut problems = Problems::new();
        assert_eq!(
            base_url("api_base", &None, "https://api.example.com/", &mut problems),
            "https://api.example.com"
        );
        assert_eq!(
            base_url(
                "api_base",
                &Some("http://127.0.0.1:9/v1/".into()),
                "x",
                &mut problems
            ),
            "http://127.0.0.1:9/v1"
        );
        assert!(problems.is_empty());
        base_url("api_base", &Some("ftp://x".into()), "x", &mut problems);
        base_url("api_base", &Some("nope".into()), "x", &mut problems);
        base_url(
            "api_base",
            &Some("https://x/?a=1".into()),
            "x",
            &mut problems,
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[tokio::test]
    async fn pacer_spaces_requests_and_hands_back_long_waits() {
        let pacer = Pacer::new(Some(20.0));
        let start = Instant::now();
        for _ in 0..3 {
            pacer.wait().await.unwrap();
        }
        // Three slots at 50 ms spacing: the third starts ~100 ms in.
        assert!(start.elapsed() >= Duration::from_millis(95));
        let slow = Pacer::new(Some(0.1));
        slow.wait().await.unwrap();
        match slow.wait().await {
            Err(DeliveryError::RetryAfter { after, .. }) => {
                assert!(after > Duration::from_secs(5))
            }
            other => panic!("{other:?}"),
        }
        assert!(Pacer::new(None).wait().await.is_ok());
    }

    #[test]
    fn json_errors_name_fields_but_not_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            n: i64,
        }
        let e = serde_json::from_str::<T>(r#"{"n": "my card 4111 is blocked"}"#).unwrap_err();
        let super::super::IntakeError::Malformed(m) = json_error(&e) else {
            panic!()
        };
        assert!(!m.contains("4111"), "{m}");
        assert!(m.contains("invalid type") && m.contains("line 1"), "{m}");
        let e = serde_json::from_str::<T>("{}").unwrap_err();
        let super::super::IntakeError::Malformed(m) = json_error(&e) else {
            panic!()
        };
        assert!(m.contains("missing field `n`"), "{m}");
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(
            xml_escape("a<b & \"c\" 'd'>\u{7}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
    }
}
