//! The email channel against real servers: Postfix takes mail over SMTP
//! and delivers it into Dovecot over LMTP; the `switchboard` binary
//! watches the mailbox over IMAP (TLS with the test CA) and sends its
//! acknowledgements through Postfix into the customer's mailbox.

mod common;
#[path = "common/mail.rs"]
mod mail;

use std::time::Duration;

use common::{Daemon, Setup, api_get, event_kinds, eventually, http};
use mail::{CUSTOMER, MailServers, SUPPORT, header};

const WAIT: Duration = Duration::from_secs(30);

/// A daemon config watching `support@example.test`'s INBOX over IMAPS and
/// acknowledging through Postfix. `imap_extra` adds keys to the channel.
fn email_setup(servers: &MailServers, imap_extra: &str) -> Setup {
    email_config(Setup::new(None), servers, imap_extra)
}

/// Writes the email config of [`email_setup`] into `setup`.
fn email_config(setup: Setup, servers: &MailServers, imap_extra: &str) -> Setup {
    let extra = format!(
        r#"
[smtp]
host = "127.0.0.1"
port = {smtp}
tls = "none"
from = "Example Support <{SUPPORT}>"
pool_size = 4
max_acks_per_sender_per_hour = 50

[channels.imap.support]
host = "localhost"
port = {imaps}
tls = "implicit"
ca_file = "{ca}"
username = "{SUPPORT}"
password = "{pw}"
address = "{SUPPORT}"
poll_interval = "200ms"
idle_timeout = "5s"
timeout = "30s"
max_backoff = "2s"
{imap_extra}
"#,
        smtp = servers.smtp_port,
        imaps = servers.imaps_port,
        ca = servers.ca_file().display(),
        pw = mail::PASSWORD,
    );
    setup.write_config(&setup.config_text(None, &extra));
    // An HTML variant in English only: English acknowledgements are
    // multipart/alternative, German ones (no `ack.de.html`) plain text.
    std::fs::write(
        setup.dir.path().join("templates/ack.en.html"),
        "<p>Hello <b>{{ customer_name or 'there' }}</b>, your reference is \
         <strong>{{ reference }}</strong> ({{ subject }}).</p>",
    )
    .unwrap();
    setup
}

