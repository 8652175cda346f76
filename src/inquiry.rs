//! The normalized model every part of Switchboard shares.
//!
//! Channel adapters produce [`NewMessage`]s; the store turns them into
//! [`Inquiry`]s; rules, routing and the outbox read them. Nothing here knows
//! about a provider, a table or a rule.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The adapter families Switchboard speaks. The wire names are the config
/// table names (`[channels.<adapter>.<name>]`) and the URL segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Adapter {
    Generic,
    Imap,
    Twilio,
    Slack,
    Whatsapp,
    Telegram,
}

impl Adapter {
    pub const ALL: [Adapter; 6] = [
        Adapter::Generic,
        Adapter::Imap,
        Adapter::Twilio,
        Adapter::Slack,
        Adapter::Whatsapp,
        Adapter::Telegram,
    ];

    /// The adapter of a config table or URL segment name.
    pub fn parse(name: &str) -> Option<Adapter> {
        Adapter::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Adapter::Generic => "generic",
            Adapter::Imap => "imap",
            Adapter::Twilio => "twilio",
            Adapter::Slack => "slack",
            Adapter::Whatsapp => "whatsapp",
            Adapter::Telegram => "telegram",
        }
    }
}

/// One configured channel instance, e.g. `generic/shop`. Written as
/// `adapter/name` in the store, the API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelId {
    pub adapter: Adapter,
    pub name: String,
}

impl ChannelId {
    pub fn new(adapter: Adapter, name: impl Into<String>) -> Self {
        ChannelId {
            adapter,
            name: name.into(),
        }
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.adapter.as_str(), self.name)
    }
}

/// The medium a customer used. Associates' capacity is counted per medium,
/// because answering a call and answering a mail are different loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    Email,
    Sms,
    Voice,
    Chat,
    Generic,
}

impl Medium {
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::Email => "email",
            Medium::Sms => "sms",
            Medium::Voice => "voice",
            Medium::Chat => "chat",
            Medium::Generic => "generic",
        }
    }
}

impl FromStr for Medium {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "email" => Medium::Email,
            "sms" => Medium::Sms,
            "voice" => Medium::Voice,
            "chat" => Medium::Chat,
            "generic" => Medium::Generic,
            other => return Err(UnknownValue::new("medium", other)),
        })
    }
}

/// How soon an inquiry needs a human. Ordered: `Critical` sorts first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Critical => "critical",
            Urgency::High => "high",
            Urgency::Normal => "normal",
            Urgency::Low => "low",
        }
    }
}

impl FromStr for Urgency {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "critical" => Urgency::Critical,
            "high" => Urgency::High,
            "normal" => Urgency::Normal,
            "low" => Urgency::Low,
            other => return Err(UnknownValue::new("urgency", other)),
        })
    }
}

/// Where an inquiry stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Received, not yet with an associate.
    Open,
    /// Offered to an associate who has not answered yet.
    Offered,
    /// Accepted by an associate.
    Assigned,
    /// Done; a later reply may reopen it.
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Offered => "offered",
            Status::Assigned => "assigned",
            Status::Resolved => "resolved",
        }
    }
}

impl FromStr for Status {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "open" => Status::Open,
            "offered" => Status::Offered,
            "assigned" => Status::Assigned,
            "resolved" => Status::Resolved,
            other => return Err(UnknownValue::new("status", other)),
        })
    }
}

/// A stored enum column or query parameter held a value we do not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

impl UnknownValue {
    fn new(what: &'static str, value: &str) -> Self {
        UnknownValue {
            what,
            value: value.to_owned(),
        }
    }
}

/// Who wrote to us, as far as the channel can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

