//! MIME normalization: raw RFC 5322 bytes → [`NewMessage`].
//!
//! mail-parser decodes every charset it knows (with `full_encoding`, also
//! Shift_JIS and ISO-2022-JP) to UTF-8 and replaces undecodable bytes, and
//! is lenient with broken structure; what it cannot make a message of at
//! all is reported as an error so the mailbox can quarantine it.

use chrono::{DateTime, Utc};
use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};

use super::loops;
use crate::inquiry::{
    AttachmentMeta, ChannelId, Customer, Medium, NewMessage, Reference, ThreadHints,
};

/// Longest Message-ID used as the idempotency key as is; longer ones are hashed.
const MAX_ID_LEN: usize = 400;

/// What normalization needs to know about the mailbox.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub channel: &'a ChannelId,
    pub mailbox: &'a str,
    /// Our addresses, lower case (the mailbox's and the SMTP sender's).
    pub own_addresses: &'a [String],
    /// Whether `name+INQ-…@domain` recipients thread.
    pub plus_tokens: bool,
    pub received_at: DateTime<Utc>,
}

/// A message that could not be made sense of at all.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unparseable(pub String);

/// The thread key of a Message-ID (angle brackets and case of the domain
/// do not matter).
pub fn thread_key(message_id: &str) -> String {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    match id.rsplit_once('@') {
        Some((local, domain)) => format!("email:{local}@{}", domain.to_ascii_lowercase()),
        None => format!("email:{id}"),
    }
}

/// The idempotency key of a mail: its Message-ID, or a hash of the bytes
/// when it has none (or an absurd one).
pub fn provider_id(message_id: Option<&str>, raw: &[u8]) -> String {
    match message_id.map(str::trim).filter(|m| !m.is_empty()) {
        Some(id) if id.len() <= MAX_ID_LEN => format!("<{id}>"),
        Some(id) => format!("sha256-id:{}", hex::encode(Sha256::digest(id.as_bytes()))),
        None => format!("sha256:{}", hex::encode(Sha256::digest(raw))),
    }
}

/// Parses `raw` into a message for the pipeline.
pub fn normalize(raw: &[u8], ctx: &Context<'_>) -> Result<NewMessage, Unparseable> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| Unparseable("not a mail message (no headers could be parsed)".into()))?;
    let valid_field =
        |name: &str| !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !message.headers().iter().any(|h| valid_field(h.name())) {
        return Err(Unparseable(
            "not a mail message (no valid header field)".into(),
        ));
    }
    let from = first_addr(message.reply_to()).or_else(|| first_addr(message.from()));
    let from = from.or_else(|| first_addr(message.sender()));
    let sender_addr = from.as_ref().map(|(_, a)| a.clone());
    let no_ack_reason = loops::no_ack_reason(&message, sender_addr.as_deref(), ctx.own_addresses);
    let customer = Customer {
        name: from.as_ref().and_then(|(n, _)| n.clone()),
        email: sender_addr.clone(),
        phone: None,
        handle: None,
    };
    let subject = message.subject().map(clean_header_text);
    let full_text = body_text(&message);
    let trimmed = trim_quoted(&full_text);
    let message_id = message.message_id().map(str::to_owned);
    let referenced = referenced_ids(&message);

    let mut thread = ThreadHints::default();
    if let Some(id) = &message_id {
        thread.provides.push(thread_key(id));
    }
    thread.refers_to = referenced.iter().map(|id| thread_key(id)).collect();
    // Our acknowledgements' Message-IDs start with the reference.
    thread.reference = referenced
        .iter()
        .rev()
        .find(|id| id.to_ascii_uppercase().starts_with(Reference::PREFIX))
        .and_then(|id| Reference::find_in(id))
        .or_else(|| subject.as_deref().and_then(Reference::find_in))
        .or_else(|| {
            ctx.plus_tokens
                .then(|| plus_token(&message, ctx.own_addresses))
                .flatten()
        });

    let attachments: Vec<AttachmentMeta> = message
        .attachments()
        .map(|part| AttachmentMeta {
            name: part.attachment_name().map(str::to_owned),
            content_type: part.content_type().map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            }),
            size: Some(part.len() as u64),
            url: None,
        })
        .collect();
    let language = header_first_text(&message, "Content-Language")
        .map(|l| l.split(',').next().unwrap_or_default().trim().to_owned())
        .filter(|l| is_language_tag(l))
        .or_else(|| guess_language(&trimmed).map(str::to_owned));

    let mut metadata = serde_json::json!({
        "mailbox": ctx.mailbox,
        "message_id": message_id,
        "size": raw.len(),
    });
    if let Some(to) = message
        .to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
    {
        metadata["to"] = serde_json::Value::from(to);
    }
    if trimmed.len() != full_text.len() {
        metadata["full_text"] = serde_json::Value::from(full_text.clone());
    }
    if let Some(reason) = &no_ack_reason {
        metadata["automatic"] = serde_json::Value::from(reason.clone());
    }
    let mut references: Vec<String> = referenced.iter().map(|id| format!("<{id}>")).collect();
    if let Some(id) = &message_id {
        references.push(format!("<{id}>"));
    }
    let reply_context = serde_json::json!({
        "to": sender_addr,
        "to_name": customer.name,
        "message_id": message_id.as_ref().map(|id| format!("<{id}>")),
        "references": references,
        "subject": subject,
    });
    Ok(NewMessage {
        channel: ctx.channel.clone(),
        medium: Medium::Email,
        provider_id: provider_id(message_id.as_deref(), raw),
        customer_key: sender_addr.as_ref().map(|a| format!("mailto:{a}")),
        customer,
        subject,
        text: trimmed,
        language,
        thread,
        attachments,
        metadata,
        reply_context,
        no_ack_reason,
        received_at: ctx.received_at,
    })
}