/// The MIME leaf parts of a mail: (`type/subtype`, charset, decoded text).
fn mime_parts(raw: &[u8]) -> (String, Vec<(String, Option<String>, String)>) {
    use mail_parser::MimeHeaders;
    let message = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("the acknowledgement parses");
    let top = message
        .content_type()
        .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let leaves = message
        .parts
        .iter()
        .filter(|p| p.sub_parts().is_none())
        .map(|p| {
            let ct = p.content_type();
            (
                ct.map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()))
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                ct.and_then(|ct| ct.attribute("charset"))
                    .map(str::to_ascii_lowercase),
                p.text_contents().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    (top, leaves)
}

fn mail_from_customer(
    message_id: Option<&str>,
    subject: &str,
    extra_headers: &str,
    body: &str,
) -> Vec<u8> {
    let mid = message_id
        .map(|m| format!("Message-ID: <{m}>\r\n"))
        .unwrap_or_default();
    format!(
        "From: Ada Lovelace <{CUSTOMER}>\r\nTo: Support <{SUPPORT}>\r\nSubject: {subject}\r\n{mid}\
         Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n{extra_headers}\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// The inquiries of the email channel, newest first.
async fn email_inquiries(client: &reqwest::Client, daemon: &Daemon) -> Vec<serde_json::Value> {
    let (status, body) = api_get(
        client,
        daemon,
        "/api/v1/inquiries?channel=imap/support&limit=500",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["inquiries"].as_array().cloned().unwrap_or_default()
}

async fn wait_inquiries(
    client: &reqwest::Client,
    daemon: &Daemon,
    n: usize,
) -> Vec<serde_json::Value> {
    eventually(WAIT, &format!("{n} email inquiries"), || async {
        let list = email_inquiries(client, daemon).await;
        (list.len() >= n).then_some(list)
    })
    .await
}

async fn detail(client: &reqwest::Client, daemon: &Daemon, reference: &str) -> serde_json::Value {
    let (status, body) = api_get(client, daemon, &format!("/api/v1/inquiries/{reference}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Acknowledgements in the customer's INBOX.
async fn acks(servers: &MailServers) -> Vec<Vec<u8>> {
    servers
        .fetch_all(CUSTOMER, "INBOX")
        .await
        .into_iter()
        .map(|(_, raw, _)| raw)
        .collect()
}

async fn wait_acks(servers: &MailServers, n: usize) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = acks(servers).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} acknowledgements in the customer's mailbox, got {}\n{}",
            got.len(),
            servers.maillog()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn mail_becomes_an_inquiry_and_the_ack_arrives_threaded_with_loop_headers() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "");
    let daemon = setup.start();
    let client = http();

    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("first@customer.test"),
            "Card blocked",
            "",
            "My card was blocked today.",
        ),
    );
    let list = wait_inquiries(&client, &daemon, 1).await;
    let reference = list[0]["reference"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["medium"], "email");
    assert_eq!(list[0]["customer"]["email"], CUSTOMER);
    assert_eq!(list[0]["customer"]["name"], "Ada Lovelace");
    assert_eq!(list[0]["subject"], "Card blocked");

    let ack = wait_acks(&servers, 1).await.remove(0);
    assert_eq!(
        header(&ack, "Auto-Submitted").as_deref(),
        Some("auto-replied")
    );
    assert_eq!(header(&ack, "X-Switchboard-Loop").as_deref(), Some(SUPPORT));
    assert_eq!(
        header(&ack, "In-Reply-To").as_deref(),
        Some("<first@customer.test>")
    );
    assert!(
        header(&ack, "References")
            .unwrap()
            .contains("<first@customer.test>")
    );
    let subject = header(&ack, "Subject").unwrap();
    assert_eq!(subject, format!("Re: Card blocked [{reference}]"));
    assert!(header(&ack, "From").unwrap().contains(SUPPORT));
    let text = String::from_utf8_lossy(&ack);
    assert!(text.contains(&reference), "{text}");
    // `ack.en.html` exists: text/plain and text/html alternatives, in that
    // order, both UTF-8, both from their templates.
    let (top, parts) = mime_parts(&ack);
    assert_eq!(top, "multipart/alternative", "{text}");
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].0, "text/plain");
    assert_eq!(parts[0].1.as_deref(), Some("utf-8"));
    assert_eq!(
        parts[0].2.trim(),
        format!("Hello Ada Lovelace, your reference is {reference}.")
    );
    assert_eq!(parts[1].0, "text/html");
    assert_eq!(parts[1].1.as_deref(), Some("utf-8"));
    assert_eq!(
        parts[1].2.trim(),
        format!(
            "<p>Hello <b>Ada Lovelace</b>, your reference is <strong>{reference}</strong> (Card blocked).</p>"
        )
    );

    // Flagged \Seen only after the commit; the mail stays in the INBOX.
    let inbox = servers.fetch_all(SUPPORT, "INBOX").await;
    assert_eq!(inbox.len(), 1);
    assert!(
        inbox[0].2.iter().any(|f| f.contains("Seen")),
        "{:?}",
        inbox[0].2
    );

    let d = detail(&client, &daemon, &reference).await;
    let kinds = event_kinds(&d);
    assert!(kinds.contains(&"acknowledged".to_owned()), "{kinds:?}");

    // Health: the mailbox is connected and has taken one message.
    let (_, channels) = api_get(&client, &daemon, "/api/v1/channels").await;
    let imap = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "imap/support")
        .unwrap()
        .clone();
    assert_eq!(imap["can_reply"], true);
    let mb = &imap["mailboxes"][0];
    assert_eq!(mb["mailbox"], "INBOX");
    assert_eq!(mb["connected"], true);
    assert_eq!(mb["messages_taken"], 1);
    let metrics = common::metrics_text(&client, &daemon).await;
    assert!(
        metrics.contains(
            "switchboard_email_messages_taken_total{channel=\"imap/support\",mailbox=\"INBOX\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn html_ack_escapes_what_the_customer_wrote_and_without_an_html_variant_is_plain_text() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "");
    let _daemon = setup.start();

    // English, with markup in the display name and the subject.
    let evil = format!(
        "From: \"Ada <script>alert(1)</script>\" <{CUSTOMER}>\r\nTo: Support <{SUPPORT}>\r\n\
         Subject: Fees & <b>charges</b>\r\nMessage-ID: <evil@customer.test>\r\n\
         Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Language: en\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nWhy was I charged twice for my account?\r\n"
    );
    servers.send(CUSTOMER, &[SUPPORT], evil.as_bytes());
    // German: `ack.de.txt` but no `ack.de.html`.
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("german@customer.test"),
            "Karte gesperrt",
            "Content-Language: de\r\n",
            "Meine Karte wurde heute gesperrt. Bitte helfen Sie mir, ich kann nicht bezahlen.",
        ),
    );
    let acks = wait_acks(&servers, 2).await;
    let find = |message_id: &str| {
        acks.iter()
            .find(|a| header(a, "In-Reply-To").as_deref() == Some(message_id))
            .unwrap_or_else(|| panic!("no acknowledgement answering {message_id}"))
    };

    let (top, parts) = mime_parts(find("<evil@customer.test>"));
    assert_eq!(top, "multipart/alternative");
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (plain, html) = (&parts[0], &parts[1]);
    assert_eq!(plain.0, "text/plain");
    assert_eq!(html.0, "text/html");
    assert_eq!(html.1.as_deref(), Some("utf-8"));
    // Text stays text; HTML gets every customer-provided value escaped.
    assert!(
        plain.2.contains("Hello Ada <script>alert(1)</script>,"),
        "{}",
        plain.2
    );
    assert!(!html.2.contains("<script>"), "{}", html.2);
    assert!(!html.2.contains("<b>charges"), "{}", html.2);
    assert!(
        html.2
            .contains("<b>Ada &lt;script&gt;alert(1)&lt;&#x2f;script&gt;</b>"),
        "{}",
        html.2
    );
    assert!(
        html.2
            .contains("(Fees &amp; &lt;b&gt;charges&lt;&#x2f;b&gt;)"),
        "{}",
        html.2
    );

    let german = find("<german@customer.test>");
    let (top, parts) = mime_parts(german);
    assert_eq!(top, "text/plain", "{}", String::from_utf8_lossy(german));
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0].1.as_deref(), Some("utf-8"));
    assert!(
        parts[0]
            .2
            .starts_with("Hallo Ada Lovelace, Ihre Referenz ist INQ-"),
        "{}",
        parts[0].2
    );
}