impl Customer {
    /// One key per person across channels: the phone number (digits with
    /// a leading `+` kept) when known, else the lower-cased email address.
    /// Sticky routing and follow-up gathering use it.
    pub fn key(&self) -> Option<String> {
        if let Some(phone) = &self.phone {
            let digits: String = phone
                .trim()
                .trim_start_matches("whatsapp:")
                .chars()
                .enumerate()
                .filter(|(i, c)| c.is_ascii_digit() || (*i == 0 && *c == '+'))
                .map(|(_, c)| c)
                .collect();
            if digits.trim_start_matches('+').len() >= 5 {
                return Some(format!("tel:{digits}"));
            }
        }
        let email = self.email.as_deref()?.trim().to_lowercase();
        email.contains('@').then(|| format!("email:{email}"))
    }
}

/// Metadata of an attachment; contents live elsewhere (or at the provider).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    pub name: Option<String>,
    pub content_type: Option<String>,
    pub size: Option<u64>,
    /// Where the provider keeps it, when it does (e.g. Twilio `MediaUrl0`).
    pub url: Option<String>,
}

/// How a message may belong to an inquiry we already have.
///
/// Keys are opaque strings chosen by the adapter and scoped by it (the
/// generic channel prefixes its `thread` with the channel id; email uses
/// Message-IDs), so the store can match them without knowing any provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadHints {
    /// Keys this message refers to (generic `thread`, In-Reply-To, References).
    pub refers_to: Vec<String>,
    /// Keys later messages may use to find this message's inquiry.
    pub provides: Vec<String>,
    /// An inquiry reference the customer quoted, e.g. `[INQ-7K3F9Q]` in a subject.
    pub reference: Option<Reference>,
    /// For channels without threads (SMS, WhatsApp): a message from the
    /// same customer (`NewMessage::customer_key`) on the same channel joins
    /// their open inquiry if it was active within this window.
    pub follow_up_window: Option<std::time::Duration>,
}

/// One inbound message, normalized by its channel adapter.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel: ChannelId,
    pub medium: Medium,
    /// The provider's id for this message: the idempotency key within `channel`.
    pub provider_id: String,
    pub customer: Customer,
    /// One identity per customer across channels: `tel:+4930123456` for
    /// phone-based channels (SMS, WhatsApp, voice), `mailto:` for email,
    /// `<adapter>:<workspace>:<user>` for chat handles.
    pub customer_key: Option<String>,
    pub subject: Option<String>,
    pub text: String,
    /// BCP 47 tag when the channel declared one (`de`, `en-GB`).
    pub language: Option<String>,
    pub thread: ThreadHints,
    pub attachments: Vec<AttachmentMeta>,
    /// Free-form, provider-specific extra fields kept for ops and rules.
    pub metadata: serde_json::Value,
    /// What the adapter needs to answer on the same channel (addresses,
    /// provider thread ids). Opaque to everything but that adapter.
    pub reply_context: serde_json::Value,
    /// Set when the adapter knows this message must not be answered
    /// automatically (auto-replies, bounces, bots); the reason is recorded.
    pub no_ack_reason: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// What the commit did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeOutcome {
    pub inquiry: Reference,
    pub inquiry_id: i64,
    /// The provider sent this message before; nothing was written.
    pub duplicate: bool,
    /// The message opened a new inquiry (false: attached to an open one).
    pub opened: bool,
    /// The message reopened a resolved inquiry (within the reopen
    /// window): it is open again and needs routing, but no acknowledgement.
    pub reopened: bool,
    /// The language the rules chose for answering (their preferred
    /// language, else the message's), for adapters that answer in the
    /// HTTP response itself (Twilio's spoken greeting). Set by the pipeline.
    pub language: Option<String>,
}

/// The delivery state a provider reports for a message we sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderStatus {
    /// The provider's id of our outbound message (returned at delivery).
    pub provider_message_id: String,
    /// The provider's word for it: `sent`, `delivered`, `read`, `failed`, …
    pub status: String,
    pub detail: serde_json::Value,
}

/// A customer edited a message we already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEdit {
    pub provider_id: String,
    pub text: String,
}