/// A message whose body was too large to download: an inquiry with a note,
/// from its headers alone.
pub fn normalize_oversize(
    headers: &[u8],
    size: u64,
    limit: u64,
    ctx: &Context<'_>,
) -> Result<NewMessage, Unparseable> {
    let mut m = normalize(headers, ctx)?;
    m.text = format!(
        "[This message is {size} bytes, over the limit of {limit} bytes; it was not downloaded. \
         It is still in the mailbox.]"
    );
    m.metadata["oversize"] = serde_json::Value::from(size);
    m.attachments.clear();
    Ok(m)
}

fn first_addr(list: Option<&mail_parser::Address<'_>>) -> Option<(Option<String>, String)> {
    let addr = list?.iter().find(|a| a.address().is_some())?;
    let email = addr.address()?.trim().to_ascii_lowercase();
    if email.is_empty() {
        return None;
    }
    let name = addr.name().map(clean_header_text).filter(|n| !n.is_empty());
    Some((name, email))
}

/// Header text without control characters, trimmed.
fn clean_header_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

fn header_first_text(message: &Message<'_>, name: &str) -> Option<String> {
    match message.header(name)? {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(l) => l.first().map(|t| t.to_string()),
        _ => None,
    }
}

fn is_language_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 35
        && s.split('-')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A guess of the language of `text` from common short words, only when
/// it is clear (at least three hits and twice the runner-up); `None` rather
/// than a wrong guess.
pub fn guess_language(text: &str) -> Option<&'static str> {
    const WORDS: &[(&str, &[&str])] = &[
        (
            "en",
            &[
                "the", "and", "is", "my", "you", "not", "have", "with", "this", "for", "was",
                "please", "thanks", "hello",
            ],
        ),
        (
            "de",
            &[
                "der", "die", "und", "ist", "nicht", "ich", "mein", "meine", "bitte", "danke",
                "mit", "das", "habe", "hallo",
            ],
        ),
        (
            "fr",
            &[
                "le", "la", "et", "est", "je", "pas", "mon", "ma", "les", "merci", "avec", "pour",
                "bonjour", "une",
            ],
        ),
        (
            "es",
            &[
                "el", "los", "y", "es", "mi", "no", "por", "gracias", "hola", "con", "una", "para",
                "que", "está",
            ],
        ),
        (
            "it",
            &[
                "il",
                "di",
                "che",
                "è",
                "non",
                "mio",
                "mia",
                "grazie",
                "ciao",
                "con",
                "per",
                "sono",
                "una",
                "buongiorno",
            ],
        ),
        (
            "nl",
            &[
                "de",
                "het",
                "en",
                "is",
                "niet",
                "mijn",
                "ik",
                "met",
                "een",
                "bedankt",
                "alstublieft",
                "hallo",
                "voor",
                "van",
            ],
        ),
    ];
    let mut scores = [0usize; 6];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(400)
    {
        let w = word.to_lowercase();
        for (i, (_, list)) in WORDS.iter().enumerate() {
            if list.contains(&w.as_str()) {
                scores[i] += 1;
            }
        }
    }
    let mut order: Vec<usize> = (0..WORDS.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(scores[*i]));
    let (best, second) = (scores[order[0]], scores[order[1]]);
    (best >= 3 && best >= 2 * second.max(1)).then(|| WORDS[order[0]].0)
}