#[tokio::test]
async fn auto_replies_bounces_and_list_mail_are_taken_but_never_acknowledged() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "");
    let daemon = setup.start();
    let client = http();

    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("ooo@customer.test"),
            "Out of office",
            "Auto-Submitted: auto-replied\r\n",
            "I am away.",
        ),
    );
    let dsn = format!(
        "From: Mail Delivery System <MAILER-DAEMON@customer.test>\r\nTo: {SUPPORT}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <bounce1@customer.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is the mail system. Your message could not be delivered.\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; customer.test\r\n\r\nFinal-Recipient: rfc822; x@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         --b1--\r\n"
    );
    servers.send("", &[SUPPORT], dsn.as_bytes());
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("list1@customer.test"),
            "[dev] weekly digest",
            "List-Id: <dev.lists.customer.test>\r\nPrecedence: list\r\n",
            "Digest.",
        ),
    );
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("human@customer.test"),
            "A real question",
            "",
            "Where is my parcel?",
        ),
    );
    let list = wait_inquiries(&client, &daemon, 4).await;
    assert_eq!(list.len(), 4);
    let mut skipped = 0;
    for inq in &list {
        let d = detail(&client, &daemon, inq["reference"].as_str().unwrap()).await;
        let kinds = event_kinds(&d);
        if inq["subject"] == "A real question" {
            assert!(kinds.contains(&"ack_queued".to_owned()), "{kinds:?}");
        } else {
            assert!(
                kinds.contains(&"ack_skipped".to_owned()),
                "{} {kinds:?}",
                inq["subject"]
            );
            skipped += 1;
        }
    }
    assert_eq!(skipped, 3);
    let got = wait_acks(&servers, 1).await;
    // Give a wrong extra acknowledgement the time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_later = acks(&servers).await;
    assert_eq!(got_later.len(), 1, "exactly one acknowledgement");
    assert!(
        header(&got[0], "Subject")
            .unwrap()
            .contains("A real question")
    );
}

#[tokio::test]
async fn replies_thread_by_header_by_subject_token_and_by_answering_the_ack() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "");
    let daemon = setup.start();
    let client = http();

    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("t1@customer.test"),
            "Login fails",
            "",
            "I cannot log in.",
        ),
    );
    let list = wait_inquiries(&client, &daemon, 1).await;
    let reference = list[0]["reference"].as_str().unwrap().to_owned();
    let ack = wait_acks(&servers, 1).await.remove(0);
    let ack_id = header(&ack, "Message-ID").unwrap();

    // (1) a follow-up referring to the first mail by header
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("t2@customer.test"),
            "Also: password reset",
            "In-Reply-To: <t1@customer.test>\r\nReferences: <t1@customer.test>\r\n",
            "The reset mail never came.",
        ),
    );
    // (2) a new mail quoting the reference in the subject
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("t3@customer.test"),
            &format!("Re: [{reference}] still broken"),
            "",
            "Still broken.",
        ),
    );
    // (3) an answer to our acknowledgement
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("t4@customer.test"),
            &format!("Re: Login fails [{reference}]"),
            &format!("In-Reply-To: {ack_id}\r\nReferences: <t1@customer.test> {ack_id}\r\n"),
            "Thanks!\r\n\r\nOn Fri, Support wrote:\r\n> We have your message.",
        ),
    );
    let d = eventually(WAIT, "4 messages on the inquiry", || async {
        let d = detail(&client, &daemon, &reference).await;
        (d["messages"].as_array().map(Vec::len) == Some(4)).then_some(d)
    })
    .await;
    assert_eq!(
        email_inquiries(&client, &daemon).await.len(),
        1,
        "no new inquiry opened"
    );
    // The quoted history is trimmed from the text used for rules, kept in metadata.
    // The MTA may deliver the three follow-ups in any order, so find the answer.
    let last = d["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["metadata"]["full_text"]
                .as_str()
                .is_some_and(|t| t.contains("Thanks!"))
        })
        .expect("the answer to the acknowledgement is on the inquiry");
    assert_eq!(last["text"], "Thanks!");
    assert!(
        last["metadata"]["full_text"]
            .as_str()
            .unwrap()
            .contains("We have your message")
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        acks(&servers).await.len(),
        1,
        "replies are not acknowledged again"
    );
}

