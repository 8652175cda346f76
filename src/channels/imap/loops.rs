//! Loop protection: which mail must never be answered automatically
//! (RFC 3834 and what real systems learned), and a guard that limits
//! acknowledgements per sender and trips a circuit breaker on floods.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_parser::{HeaderValue, Message, MimeHeaders};

use crate::channels::smtp::AckLimits;

/// The header we put on every mail we send; mail carrying it is ours.
pub const LOOP_HEADER: &str = "X-Switchboard-Loop";

/// Local parts of senders that are machines, not people.
const MACHINE_SENDERS: &[&str] = &[
    "mailer-daemon",
    "postmaster",
    "noreply",
    "no-reply",
    "no_reply",
    "donotreply",
    "do-not-reply",
    "do_not_reply",
    "bounce",
    "bounces",
    "auto-reply",
    "autoreply",
];

fn header_text<'a>(message: &'a Message<'a>, name: &str) -> Option<String> {
    match message.header(name)? {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(list) => Some(list.join(",")),
        HeaderValue::Address(a) => a.first().and_then(|a| a.address()).map(str::to_owned),
        HeaderValue::ContentType(ct) => Some(ct.c_type.to_string()),
        _ => message.header_raw(name).map(str::to_owned),
    }
}

/// Why `message` must not be acknowledged, if it must not. `own` are our
/// addresses (lower case): the mailbox's and the SMTP sender's.
pub fn no_ack_reason(
    message: &Message<'_>,
    sender: Option<&str>,
    own: &[String],
) -> Option<String> {
    if message.header_raw(LOOP_HEADER).is_some() {
        return Some(format!("carries our loop header {LOOP_HEADER}"));
    }
    if let Some(v) = header_text(message, "Auto-Submitted") {
        let v = v.trim().to_ascii_lowercase();
        if !v.is_empty() && !v.starts_with("no") {
            return Some(format!("Auto-Submitted: {v}"));
        }
    }
    if let Some(v) = header_text(message, "Precedence") {
        let v = v.trim().to_ascii_lowercase();
        if matches!(v.as_str(), "bulk" | "list" | "junk") {
            return Some(format!("Precedence: {v}"));
        }
    }
    for h in ["List-Id", "List-Unsubscribe"] {
        if message.header_raw(h).is_some() {
            return Some(format!("mailing-list mail ({h})"));
        }
    }
    for h in [
        "X-Auto-Response-Suppress",
        "X-Autoreply",
        "X-Autorespond",
        "X-Autoresponder",
    ] {
        if message.header_raw(h).is_some() {
            return Some(format!("automatic mail ({h})"));
        }
    }
    if let Some(rp) = message.header_raw("Return-Path") {
        let rp = rp.trim();
        if rp.is_empty() || rp == "<>" {
            return Some("null Return-Path (a bounce or notification)".into());
        }
    }
    if let Some(ct) = message.content_type()
        && ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        return Some("delivery or disposition report (multipart/report)".into());
    }
    match sender {
        None => return Some("no sender address".into()),
        Some(addr) => {
            let addr = addr.to_ascii_lowercase();
            let local = addr.split('@').next().unwrap_or_default();
            let local = local.split('+').next().unwrap_or_default();
            if MACHINE_SENDERS.contains(&local) {
                return Some(format!("machine sender {addr}"));
            }
            if own.contains(&addr) {
                return Some(format!("sent from our own address {addr}"));
            }
        }
    }
    None
}

/// Per-sender acknowledgement limit and a global circuit breaker, shared
/// by every mailbox of the daemon. It counts acknowledgements it allows;
/// state is in memory (a restart starts afresh).
#[derive(Debug, Default)]
pub struct AckGuard {
    state: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    per_sender: HashMap<String, VecDeque<Instant>>,
    recent: VecDeque<Instant>,
    open_until: Option<Instant>,
}

impl AckGuard {
    pub fn new() -> Self {
        AckGuard::default()
    }