/// A short, human-readable, unique inquiry reference such as `INQ-7K3F9Q`.
///
/// It is a keyed permutation of the inquiry's numeric id, so it is unique by
/// construction (no retry-on-collision) yet does not reveal the volume of
/// inquiries the way a counter would.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reference(pub String);

/// Crockford's base32: no I, L, O or U, so references survive being read
/// aloud and typed back.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl Reference {
    pub const PREFIX: &'static str = "INQ-";

    /// The reference of inquiry `id` (ids start at 1).
    pub fn from_id(id: i64) -> Reference {
        let id = id as u64;
        // Six characters cover 2^30 ids; beyond that references grow to 8.
        let (bits, chars) = if id < (1 << 30) { (30, 6) } else { (40, 8) };
        let scrambled = feistel(id, bits);
        let mut out = String::with_capacity(Self::PREFIX.len() + chars);
        out.push_str(Self::PREFIX);
        for i in (0..chars).rev() {
            out.push(CROCKFORD[((scrambled >> (5 * i)) & 31) as usize] as char);
        }
        Reference(out)
    }

    /// The inquiry id behind a reference (any case), if it is well formed.
    /// References are a bijection of ids, so the store needs no index on them.
    pub fn to_id(reference: &str) -> Option<i64> {
        let upper = reference.trim().to_ascii_uppercase();
        let code = upper.strip_prefix(Self::PREFIX)?;
        let bits = match code.len() {
            6 => 30,
            8 => 40,
            _ => return None,
        };
        let mut scrambled = 0u64;
        for b in code.bytes() {
            let digit = CROCKFORD.iter().position(|c| *c == b)? as u64;
            scrambled = scrambled << 5 | digit;
        }
        let id = feistel_inverse(scrambled, bits);
        // Eight characters are only used from 2^30 on; anything else is forged.
        let canonical = (bits == 30) == (id < (1 << 30));
        (canonical && id > 0).then_some(id as i64)
    }

    /// Finds a reference inside free text (a subject line, say); accepts
    /// lower case and the usual Crockford confusions are not guessed.
    pub fn find_in(text: &str) -> Option<Reference> {
        let upper = text.to_ascii_uppercase();
        let mut from = 0;
        while let Some(pos) = upper[from..].find(Self::PREFIX) {
            let start = from + pos;
            let tail = &upper[start + Self::PREFIX.len()..];
            let len = tail.bytes().take_while(|b| CROCKFORD.contains(b)).count();
            if len == 6 || len == 8 {
                let end_ok = tail[len..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_ascii_alphanumeric());
                if end_ok {
                    return Some(Reference(format!("{}{}", Self::PREFIX, &tail[..len])));
                }
            }
            from = start + Self::PREFIX.len();
        }
        None
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const FEISTEL_KEYS: [u64; 4] = [0x5bd1_e995, 0x9e37_79b9, 0x85eb_ca6b, 0xc2b2_ae35];

fn feistel_round(half: u64, key: u64, mask: u64) -> u64 {
    (half.wrapping_mul(key).wrapping_add(key >> 7) ^ (half >> 3)) & mask
}

/// A balanced Feistel permutation of `bits`-bit integers (bits even).
fn feistel(x: u64, bits: u32) -> u64 {
    let half = bits / 2;
    let mask = (1u64 << half) - 1;
    let (mut left, mut right) = (x >> half & mask, x & mask);
    for key in FEISTEL_KEYS {
        (left, right) = (right, left ^ feistel_round(right, key, mask));
    }
    (left << half) | right
}

/// The inverse of [`feistel`]: the rounds undone in reverse order.
fn feistel_inverse(y: u64, bits: u32) -> u64 {
    let half = bits / 2;
    let mask = (1u64 << half) - 1;
    let (mut left, mut right) = (y >> half & mask, y & mask);
    for key in FEISTEL_KEYS.into_iter().rev() {
        (left, right) = (right ^ feistel_round(left, key, mask), left);
    }
    (left << half) | right
}

/// An inquiry as stored: one customer matter, gathering one or more messages.
#[derive(Debug, Clone, Serialize)]
pub struct Inquiry {
    #[serde(skip)]
    pub id: i64,
    pub reference: Reference,
    pub status: Status,
    pub urgency: Urgency,
    pub channel: String,
    pub medium: Medium,
    pub customer: Customer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_key: Option<String>,
    pub subject: Option<String>,
    pub language: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Team queue the rules chose, if any.
    pub queue: Option<String>,
    /// The associate holding it (or who last held it, once resolved).
    pub assignee: Option<String>,
    /// What the rules require of an associate: skills, language, tags,
    /// relaxation steps and the rules that matched.
    pub requirements: Option<serde_json::Value>,
    pub sla_due_at: Option<DateTime<Utc>>,
    pub sla_breached: bool,
    pub first_response_at: Option<DateTime<Utc>>,
    /// The resolved inquiry this one continues: a reply to it came after
    /// the reopen window, so this new inquiry was opened and linked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_to: Option<Reference>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn references_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for id in 1..200_000 {
            let r = Reference::from_id(id);
            assert_eq!(r.0.len(), 10, "{r}");
            assert!(r.0.starts_with("INQ-"));
            assert!(seen.insert(r), "duplicate reference for id {id}");
        }
        assert_eq!(Reference::from_id((1 << 30) + 5).0.len(), 12);
    }

    #[test]
    fn references_decode_back_to_their_ids() {
        for id in (1..50_000).chain([(1 << 30) - 1, 1 << 30, (1 << 30) + 12_345]) {
            let r = Reference::from_id(id);
            assert_eq!(Reference::to_id(&r.0), Some(id), "{r}");
            assert_eq!(Reference::to_id(&r.0.to_lowercase()), Some(id));
        }
        for bad in [
            "",
            "INQ-",
            "INQ-ABC",
            "XYZ-7K3F9Q",
            "INQ-7K3F9U",
            "INQ-0000000000",
        ] {
            assert_eq!(Reference::to_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn consecutive_ids_do_not_look_consecutive() {
        let a = Reference::from_id(1000);
        let b = Reference::from_id(1001);
        let differing = a.0.bytes().zip(b.0.bytes()).filter(|(x, y)| x != y).count();
        assert!(differing >= 3, "{a} vs {b}");
    }

    #[test]
    fn finds_reference_in_subject() {
        let r = Reference::from_id(42);
        let subject = format!("Re: Re: your card [{}] blocked", r.0.to_lowercase());
        assert_eq!(Reference::find_in(&subject), Some(r));
        assert_eq!(Reference::find_in("INQ-ABC"), None);
        assert_eq!(Reference::find_in("INQ-7K3F9QX1Z"), None);
        assert_eq!(Reference::find_in("nothing here"), None);
    }

    #[test]
    fn customer_keys_unify_formats() {
        let phone = |p: &str| Customer {
            phone: Some(p.into()),
            ..Customer::default()
        };
        assert_eq!(phone("+49 170 1234567").key().unwrap(), "tel:+491701234567");
        assert_eq!(
            phone("whatsapp:+491701234567").key().unwrap(),
            "tel:+491701234567"
        );
        assert_eq!(phone("12").key(), None);
        let mail = Customer {
            email: Some(" Ada@Example.ORG ".into()),
            ..Customer::default()
        };
        assert_eq!(mail.key().unwrap(), "email:ada@example.org");
        assert_eq!(Customer::default().key(), None);
    }

    #[test]
    fn urgency_orders_critical_first() {
        assert!(Urgency::Critical < Urgency::High);
        assert!(Urgency::Normal < Urgency::Low);
        assert_eq!("high".parse::<Urgency>().unwrap(), Urgency::High);
        assert!("urgent".parse::<Urgency>().is_err());
    }
}