#[tokio::test]
async fn charsets_html_broken_mime_and_missing_message_id_normalize() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "");
    let daemon = setup.start();
    let client = http();
    let head = |subject: &str, id: &str| {
        format!(
            "From: {CUSTOMER}\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\nMessage-ID: <{id}@customer.test>\r\nMIME-Version: 1.0\r\n"
        )
    };
    let mut mails: Vec<(String, Vec<u8>, &str)> = Vec::new();
    let mut add = |subject: &str, raw: Vec<u8>, expect: &'static str| {
        mails.push((subject.to_owned(), raw, expect))
    };
    add(
        "qp-latin1",
        format!("{}Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nK=E4se und Br=F6tchen=\r\n sind da\r\n", head("qp-latin1", "c1")).into_bytes(),
        "Käse und Brötchen sind da",
    );
    add(
        "b64-utf8",
        format!("{}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nw5xiZXJ3ZWlzdW5nIGdlc2NoZWl0ZXJ0\r\n", head("b64-utf8", "c2")).into_bytes(),
        "Überweisung gescheitert",
    );
    let mut cp1252 = format!("{}Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", head("cp1252", "c3")).into_bytes();
    cp1252.extend_from_slice(b"\x93quoted\x94 \x80 5\r\n");
    add("cp1252", cp1252, "\u{201c}quoted\u{201d} \u{20ac} 5");
    let mut sjis = format!(
        "{}Content-Type: text/plain; charset=Shift_JIS\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        head("sjis", "c4")
    )
    .into_bytes();
    sjis.extend_from_slice(&[
        0x82, 0xb1, 0x82, 0xf1, 0x82, 0xc9, 0x82, 0xbf, 0x82, 0xcd, b'\r', b'\n',
    ]);
    add("sjis", sjis, "こんにちは");
    let mut jis = format!("{}Content-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: 7bit\r\n\r\n", head("jis", "c5")).into_bytes();
    jis.extend_from_slice(b"\x1b$B$3$s$K$A$O\x1b(B\r\n");
    add("jis", jis, "こんにちは");
    add(
        "=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=",
        format!(
            "{}Content-Type: text/plain; charset=utf-8\r\n\r\nencoded subject\r\n",
            head("=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=", "c6")
        )
        .into_bytes(),
        "encoded subject",
    );
    add(
        "html-only",
        format!("{}Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hello <b>HTML</b> world</p></body></html>\r\n", head("html-only", "c7")).into_bytes(),
        "HTML",
    );
    add(
        "alternative",
        format!("{}Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain part wins\r\n--alt\r\nContent-Type: text/html\r\n\r\n<p>html part</p>\r\n--alt--\r\n", head("alternative", "c8")).into_bytes(),
        "plain part wins",
    );
    add(
        "broken-mime",
        format!("{}Content-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n--never-closed\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64 at all\r\n--wrong-boundary\r\n", head("broken-mime", "c9")).into_bytes(),
        "",
    );
    add(
        "no-message-id",
        format!("From: {CUSTOMER}\r\nTo: {SUPPORT}\r\nSubject: no-message-id\r\n\r\nnobody gave me an id\r\n").into_bytes(),
        "nobody gave me an id",
    );
    // Postfix adds a Message-ID when there is none: append that one directly.
    let (no_id, others): (Vec<_>, Vec<_>) = mails.into_iter().partition(|m| m.0 == "no-message-id");
    for (_, raw, _) in &others {
        servers.send(CUSTOMER, &[SUPPORT], raw);
    }
    servers.append(SUPPORT, "INBOX", &no_id[0].1).await;
    let all: Vec<_> = others.iter().chain(no_id.iter()).collect();
    let list = wait_inquiries(&client, &daemon, all.len()).await;
    assert_eq!(list.len(), all.len());
    for (subject, _, expect) in all {
        let subject_seen = if subject.starts_with("=?") {
            "Grüße aus Köln".to_owned()
        } else {
            subject.clone()
        };
        let inq = list
            .iter()
            .find(|i| i["subject"] == subject_seen.as_str())
            .unwrap_or_else(|| panic!("no inquiry with subject {subject_seen}: {list:?}"));
        let d = detail(&client, &daemon, inq["reference"].as_str().unwrap()).await;
        let text = d["messages"][0]["text"].as_str().unwrap();
        assert!(
            text.contains(expect),
            "{subject}: {text:?} should contain {expect:?}"
        );
        if subject == "no-message-id" {
            assert!(
                d["messages"][0]["provider_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("sha256:")
            );
        }
    }
}