/// In-Reply-To then References, without brackets, in order, deduplicated.
fn referenced_ids(message: &Message<'_>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for value in [message.references(), message.in_reply_to()] {
        let list: Vec<String> = match value {
            HeaderValue::Text(t) => vec![t.to_string()],
            HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
            _ => Vec::new(),
        };
        for id in list {
            let id = id
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned();
            if !id.is_empty() && id.len() <= MAX_ID_LEN && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids.truncate(50);
    ids
}

/// `support+INQ-7K3F9Q@example.com` among the recipients, when the part
/// before `+` is one of our addresses' local parts.
fn plus_token(message: &Message<'_>, own: &[String]) -> Option<Reference> {
    let mut recipients: Vec<String> = Vec::new();
    for list in [message.to(), message.cc()].into_iter().flatten() {
        recipients.extend(list.iter().filter_map(|a| a.address()).map(str::to_owned));
    }
    if let Some(d) = message.header_raw("Delivered-To") {
        recipients.push(d.trim().to_owned());
    }
    recipients.iter().find_map(|r| {
        let r = r.to_ascii_lowercase();
        let (local, domain) = r.split_once('@')?;
        let (base, token) = local.split_once('+')?;
        let ours = own.iter().any(|o| *o == format!("{base}@{domain}"));
        if ours {
            Reference::find_in(token)
        } else {
            None
        }
    })
}

/// The text of the message: text/plain, else text from the HTML (mail-parser
/// strips the tags), else nothing.
fn body_text(message: &Message<'_>) -> String {
    let mut text = String::new();
    for i in 0..message.text_body_count().max(1) {
        match message.body_text(i) {
            Some(t) => {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&t);
            }
            None => break,
        }
    }
    text.replace("\r\n", "\n").trim().to_owned()
}

/// The new part of a reply: quoted history (`> …`, "On … wrote:",
/// Outlook's "-----Original Message-----" or "From: … Sent: …" block) and a
/// `-- ` signature cut off. If that would leave nothing, the full text.
pub fn trim_quoted(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_end();
        let lower = t.trim_start().to_ascii_lowercase();
        let attribution = (lower.starts_with("on ") && lower.ends_with("wrote:"))
            || (lower.starts_with("am ") && lower.ends_with("schrieb:"))
            || (lower.starts_with("le ") && lower.ends_with("a écrit :"))
            || lower.starts_with("-----original message-----")
            || lower.starts_with("-----ursprüngliche nachricht-----")
            || (lower.starts_with("from: ")
                && lines
                    .get(i + 1)
                    .is_some_and(|n| n.to_ascii_lowercase().starts_with("sent: ")));
        let signature = t == "--" && line.ends_with(' ') || t == "-- ";
        let quote_block = t.starts_with('>')
            && lines[i..]
                .iter()
                .all(|l| l.trim().is_empty() || l.starts_with('>'));
        if attribution || signature || quote_block {
            end = i;
            break;
        }
    }
    let kept = lines[..end].join("\n").trim().to_owned();
    if kept.is_empty() {
        text.trim().to_owned()
    } else {
        kept
    }
}