    /// Whether `sender` may get an acknowledgement now; if so it is
    /// counted. `Err` carries the reason recorded on the inquiry.
    pub fn check(&self, sender: &str, limits: AckLimits, now: Instant) -> Result<(), String> {
        let mut st = self.state.lock().expect("ack guard lock");
        if let Some(until) = st.open_until {
            if now < until {
                return Err(
                    "acknowledgement circuit breaker is open (too many acknowledgements)".into(),
                );
            }
            st.open_until = None;
        }
        let minute = Duration::from_secs(60);
        while st
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > minute)
        {
            st.recent.pop_front();
        }
        if st.recent.len() as u64 >= u64::from(limits.breaker_per_minute) {
            st.open_until = Some(now + limits.breaker_cooldown);
            st.recent.clear();
            tracing::error!(
                per_minute = limits.breaker_per_minute,
                cooldown = ?limits.breaker_cooldown,
                "acknowledgement circuit breaker tripped: not acknowledging mail for a while"
            );
            return Err("acknowledgement circuit breaker tripped".into());
        }
        let hour = Duration::from_secs(3600);
        if st.per_sender.len() > 100_000 {
            st.per_sender
                .retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) <= hour));
        }
        let key = sender.to_ascii_lowercase();
        let times = st.per_sender.entry(key).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) > hour) {
            times.pop_front();
        }
        if times.len() as u64 >= u64::from(limits.per_sender_per_hour) {
            return Err(format!(
                "sender already got {} acknowledgements this hour",
                limits.per_sender_per_hour
            ));
        }
        times.push_back(now);
        st.recent.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn reason(raw: &str) -> Option<String> {
        let m = MessageParser::default().parse(raw.as_bytes()).unwrap();
        let from = m
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned);
        no_ack_reason(&m, from.as_deref(), &["support@example.com".to_owned()])
    }

    #[test]
    fn people_get_acknowledged() {
        assert_eq!(
            reason("From: Ada <ada@example.org>\r\nSubject: hi\r\nAuto-Submitted: no\r\n\r\nhello"),
            None
        );
    }

    #[test]
    fn machines_and_lists_do_not() {
        let cases = [
            "From: a@x.org\r\nAuto-Submitted: auto-replied\r\n\r\nx",
            "From: a@x.org\r\nPrecedence: bulk\r\n\r\nx",
            "From: a@x.org\r\nList-Id: <dev.lists.x.org>\r\n\r\nx",
            "From: a@x.org\r\nList-Unsubscribe: <mailto:u@x.org>\r\n\r\nx",
            "From: a@x.org\r\nX-Autoreply: yes\r\n\r\nx",
            "From: a@x.org\r\nX-Auto-Response-Suppress: All\r\n\r\nx",
            "Return-Path: <>\r\nFrom: a@x.org\r\n\r\nx",
            "From: MAILER-DAEMON@x.org\r\n\r\nx",
            "From: no-reply@x.org\r\n\r\nx",
            "From: support@example.com\r\n\r\nx",
            "From: a@x.org\r\nX-Switchboard-Loop: support@example.com\r\n\r\nx",
            "From: a@x.org\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
            "Subject: nobody\r\n\r\nx",
        ];
        for raw in cases {
            assert!(reason(raw).is_some(), "should not be acknowledged: {raw:?}");
        }
    }

    #[test]
    fn guard_limits_per_sender_and_trips_the_breaker() {
        let limits = AckLimits {
            per_sender_per_hour: 2,
            breaker_per_minute: 5,
            breaker_cooldown: Duration::from_secs(60),
        };
        let g = AckGuard::new();
        let t = Instant::now();
        assert!(g.check("a@x", limits, t).is_ok());
        assert!(g.check("A@x", limits, t).is_ok());
        assert!(g.check("a@x", limits, t).is_err(), "third in the hour");
        assert!(
            g.check("a@x", limits, t + Duration::from_secs(3601))
                .is_ok()
        );
        let g = AckGuard::new();
        for i in 0..5 {
            assert!(g.check(&format!("s{i}@x"), limits, t).is_ok());
        }
        assert!(g.check("s9@x", limits, t).is_err(), "breaker trips");
        assert!(
            g.check("s10@x", limits, t + Duration::from_secs(30))
                .is_err()
        );
        assert!(
            g.check("s11@x", limits, t + Duration::from_secs(61))
                .is_ok()
        );
    }
}