#[tokio::test]
async fn restart_takes_mail_that_arrived_while_down_exactly_once() {
    let servers = MailServers::start(&[]);
    // STARTTLS on the plain port this time.
    let setup = email_setup(&servers, "");
    let text = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            &format!("port = {}\ntls = \"implicit\"", servers.imaps_port),
            &format!("port = {}\ntls = \"starttls\"", servers.imap_port),
        );
    assert!(text.contains("starttls"));
    setup.write_config(&text);
    let client = http();
    let mut daemon = setup.start();
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(Some("r1@customer.test"), "before", "", "one"),
    );
    wait_inquiries(&client, &daemon, 1).await;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));

    for i in 2..=4 {
        servers.send(
            CUSTOMER,
            &[SUPPORT],
            &mail_from_customer(
                Some(&format!("r{i}@customer.test")),
                &format!("while down {i}"),
                "",
                "later",
            ),
        );
    }
    // Wait until Dovecot holds them.
    eventually(WAIT, "4 mails in the INBOX", || async {
        (servers.fetch_all(SUPPORT, "INBOX").await.len() == 4).then_some(())
    })
    .await;
    let daemon = setup.start();
    let list = wait_inquiries(&client, &daemon, 4).await;
    assert_eq!(list.len(), 4);
    wait_acks(&servers, 4).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(email_inquiries(&client, &daemon).await.len(), 4);
    assert_eq!(acks(&servers).await.len(), 4, "one acknowledgement each");
}

/// Small batches run the intake pipeline (commit one batch while the
/// next is parsed and the one before is flagged): every mail is taken once
/// and flagged \Seen, the last batch too, and a restart takes nothing again.
#[tokio::test]
async fn mail_in_many_batches_is_taken_once_and_every_batch_is_flagged() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "mailboxes = [\"Support\"]\nbatch_size = 2\n");
    servers.create(SUPPORT, "Support").await;
    for i in 1..=7 {
        let raw = mail_from_customer(
            Some(&format!("b{i}@customer.test")),
            &format!("batch mail {i}"),
            "",
            "in a small batch",
        );
        servers.append(SUPPORT, "Support", &raw).await;
    }
    let client = http();
    let mut daemon = setup.start();
    wait_inquiries(&client, &daemon, 7).await;
    eventually(WAIT, "all 7 mails flagged \\Seen", || async {
        let mails = servers.fetch_all(SUPPORT, "Support").await;
        let seen = mails
            .iter()
            .filter(|(_, _, flags)| flags.iter().any(|f| f.contains("Seen")))
            .count();
        (mails.len() == 7 && seen == 7).then_some(())
    })
    .await;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));

    let daemon = setup.start();
    servers
        .append(
            SUPPORT,
            "Support",
            &mail_from_customer(
                Some("b8@customer.test"),
                "batch mail 8",
                "",
                "after the restart",
            ),
        )
        .await;
    wait_inquiries(&client, &daemon, 8).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let list = email_inquiries(&client, &daemon).await;
    assert_eq!(list.len(), 8, "{list:?}");
}

#[tokio::test]
async fn uidvalidity_change_rescans_without_reimporting_or_skipping() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "mailboxes = [\"Support\"]\n");
    servers.create(SUPPORT, "Support").await;
    let m1 = mail_from_customer(Some("u1@customer.test"), "u1", "", "first");
    let m2 = mail_from_customer(Some("u2@customer.test"), "u2", "", "second");
    servers.append(SUPPORT, "Support", &m1).await;
    servers.append(SUPPORT, "Support", &m2).await;
    let client = http();
    let mut daemon = setup.start();
    wait_inquiries(&client, &daemon, 2).await;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));

    // Recreate the mailbox: new UIDVALIDITY, UIDs start again at 1.
    servers.delete(SUPPORT, "Support").await;
    servers.create(SUPPORT, "Support").await;
    servers.append(SUPPORT, "Support", &m2).await;
    servers.append(SUPPORT, "Support", &m1).await;
    servers
        .append(
            SUPPORT,
            "Support",
            &mail_from_customer(Some("u3@customer.test"), "u3", "", "third"),
        )
        .await;
    let daemon = setup.start();
    let list = wait_inquiries(&client, &daemon, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let list_later = email_inquiries(&client, &daemon).await;
    assert_eq!(list_later.len(), 3, "{list:?}");
    assert!(
        daemon.log_contains("UIDVALIDITY changed"),
        "{}",
        daemon.log_text()
    );
}

#[tokio::test]
async fn a_failed_move_after_commit_does_not_duplicate() {
    let servers = MailServers::start(&[]);
    // The folder does not exist: every UID MOVE fails after the commit.
    let setup = email_setup(&servers, "after = \"move:Missing\"\n");
    let client = http();
    let mut daemon = setup.start();
    for i in 1..=3 {
        servers.send(
            CUSTOMER,
            &[SUPPORT],
            &mail_from_customer(
                Some(&format!("f{i}@customer.test")),
                &format!("f{i}"),
                "",
                "x",
            ),
        );
    }
    wait_inquiries(&client, &daemon, 3).await;
    eventually(WAIT, "the failed move to be logged", || async {
        daemon
            .log_contains("cannot flag/move committed mail")
            .then_some(())
    })
    .await;
    // Reconnects and passes again, and a restart, take nothing twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));
    let daemon = setup.start();
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(Some("f4@customer.test"), "f4", "", "x"),
    );
    wait_inquiries(&client, &daemon, 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(email_inquiries(&client, &daemon).await.len(), 4);
    assert_eq!(
        servers.fetch_all(SUPPORT, "INBOX").await.len(),
        4,
        "mail stays where it was"
    );
    wait_acks(&servers, 4).await;
    assert_eq!(acks(&servers).await.len(), 4);
}