/// The subject of our answer: `Re: <subject without reply prefixes or
/// reference tokens> [INQ-…]`, so tokens never pile up.
pub fn ack_subject(original: Option<&str>, reference: &str) -> String {
    let mut s = original.unwrap_or_default().trim().to_owned();
    // Drop any bracketed reference token, wherever it is.
    while let Some(r) = Reference::find_in(&s) {
        let upper = s.to_ascii_uppercase();
        let Some(pos) = upper.find(&r.0) else { break };
        let mut start = pos;
        let mut end = pos + r.0.len();
        if s[..start].ends_with('[') && s[end..].starts_with(']') {
            start -= 1;
            end += 1;
        }
        s.replace_range(start..end, "");
        s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    // Strip repeated reply prefixes.
    loop {
        let lower = s.to_ascii_lowercase();
        let cut = ["re:", "aw:", "sv:", "antw:", "re :", "wg:", "fwd:", "fw:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| p.len());
        match cut {
            Some(n) => s = s[n..].trim_start().to_owned(),
            None => break,
        }
    }
    if s.is_empty() {
        format!("[{reference}]")
    } else {
        format!("Re: {s} [{reference}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inquiry::Adapter;

    fn ctx_parse(raw: &[u8]) -> Result<NewMessage, Unparseable> {
        let channel = ChannelId::new(Adapter::Imap, "support");
        let own = vec!["support@example.com".to_owned()];
        normalize(
            raw,
            &Context {
                channel: &channel,
                mailbox: "INBOX",
                own_addresses: &own,
                plus_tokens: true,
                received_at: Utc::now(),
            },
        )
    }

    #[test]
    fn plain_message() {
        let m = ctx_parse(
            b"From: Ada Lovelace <Ada@Example.org>\r\nTo: support@example.com\r\nSubject: Card blocked\r\n\
              Message-ID: <abc@Example.org>\r\nContent-Language: de\r\n\r\nMy card is blocked.\r\n",
        )
        .unwrap();
        assert_eq!(m.customer.email.as_deref(), Some("ada@example.org"));
        assert_eq!(m.customer.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(m.subject.as_deref(), Some("Card blocked"));
        assert_eq!(m.text, "My card is blocked.");
        assert_eq!(m.provider_id, "<abc@Example.org>");
        assert_eq!(m.language.as_deref(), Some("de"));
        assert_eq!(m.thread.provides, vec!["email:abc@example.org".to_owned()]);
        assert!(m.no_ack_reason.is_none());
        assert_eq!(m.customer_key.as_deref(), Some("mailto:ada@example.org"));
    }

    #[test]
    fn reply_to_wins_and_missing_message_id_hashes() {
        let raw = b"From: a@x.org\r\nReply-To: Desk <desk@x.org>\r\nSubject: s\r\n\r\nbody";
        let m = ctx_parse(raw).unwrap();
        assert_eq!(m.customer.email.as_deref(), Some("desk@x.org"));
        assert!(m.provider_id.starts_with("sha256:"));
        assert_eq!(m.provider_id, ctx_parse(raw).unwrap().provider_id);
    }

    #[test]
    fn encodings_decode_to_utf8() {
        let qp = b"From: =?ISO-8859-1?Q?J=F6rg?= <j@x.org>\r\nSubject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\
                   Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nK=E4se\r\n";
        let m = ctx_parse(qp).unwrap();
        assert_eq!(m.customer.name.as_deref(), Some("Jörg"));
        assert_eq!(m.subject.as_deref(), Some("Grüße"));
        assert_eq!(m.text, "Käse");
        let sjis = [
            b"From: t@x.jp\r\nContent-Type: text/plain; charset=Shift_JIS\r\n\r\n".as_slice(),
            &[0x82, 0xb1, 0x82, 0xf1, 0x82, 0xc9, 0x82, 0xbf, 0x82, 0xcd],
        ]
        .concat();
        assert_eq!(ctx_parse(&sjis).unwrap().text, "こんにちは");
        let jis = [
            b"From: t@x.jp\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n\r\n".as_slice(),
            b"\x1b$B$3$s$K$A$O\x1b(B",
        ]
        .concat();
        assert_eq!(ctx_parse(&jis).unwrap().text, "こんにちは");
        let bad =
            b"From: t@x.org\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nok \xff\xfe end";
        let m = ctx_parse(bad).unwrap();
        assert!(m.text.starts_with("ok ") && m.text.ends_with(" end"));
    }

    #[test]
    fn html_only_becomes_text() {
        let m = ctx_parse(
            b"From: a@x.org\r\nContent-Type: text/html\r\n\r\n<html><body><p>Hello <b>there</b></p></body></html>",
        )
        .unwrap();
        assert!(m.text.contains("Hello") && m.text.contains("there") && !m.text.contains('<'));
    }

    #[test]
    fn threading_hints() {
        let r = Reference::from_id(77);
        let raw = format!(
            "From: a@x.org\r\nSubject: Re: help [{r}]\r\nIn-Reply-To: <first@x.org>\r\nReferences: <zero@x.org> <first@x.org>\r\n\r\nmore"
        );
        let m = ctx_parse(raw.as_bytes()).unwrap();
        assert_eq!(m.thread.reference, Some(r.clone()));
        assert!(m.thread.refers_to.contains(&"email:first@x.org".to_owned()));
        assert!(m.thread.refers_to.contains(&"email:zero@x.org".to_owned()));
        let raw = format!("From: a@x.org\r\nTo: Support+{r}@Example.com\r\nSubject: x\r\n\r\nmore");
        assert_eq!(
            ctx_parse(raw.as_bytes()).unwrap().thread.reference,
            Some(r.clone())
        );
        let raw = format!("From: a@x.org\r\nIn-Reply-To: <{r}.ack-5@example.com>\r\n\r\nmore");
        assert_eq!(ctx_parse(raw.as_bytes()).unwrap().thread.reference, Some(r));
    }

    #[test]
    fn attachments_are_metadata() {
        let raw = b"From: a@x.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
                    --b\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
                    Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";
        let m = ctx_parse(raw).unwrap();
        assert_eq!(m.text, "see attached");
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].name.as_deref(), Some("invoice.pdf"));
        assert_eq!(
            m.attachments[0].content_type.as_deref(),
            Some("application/pdf")
        );
        assert_eq!(m.attachments[0].size, Some(9));
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [
            b"".as_slice(),
            b"\x00\x01\x02",
            b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--",
            b"From: <>\r\n\r\n",
            b"Subject: =?utf-8?q?=ZZ?=\r\n\r\n",
        ] {
            let _ = ctx_parse(raw);
        }
        assert!(ctx_parse(b"\x01\x02\x03 this is not a mail message at all").is_err());
        assert!(ctx_parse(b"").is_err());
    }

    #[test]
    fn language_is_guessed_only_when_clear() {
        assert_eq!(
            guess_language(
                "Hallo, meine Karte ist nicht mehr gültig. Bitte helfen Sie mir, danke!"
            ),
            Some("de")
        );
        assert_eq!(
            guess_language("Hello, my card is blocked and I have no idea why. Please help."),
            Some("en")
        );
        assert_eq!(
            guess_language("Bonjour, je ne peux pas payer avec ma carte. Merci pour votre aide."),
            Some("fr")
        );
        assert_eq!(guess_language("ok"), None);
        assert_eq!(guess_language("12345 67890"), None);
    }

    #[test]
    fn quoted_history_is_trimmed() {
        let t = "Thanks, it works now.\n\nOn Mon, 1 Jan 2024, Support wrote:\n> Try again\n";
        assert_eq!(trim_quoted(t), "Thanks, it works now.");
        assert_eq!(trim_quoted("Hi\n-- \nAda\nCEO"), "Hi");
        assert_eq!(trim_quoted("> only a quote"), "> only a quote");
    }

    #[test]
    fn ack_subject_does_not_pile_up_tokens() {
        let s = ack_subject(Some("Card blocked"), "INQ-7K3F9Q");
        assert_eq!(s, "Re: Card blocked [INQ-7K3F9Q]");
        let again = ack_subject(Some(&format!("RE: Re: {s}")), "INQ-7K3F9Q");
        assert_eq!(again, "Re: Card blocked [INQ-7K3F9Q]");
        assert_eq!(ack_subject(None, "INQ-7K3F9Q"), "[INQ-7K3F9Q]");
    }
}