#[tokio::test]
async fn a_20_mib_attachment_is_taken_and_an_unparseable_mail_is_quarantined() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "max_message_bytes = 41943040\n");
    let client = http();
    let daemon = setup.start();

    // Garbage first: it must not block the mail after it.
    servers
        .append(
            SUPPORT,
            "INBOX",
            b"\x01\x02\x03 this is not a mail message at all",
        )
        .await;
    let attachment: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let b64 = base64_lines(&attachment);
    let big = format!(
        "From: {CUSTOMER}\r\nTo: {SUPPORT}\r\nSubject: big invoice\r\nMessage-ID: <big@customer.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: text/plain\r\n\r\nInvoice attached.\r\n\
         --mix\r\nContent-Type: application/octet-stream; name=\"invoice.bin\"\r\nContent-Disposition: attachment; filename=\"invoice.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}--mix--\r\n"
    );
    servers.send(CUSTOMER, &[SUPPORT], big.as_bytes());
    let list = wait_inquiries(&client, &daemon, 1).await;
    let d = detail(&client, &daemon, list[0]["reference"].as_str().unwrap()).await;
    let att = &d["messages"][0]["attachments"][0];
    assert_eq!(att["name"], "invoice.bin");
    assert_eq!(att["size"], 20 * 1024 * 1024);
    assert_eq!(d["messages"][0]["text"], "Invoice attached.");

    let (_, channels) = api_get(&client, &daemon, "/api/v1/channels").await;
    let imap = channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "imap/support")
        .unwrap()
        .clone();
    assert_eq!(imap["mailboxes"][0]["quarantined"], 1, "{imap}");
    let metrics = common::metrics_text(&client, &daemon).await;
    assert!(
        metrics.contains("switchboard_email_quarantined_total"),
        "{metrics}"
    );
}

fn base64_lines(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + data.len() / 38);
    for (i, chunk) in data.chunks(3).enumerate() {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
        if (i + 1) % 19 == 0 {
            out.push_str("\r\n");
        }
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out
}

#[tokio::test]
async fn oversize_mail_is_recorded_with_a_note_and_a_5xx_ack_fails_with_the_server_text() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "max_message_bytes = 4096\n");
    let client = http();
    let daemon = setup.start();
    let body = "x".repeat(10_000);
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(Some("huge@customer.test"), "huge", "", &body),
    );
    // From an address Postfix has no mailbox for: the ack is refused (550).
    let stranger = "From: Nobody <nobody@customer.test>\r\nTo: support@example.test\r\nSubject: stranger\r\n\
                    Message-ID: <s1@customer.test>\r\n\r\nhello\r\n";
    servers.send("nobody@customer.test", &[SUPPORT], stranger.as_bytes());
    let list = wait_inquiries(&client, &daemon, 2).await;
    let huge = list.iter().find(|i| i["subject"] == "huge").unwrap();
    let d = detail(&client, &daemon, huge["reference"].as_str().unwrap()).await;
    let text = d["messages"][0]["text"].as_str().unwrap();
    assert!(text.contains("over the limit of 4096 bytes"), "{text}");
    assert!(d["messages"][0]["metadata"]["oversize"].as_u64().unwrap() > 10_000);

    let stranger = list.iter().find(|i| i["subject"] == "stranger").unwrap();
    let reference = stranger["reference"].as_str().unwrap().to_owned();
    let d = eventually(WAIT, "the refused ack to be marked failed", || async {
        let d = detail(&client, &daemon, &reference).await;
        (d["outbox"][0]["status"] == "failed").then_some(d)
    })
    .await;
    let error = d["outbox"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("550") || error.to_lowercase().contains("unknown"),
        "{error}"
    );
    assert_eq!(d["outbox"][0]["attempts"], 1, "a 5xx is not retried");
}

#[tokio::test]
async fn per_sender_ack_limit_and_bad_credentials_in_health() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "");
    let text = std::fs::read_to_string(setup.config_path())
        .unwrap()
        .replace(
            "max_acks_per_sender_per_hour = 50",
            "max_acks_per_sender_per_hour = 2",
        )
        + r#"
[channels.imap.broken]
host = "127.0.0.1"
port = PORT
tls = "none"
username = "support@example.test"
password = "wrong"
max_backoff = "1s"
"#;
    setup.write_config(&text.replace("PORT", &servers.imap_port.to_string()));
    let client = http();
    let daemon = setup.start();
    for i in 1..=3 {
        servers.send(
            CUSTOMER,
            &[SUPPORT],
            &mail_from_customer(
                Some(&format!("l{i}@customer.test")),
                &format!("limit {i}"),
                "",
                "x",
            ),
        );
    }
    let list = wait_inquiries(&client, &daemon, 3).await;
    let mut skipped = Vec::new();
    for inq in &list {
        let d = detail(&client, &daemon, inq["reference"].as_str().unwrap()).await;
        if event_kinds(&d).contains(&"ack_skipped".to_owned()) {
            skipped.push(d["events"].to_string());
        }
    }
    assert_eq!(skipped.len(), 1, "the third mail of the hour gets no ack");
    assert!(
        skipped[0].contains("acknowledgements this hour"),
        "{}",
        skipped[0]
    );

    let health = eventually(WAIT, "the broken mailbox to report its error", || async {
        let (_, channels) = api_get(&client, &daemon, "/api/v1/channels").await;
        let broken = channels["channels"]
            .as_array()?
            .iter()
            .find(|c| c["channel"] == "imap/broken")?
            .clone();
        let mb = broken["mailboxes"].get(0)?.clone();
        (mb["consecutive_failures"].as_u64()? >= 2).then_some(mb)
    })
    .await;
    assert_eq!(health["connected"], false);
    assert!(
        health["last_error"]
            .as_str()
            .unwrap()
            .contains("login refused"),
        "{health}"
    );
    // Logged once per backoff step, not in a tight loop.
    let logged = daemon
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("imap/broken") && l.contains("login refused"))
        .count();
    assert!(logged <= 6, "{logged} log lines in a few seconds");
}

/// An associate notified by email gets the offer in their mailbox, sent
/// through `[smtp]` and marked as machine mail.
#[tokio::test]
async fn offers_are_notified_to_associates_by_email() {
    const ANNA: &str = "anna@example.test";
    let servers = MailServers::start(&[ANNA]);
    let setup = email_setup(&servers, "");
    std::fs::write(
        setup.dir.path().join("roster.toml"),
        format!(
            "[[associate]]\nid = \"anna\"\nname = \"Anna Becker\"\nemail = \"{ANNA}\"\n\
             capacity = {{ email = 2, generic = 2 }}\n"
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(setup.config_path()).unwrap()
        + "\n[routing]\ninitial_presence = \"available\"\n";
    setup.write_config(&text);
    let daemon = setup.start();
    let client = http();
    let body = serde_json::json!({"id": "n1", "from": {"email": "c@example.org"}, "subject": "Card", "text": "Hi"});
    let (status, answer) = common::post_webhook(&client, &daemon, "shop", &body).await;
    assert_eq!(status, 202, "{answer}");
    let reference = answer["inquiry"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + WAIT;
    let note = loop {
        let got = servers.fetch_all(ANNA, "INBOX").await;
        if let Some((_, raw, _)) = got.into_iter().next() {
            break raw;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notification\n{}",
            servers.maillog()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        header(&note, "Subject").unwrap(),
        format!("New offer: {reference}")
    );
    assert_eq!(header(&note, "Auto-Submitted").unwrap(), "auto-generated");
    assert!(String::from_utf8_lossy(&note).contains(&reference));
    let d = detail(&client, &daemon, &reference).await;
    assert!(event_kinds(&d).iter().any(|k| k == "notified"), "{d}");
}

/// Resolves `reference` as ops.
async fn resolve(client: &reqwest::Client, daemon: &Daemon, reference: &str) {
    let (status, body) = common::api(
        client,
        daemon,
        reqwest::Method::POST,
        &format!("/api/v1/inquiries/{reference}/resolve"),
        common::TOKEN,
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A reply to a resolved inquiry by mail: within `threading.reopen_window`
/// (answering our acknowledgement) it reopens the inquiry without a second
/// acknowledgement; with the window passed (the config reloaded to `0s`)
/// a reply quoting the reference opens a new, linked inquiry that is
/// acknowledged under its own reference.
#[tokio::test]
async fn a_reply_to_a_resolved_inquiry_reopens_it_or_opens_a_linked_one() {
    let servers = MailServers::start(&[]);
    let setup = email_setup(&servers, "");
    let config = std::fs::read_to_string(setup.config_path()).unwrap();
    setup.write_config(&format!("{config}\n[threading]\nreopen_window = \"7d\"\n"));
    let daemon = setup.start();
    let client = http();

    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(Some("ro1@customer.test"), "Card blocked", "", "Help."),
    );
    let list = wait_inquiries(&client, &daemon, 1).await;
    let reference = list[0]["reference"].as_str().unwrap().to_owned();
    let ack = wait_acks(&servers, 1).await.remove(0);
    let ack_id = header(&ack, "Message-ID").unwrap();
    resolve(&client, &daemon, &reference).await;

    // Within the window: the answer to our acknowledgement reopens it.
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("ro2@customer.test"),
            "Re: Card blocked",
            &format!("In-Reply-To: {ack_id}\r\nReferences: <ro1@customer.test> {ack_id}\r\n"),
            "It is blocked again.",
        ),
    );
    let d = eventually(WAIT, "the inquiry reopened", || async {
        let d = detail(&client, &daemon, &reference).await;
        (d["status"] != "resolved").then_some(d)
    })
    .await;
    assert_eq!(d["messages"].as_array().unwrap().len(), 2);
    let kinds = event_kinds(&d);
    assert_eq!(
        kinds.iter().filter(|k| *k == "reopened").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        d["outbox"].as_array().unwrap().len(),
        1,
        "a reopened inquiry is not acknowledged again"
    );
    assert_eq!(email_inquiries(&client, &daemon).await.len(), 1);

    // Past the window (0s: always), a reply quoting the reference opens a
    // new inquiry linked to the old one.
    resolve(&client, &daemon, &reference).await;
    let config = std::fs::read_to_string(setup.config_path()).unwrap();
    setup.write_config(&config.replace("reopen_window = \"7d\"", "reopen_window = \"0s\""));
    daemon.signal("HUP");
    eventually(WAIT, "reload", || async {
        daemon.log_contains("configuration reloaded").then_some(())
    })
    .await;
    servers.send(
        CUSTOMER,
        &[SUPPORT],
        &mail_from_customer(
            Some("ro3@customer.test"),
            &format!("Re: [{reference}] a new problem"),
            "",
            "Now my transfer is stuck.",
        ),
    );
    let list = wait_inquiries(&client, &daemon, 2).await;
    let linked = list[0]["reference"].as_str().unwrap().to_owned();
    assert_ne!(linked, reference);
    assert_eq!(list[0]["linked_to"], reference.as_str());
    let old = detail(&client, &daemon, &reference).await;
    assert_eq!(old["status"], "resolved");
    assert_eq!(old["linked_from"], serde_json::json!([linked]));
    assert_eq!(old["messages"].as_array().unwrap().len(), 2);
    // Acknowledged as a new inquiry, under its own reference.
    let acks = wait_acks(&servers, 2).await;
    let subjects: Vec<String> = acks.iter().filter_map(|a| header(a, "Subject")).collect();
    assert!(subjects.iter().any(|s| s.contains(&linked)), "{subjects:?}");
}

/// Two instances on one PostgreSQL watch the same mailbox: one polls it
/// (it holds the mailbox's lease); after a `kill -9` of that one, the other
/// takes the mailbox over from the committed checkpoint within about a
/// lease's lifetime, and no mail is imported twice or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_mailbox_is_taken_over_from_the_checkpoint() {
    let servers = MailServers::start(&[]);
    let pg = common::pg::PgServer::start();
    let url = common::pg::create_database(&pg.admin_url);
    let setups: Vec<Setup> = (0..2)
        .map(|i| {
            let mut setup = Setup::new(None);
            setup.store_url = url.clone();
            setup.cluster = format!("[cluster]\ninstance = \"mail-{i}\"\nlease_ttl = \"3s\"\n");
            email_config(setup, &servers, "")
        })
        .collect();
    let mut daemons: Vec<Option<Daemon>> = setups.iter().map(|s| Some(s.start())).collect();
    let client = http();
    let send = |n: std::ops::Range<usize>| {
        for i in n {
            servers.send(
                CUSTOMER,
                &[SUPPORT],
                &mail_from_customer(
                    Some(&format!("takeover-{i}@customer.test")),
                    &format!("Question {i}"),
                    "",
                    "Where is my card?",
                ),
            );
        }
    };
    let count = |d: &Daemon| {
        let (client, d) = (client.clone(), d.url(""));
        async move {
            let r = client
                .get(format!(
                    "{d}/api/v1/inquiries?channel=imap/support&limit=500"
                ))
                .bearer_auth(common::TOKEN)
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            v["inquiries"].as_array().map_or(0, Vec::len)
        }
    };
    send(0..5);
    eventually(WAIT, "5 mails taken", || async {
        (count(daemons[0].as_ref().unwrap()).await == 5).then_some(())
    })
    .await;
    let polls = |d: &Daemon| d.log_contains("this instance polls the mailbox");
    let holder = (0..2)
        .find(|i| polls(daemons[*i].as_ref().unwrap()))
        .expect("one instance polls the mailbox");
    let other = 1 - holder;
    assert!(!polls(daemons[other].as_ref().unwrap()), "only one polls");
    daemons[holder].as_mut().unwrap().kill9();
    daemons[holder] = None;

    send(5..10);
    let survivor = daemons[other].as_ref().unwrap();
    eventually(
        WAIT,
        "the other instance takes the mailbox over",
        || async { (count(survivor).await == 10).then_some(()) },
    )
    .await;
    assert!(polls(survivor));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(survivor).await, 10, "nothing imported twice");
}
