//! Email intake and acknowledgement benchmark (not a test), against the
//! same real servers as `tests/email.rs`:
//!
//! 1. 10,000 varied messages are put into a Dovecot mailbox (Maildir files
//!    written directly, then indexed by one SELECT before any timing).
//! 2. floor: a bare fetch-and-parse loop (async-imap `UID FETCH` in batches
//!    of 500 over IMAPS + mail-parser, no store);
//! 3. mbsync (isync) downloading the same mailbox into a local Maildir;
//! 4. the daemon, from start to all 10,000 messages committed (no SMTP);
//! 5. the SMTP floor: a bare loop of lettre SMTP connections (the same pool
//!    size, `TCP_NODELAY`, as `src/channels/smtp.rs` opens them) sending as
//!    many acknowledgement-like mails to the same Postfix as the daemon
//!    will, nothing stored;
//! 6. the daemon again on a fresh store with `[smtp]` to Postfix: the
//!    acknowledgement throughput through the outbox (sent entries over the
//!    span of their `done_at`), with PIPELINING (and, with
//!    `EMAIL_BENCH_SMTP_SERIAL=1`, also with `pipelining = false`, lettre's
//!    four round trips a mail), each on a fresh store.
//!
//! Steps 5 and 6 run twice: first with Postfix holding what it accepts
//! (the rate at which mail reaches the MTA, see [`Delivery`]), then with
//! Postfix delivering to Dovecot at once. Each SMTP phase starts after
//! Postfix has delivered the previous one's mail and after [`settle`].
//!
//! Run as root (Postfix): `cargo bench --bench email`. Needs `isync` for
//! step 3 (skipped with a note when missing). Knobs: `EMAIL_BENCH_N`
//! (10,000 messages), `EMAIL_BENCH_SMTP_POOL` (16 connections, floor and
//! daemon alike), `EMAIL_BENCH_SETTLE` (65 s), `EMAIL_BENCH_SMTP_ONLY=1`
//! (skip steps 2-4), `EMAIL_BENCH_SMTP_SERIAL=1` (see step 6),
//! `EMAIL_BENCH_ROUNDS` (3 interleaved rounds of steps 2 and 4),
//! `EMAIL_BENCH_INTAKE_ONLY=1` (stop after step 4), `SWITCHBOARD_BENCH_BIN`
//! (another daemon build, for before/after runs), `EMAIL_BENCH_RUST_LOG`
//! (the daemon's `RUST_LOG`, default `warn`; its log is `daemon.log` in
//! the run's folder, printed at the end with `EMAIL_BENCH_KEEP_LOGS=1`).

#[path = "../tests/common/mail.rs"]
mod mail;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use lettre::message::{MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use mail::{MailServers, SUPPORT};
use switchboard::channels::imap::{Config as ImapConfig, ImapChannel, mailbox};

const CUSTOMERS: usize = 50;

/// `[smtp] pool_size` of the daemon run, and connections of the SMTP floor
/// (the same number for both): 16, or `EMAIL_BENCH_SMTP_POOL`.
fn smtp_pool() -> usize {
    std::env::var("EMAIL_BENCH_SMTP_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(16)
}

/// Whether message `i` gets an acknowledgement: threaded replies (kind 7)
/// and auto-replies (kind 8) do not.
fn acknowledged(i: usize) -> bool {
    !matches!(i % 10, 7 | 8)
}

fn customer(i: usize) -> String {
    format!("c{}@customer.test", i % CUSTOMERS)
}

/// The i-th benchmark message: ten kinds, varied sizes and encodings.
fn message(i: usize) -> Vec<u8> {
    let from = customer(i);
    let head = |subject: &str, extra: &str| {
        format!(
            "From: Customer {n} <{from}>\r\nTo: Support <{SUPPORT}>\r\nSubject: {subject}\r\n\
             Message-ID: <bench-{i}@customer.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n{extra}",
            n = i % CUSTOMERS
        )
    };
    let mut out = match i % 10 {
        0 => format!(
            "{}Content-Type: text/plain; charset=utf-8\r\n\r\nMy order {i} has not arrived yet.\r\n",
            head(&format!("Order {i} missing"), "")
        )
        .into_bytes(),
        1 => format!(
            "{}Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nK=E4se {i} ist sch=F6n.\r\n",
            head("=?ISO-8859-1?Q?R=FCckfrage?=", "")
        )
        .into_bytes(),
        2 => format!(
            "{}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nw5xiZXJ3ZWlzdW5nIGdlc2NoZWl0ZXJ0\r\n",
            head("Transfer failed", "")
        )
        .into_bytes(),
        3 => format!(
            "{}Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hello, <b>invoice {i}</b> is wrong.</p></body></html>\r\n",
            head("Invoice", "")
        )
        .into_bytes(),
        4 => format!(
            "{}Content-Type: multipart/alternative; boundary=\"a{i}\"\r\n\r\n--a{i}\r\nContent-Type: text/plain\r\n\r\nPlain {i}\r\n--a{i}\r\nContent-Type: text/html\r\n\r\n<p>Plain {i}</p>\r\n--a{i}--\r\n",
            head("Alternative", "")
        )
        .into_bytes(),
        5 => {
            let blob = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1Njc4OTAx\r\n".repeat(60);
            format!(
                "{}Content-Type: multipart/mixed; boundary=\"m{i}\"\r\n\r\n--m{i}\r\nContent-Type: text/plain\r\n\r\nScreenshot attached.\r\n--m{i}\r\nContent-Type: image/png; name=\"s.png\"\r\nContent-Disposition: attachment; filename=\"s.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{blob}--m{i}--\r\n",
                head("Screenshot", "")
            )
            .into_bytes()
        }
        6 => {
            let mut v = format!(
                "{}Content-Type: text/plain; charset=Shift_JIS\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
                head("Japanese", "")
            )
            .into_bytes();
            v.extend_from_slice(&[0x82, 0xb1, 0x82, 0xf1, 0x82, 0xc9, 0x82, 0xbf, 0x82, 0xcd, b'\r', b'\n']);
            v
        }
        7 => format!(
            "{}Content-Type: text/plain\r\n\r\nFollow-up on {}.\r\n\r\nOn Mon, you wrote:\r\n> earlier\r\n",
            head(
                "Re: Order missing",
                &format!("In-Reply-To: <bench-{}@customer.test>\r\n", i - 7)
            ),
            i - 7
        )
        .into_bytes(),
        8 => format!(
            "{}Content-Type: text/plain\r\n\r\nI am out of the office.\r\n",
            head("Out of office", "Auto-Submitted: auto-replied\r\n")
        )
        .into_bytes(),
        _ => format!(
            "{}Content-Type: text/plain\r\n\r\n{}\r\n",
            head("Long story", ""),
            "A long description of the problem. ".repeat(500)
        )
        .into_bytes(),
    };
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn seed(servers: &MailServers, n: usize) -> u64 {
    let root = servers.dir.path().join("mail").join(SUPPORT);
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut bytes = 0;
    for i in 0..n {
        let raw = message(i);
        bytes += raw.len() as u64;
        std::fs::write(
            root.join("new").join(format!("1764237600.M{i}P1.bench")),
            raw,
        )
        .unwrap();
    }
    let status = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    bytes
}

fn imap_channel(servers: &MailServers) -> ImapChannel {
    let cfg: ImapConfig = toml::from_str(&format!(
        "host = \"localhost\"\nport = {}\ntls = \"implicit\"\nca_file = \"{}\"\nusername = \"{SUPPORT}\"\npassword = \"secret\"\n",
        servers.imaps_port,
        servers.ca_file().display()
    ))
    .unwrap();
    ImapChannel::from_config("bench", &cfg, None, Path::new("/")).unwrap()
}

/// Clears `\Seen` on every mail of the INBOX (outside any timing).
async fn clear_seen(channel: &ImapChannel) {
    let mut session = mailbox::connect(channel).await.expect("connect");
    session.select("INBOX").await.unwrap();
    let _: Vec<_> = session
        .uid_store("1:*", "-FLAGS.SILENT (\\Seen)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let _ = session.logout().await;
}

/// Bare fetch-and-parse: the floor.
async fn floor(channel: &ImapChannel) -> (Duration, usize) {
    let start = Instant::now();
    let mut session = mailbox::connect(channel).await.expect("connect");
    let mb = session.select("INBOX").await.unwrap();
    let last = mb.uid_next.unwrap_or(1);
    let parser = mail_parser::MessageParser::default();
    let mut parsed = 0;
    let mut from = 1u32;
    while from < last {
        let to = (from + 499).min(last - 1);
        let fetched: Vec<_> = session
            .uid_fetch(format!("{from}:{to}"), "(UID BODY.PEEK[])")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for f in &fetched {
            if let Some(body) = f.body()
                && let Some(m) = parser.parse(body)
            {
                std::hint::black_box(m.body_text(0));
                parsed += 1;
            }
        }
        from = to + 1;
    }
    let _ = session.logout().await;
    (start.elapsed(), parsed)
}

fn mbsync(servers: &MailServers, work: &Path) -> Option<(Duration, usize)> {
    if Command::new("mbsync").arg("-v").output().is_err() {
        return None;
    }
    let local = work.join("mbsync-maildir");
    std::fs::create_dir_all(&local).unwrap();
    let conf = work.join("mbsyncrc");
    std::fs::write(
        &conf,
        format!(
            "IMAPAccount bench\nHost localhost\nPort {port}\nUser {SUPPORT}\nPass secret\nSSLType IMAPS\nCertificateFile {ca}\n\n\
             IMAPStore remote\nAccount bench\n\nMaildirStore local\nPath {dir}/\nInbox {dir}/INBOX\n\n\
             Channel bench\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\nSync Pull\nSyncState *\n",
            port = servers.imaps_port,
            ca = servers.ca_file().display(),
            dir = local.display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new("mbsync")
        .arg("-c")
        .arg(&conf)
        .arg("-a")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    if !out.status.success() {
        eprintln!("mbsync failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let count = ["cur", "new"]
        .iter()
        .map(|d| {
            std::fs::read_dir(local.join("INBOX").join(d))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum();
    Some((took, count))
}

/// The SMTP floor: `smtp_pool()` lettre connections over `TCP_NODELAY`
/// streams, each sending its share of one acknowledgement-like mail per
/// acknowledged benchmark message, built and sent in the loop. Returns the
/// time and the mails accepted by Postfix.
async fn smtp_floor(servers: &MailServers, n: usize) -> (Duration, usize) {
    let targets: Vec<usize> = (0..n).filter(|&i| acknowledged(i)).collect();
    let port = servers.smtp_port;
    let pool = smtp_pool();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..pool {
        let mine: Vec<usize> = targets.iter().copied().skip(part).step_by(pool).collect();
        tasks.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            let stream: Box<dyn AsyncTokioStream> = Box::new(tcp);
            let hello = ClientId::Domain("example.test".into());
            let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &hello)
                .await
                .unwrap();
            let mut sent = 0;
            for i in mine {
                let text = format!(
                    "Hello Customer {}, we have your message. Your reference is INQ-{i:06}.",
                    i % CUSTOMERS
                );
                let html = format!("<!DOCTYPE html>\n<html><body><p>{text}</p></body></html>\n");
                let message = lettre::Message::builder()
                    .from(format!("Support <{SUPPORT}>").parse().unwrap())
                    .to(format!("Customer <{}>", customer(i)).parse().unwrap())
                    .subject(format!("Re: Order {i} missing [INQ-{i:06}]"))
                    .message_id(Some(format!("<INQ-{i:06}.ack-{i}@example.test>")))
                    .in_reply_to(format!("<bench-{i}@customer.test>"))
                    .multipart(
                        MultiPart::alternative()
                            .singlepart(
                                SinglePart::builder()
                                    .header(ContentType::TEXT_PLAIN)
                                    .body(text),
                            )
                            .singlepart(
                                SinglePart::builder()
                                    .header(ContentType::TEXT_HTML)
                                    .body(html),
                            ),
                    )
                    .unwrap();
                conn.send(message.envelope(), &message.formatted())
                    .await
                    .unwrap();
                sent += 1;
            }
            let _ = conn.quit().await;
            sent
        });
    }
    let mut sent = 0;
    while let Some(r) = tasks.join_next().await {
        sent += r.unwrap();
    }
    (start.elapsed(), sent)
}

/// Waits (bounded) until Postfix has handed every queued mail on to
/// Dovecot, so one phase's deliveries do not load the next phase; returns
/// how long that took.
fn wait_postfix_idle(servers: &MailServers) -> Duration {
    let queue = servers.dir.path().join("postfix/queue");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    while Instant::now() < deadline {
        let queued: usize = ["maildrop", "incoming", "active", "deferred", "hold"]
            .iter()
            .map(|d| queue_files(&queue.join(d)))
            .sum();
        if queued == 0 {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("Postfix still has mail queued after 300 s");
    start.elapsed()
}

/// Files in one of Postfix's queue folders (hashed into subfolders).
fn queue_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { queue_files(&p) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Before each SMTP phase: `sync`, then wait out ext4's "recently deleted"
/// window (60 s for an inode whose table block is on disk): on a
/// filesystem without a journal (this VM's root), a new file's inode skips
/// every inode freed within that window, one buffer lookup each, so
/// Postfix's `cleanup` would otherwise pay for the previous phase's 8,000
/// deleted queue files. `EMAIL_BENCH_SETTLE` seconds, default 65.
fn settle() {
    let secs: u64 = std::env::var("EMAIL_BENCH_SETTLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(65);
    if secs > 0 {
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_secs(secs));
    }
}

struct DaemonRun {
    intake: Duration,
    messages: i64,
    inquiries: i64,
    acks_sent: i64,
    ack_rate: Option<f64>,
    /// Acknowledgements sent after intake had finished, and their rate.
    acks_after_intake: i64,
    ack_rate_after_intake: Option<f64>,
}

/// The daemon on a fresh store; `smtp`: without `[smtp]` (`None`), or
/// with it and `pipelining` set as given.
fn run_daemon(servers: &MailServers, work: &Path, n: usize, smtp: Option<bool>) -> DaemonRun {
    let with_smtp = smtp.is_some();
    // A fresh folder (and store) for every run.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = work.join(match smtp {
        None => format!("daemon-{run}"),
        Some(false) => format!("daemon-smtp-serial-{run}"),
        Some(true) => format!("daemon-smtp-{run}"),
    });
    assert!(!dir.exists(), "{} is not fresh", dir.display());
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/ack.en.txt"),
        "Hello {{ customer_name or 'there' }}, we have your message. Your reference is {{ reference }}.",
    )
    .unwrap();
    // With an HTML variant, as the floor's mails: multipart/alternative.
    std::fs::write(
        dir.join("templates/ack.en.html"),
        "<!DOCTYPE html>\n<html><body><p>Hello {{ customer_name or 'there' }}, we have your message. \
         Your reference is {{ reference }}.</p></body></html>",
    )
    .unwrap();
    let db: PathBuf = dir.join("switchboard.sqlite");
    let smtp = if let Some(pipelining) = smtp {
        format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"Support <{SUPPORT}>\"\npool_size = {pool}\n\
             pipelining = {pipelining}\nmax_acks_per_sender_per_hour = 1000000\nbreaker_acks_per_minute = 1000000\n",
            servers.smtp_port,
            pool = smtp_pool()
        )
    } else {
        String::new()
    };
    std::fs::write(
        dir.join("switchboard.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{db}\"\n[outbox]\nconcurrency = {concurrency}\n{smtp}\n\
             [channels.imap.support]\nhost = \"localhost\"\nport = {port}\ntls = \"implicit\"\nca_file = \"{ca}\"\n\
             username = \"{SUPPORT}\"\npassword = \"secret\"\naddress = \"{SUPPORT}\"\nbatch_size = 500\n",
            db = db.display(),
            // Twice the connections: a freed connection finds a mail ready.
            concurrency = 2 * smtp_pool(),
            port = servers.imaps_port,
            ca = servers.ca_file().display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Command::new(support::daemon_binary())
        .args(["run", "--config"])
        .arg(dir.join("switchboard.toml"))
        .env(
            "RUST_LOG",
            std::env::var("EMAIL_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut messages = 0;
    while Instant::now() < deadline {
        messages = count("SELECT COUNT(*) FROM messages");
        if messages >= n as i64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let intake = start.elapsed();
    let intake_done_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let inquiries = count("SELECT COUNT(*) FROM inquiries");
    let mut acks_sent = 0;
    let mut ack_rate = None;
    let mut acks_after_intake = 0;
    let mut ack_rate_after_intake = None;
    if with_smtp {
        let expected = count("SELECT COUNT(*) FROM outbox");
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            acks_sent = count("SELECT COUNT(*) FROM outbox WHERE status <> 'pending'");
            if acks_sent >= expected {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        acks_sent = count("SELECT COUNT(*) FROM outbox WHERE status = 'sent'");
        let span = count("SELECT MAX(done_at) - MIN(done_at) FROM outbox WHERE status = 'sent'");
        if span > 0 {
            ack_rate = Some(acks_sent as f64 / (span as f64 / 1000.0));
        }
        acks_after_intake = count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE status = 'sent' AND done_at > {intake_done_ms}"
        ));
        let span = count(&format!(
            "SELECT MAX(done_at) - MIN(done_at) FROM outbox WHERE status = 'sent' AND done_at > {intake_done_ms}"
        ));
        if span > 0 {
            ack_rate_after_intake = Some(acks_after_intake as f64 / (span as f64 / 1000.0));
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    if std::env::var_os("EMAIL_BENCH_KEEP_LOGS").is_some() {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        println!("--- daemon log of {}:\n{log}---", dir.display());
    }
    DaemonRun {
        intake,
        messages,
        inquiries,
        acks_sent,
        ack_rate,
        acks_after_intake,
        ack_rate_after_intake,
    }
}

/// Steps 2-4: the IMAP floor, mbsync and the daemon without `[smtp]`.
/// The floor and the daemon run in `EMAIL_BENCH_ROUNDS` (3) interleaved
/// rounds, so that drift of the machine hits both alike; the ratios are
/// per round and their median. mbsync, far from its target, runs once.
fn intake_phases(
    servers: &MailServers,
    channel: &ImapChannel,
    rt: &tokio::runtime::Runtime,
    work: &Path,
    n: usize,
) {
    let rounds: usize = std::env::var("EMAIL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    let mb = mbsync(servers, work);
    match &mb {
        Some((t, c)) => println!("mbsync (isync) to a Maildir: {t:.2?} ({c} files)"),
        None => println!("mbsync: not installed (apt-get install isync), skipped"),
    }
    let mut to_floor = Vec::new();
    let mut to_mbsync = Vec::new();
    for round in 1..=rounds {
        let (floor_time, parsed) = rt.block_on(floor(channel));
        assert_eq!(parsed, n);
        // Every round's daemon flags all n mails itself (Dovecot renames
        // each Maildir file), not only the first round's.
        rt.block_on(clear_seen(channel));
        let a = run_daemon(servers, work, n, None);
        let ratio = a.intake.as_secs_f64() / floor_time.as_secs_f64();
        to_floor.push(ratio);
        let vs_mbsync = mb.as_ref().map(|(t, _)| {
            let r = a.intake.as_secs_f64() / t.as_secs_f64();
            to_mbsync.push(r);
            format!(", {r:.2}x mbsync")
        });
        println!(
            "round {round}: floor (async-imap UID FETCH x500 + mail-parser) {floor_time:.2?}; \
             switchboard, start to {} messages committed ({} inquiries) {:.2?}: {ratio:.2}x the floor{}",
            a.messages,
            a.inquiries,
            a.intake,
            vs_mbsync.unwrap_or_default()
        );
    }
    println!(
        "median of {rounds} round(s): switchboard {:.2}x the floor (target <= 3){}",
        median(&mut to_floor),
        if to_mbsync.is_empty() {
            String::new()
        } else {
            format!(", {:.2}x mbsync (target <= 0.5)", median(&mut to_mbsync))
        }
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("EMAIL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let users: Vec<String> = (0..CUSTOMERS).map(customer).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let servers = MailServers::start(&users);
    let work = tempfile::tempdir().unwrap();
    let bytes = seed(&servers, n);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let channel = imap_channel(&servers);
    // Index the Maildir once, outside every timing.
    rt.block_on(async {
        let mut s = mailbox::connect(&channel).await.unwrap();
        let mb = s.select("INBOX").await.unwrap();
        assert_eq!(mb.exists as usize, n, "seeded mailbox");
        let _ = s.logout().await;
    });
    println!(
        "email benchmark: {n} messages, {:.1} MiB, Dovecot over IMAPS on loopback",
        bytes as f64 / 1048576.0
    );
    // `EMAIL_BENCH_SMTP_ONLY=1`: only the two SMTP phases.
    if std::env::var_os("EMAIL_BENCH_SMTP_ONLY").is_none() {
        intake_phases(&servers, &channel, &rt, work.path(), n);
    }
    // `EMAIL_BENCH_INTAKE_ONLY=1`: only steps 2-4.
    if std::env::var_os("EMAIL_BENCH_INTAKE_ONLY").is_some() {
        return;
    }
    // Held first: the figure for the target (what the MTA accepts), then
    // live: accepted while the MTA also delivers to Dovecot on these cores.
    let serial = std::env::var_os("EMAIL_BENCH_SMTP_SERIAL").is_some();
    for delivery in [Delivery::Held, Delivery::Live] {
        println!("SMTP phases, {}:", delivery.describe());
        settle();
        delivery.begin(&servers);
        let (smtp_time, smtp_sent) = rt.block_on(smtp_floor(&servers, n));
        let smtp_rate = smtp_sent as f64 / smtp_time.as_secs_f64();
        println!(
            "  SMTP floor ({} lettre connections, TCP_NODELAY): {smtp_sent} mails to Postfix in {smtp_time:.2?}, {smtp_rate:.0}/s",
            smtp_pool()
        );
        let drained = delivery.finish(&servers);
        if delivery == Delivery::Live {
            println!(
                "    Postfix handed the floor's mails on to Dovecot {drained:.2?} after the last was accepted ({:.0}/s accepted and delivered)",
                smtp_sent as f64 / (smtp_time + drained).as_secs_f64()
            );
        }
        // The daemon with PIPELINING (two round trips a mail); with
        // `EMAIL_BENCH_SMTP_SERIAL` also as lettre sends (four), each on a
        // fresh store.
        let modes: &[(bool, &str)] = if serial {
            &[(false, "without pipelining"), (true, "with PIPELINING")]
        } else {
            &[(true, "with PIPELINING")]
        };
        for &(pipelining, what) in modes {
            settle();
            delivery.begin(&servers);
            let b = run_daemon(&servers, work.path(), n, Some(pipelining));
            println!(
                "  switchboard with [smtp], {what}: intake {:.2?}; {} acknowledgements sent to Postfix, {}",
                b.intake,
                b.acks_sent,
                b.ack_rate
                    .map(|r| format!(
                        "{r:.0}/s through the outbox ({:.2}x the SMTP floor)",
                        r / smtp_rate
                    ))
                    .unwrap_or_else(|| "rate not measurable".into())
            );
            println!(
                "    of which after intake had finished: {}, {}",
                b.acks_after_intake,
                b.ack_rate_after_intake
                    .map(|r| format!("{r:.0}/s ({:.2}x the SMTP floor)", r / smtp_rate))
                    .unwrap_or_else(|| "rate not measurable".into())
            );
            let drained = delivery.finish(&servers);
            println!(
                "    Postfix handed the daemon's mails on to Dovecot {drained:.2?} after the last was sent{}",
                if delivery == Delivery::Held {
                    " (released from hold then)"
                } else {
                    ""
                }
            );
        }
    }
}

/// What Postfix does with the mail it accepts during an SMTP phase.
///
/// The target is the rate at which acknowledgements reach the MTA. On
/// these two cores, Postfix handing each mail on to Dovecot over LMTP
/// (about 4 ms of their CPU a mail) competes with its own acceptance and
/// with the daemon, which a real relay, handing mail to other machines,
/// does not. `Held` measures acceptance alone: Postfix queues every
/// accepted mail on hold (`check_client_access static:HOLD`), and after the
/// phase releases and delivers them all, so nothing is dropped. `Live`
/// measures the same with delivery running alongside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Held,
    Live,
}

impl Delivery {
    fn describe(self) -> &'static str {
        match self {
            Delivery::Held => "Postfix accepts and holds (delivered to Dovecot after each phase)",
            Delivery::Live => "Postfix accepts and delivers to Dovecot at once",
        }
    }

    fn begin(self, servers: &MailServers) {
        if self == Delivery::Held {
            set_hold(servers, true);
        }
    }

    /// Ends the phase: releases held mail, then waits until Postfix has
    /// delivered everything; returns how long that took.
    fn finish(self, servers: &MailServers) -> Duration {
        let start = Instant::now();
        if self == Delivery::Held {
            let held = queue_files(&servers.dir.path().join("postfix/queue/hold"));
            println!("    {held} mails on hold at the end of the phase");
            set_hold(servers, false);
            postfix_tool(servers, "postsuper", &["-H", "ALL"]);
            postfix_tool(servers, "postqueue", &["-f"]);
        }
        wait_postfix_idle(servers);
        start.elapsed()
    }
}

/// Runs one of Postfix's tools on the bench's instance; panics if it fails.
fn postfix_tool(servers: &MailServers, tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .arg("-c")
        .arg(servers.dir.path().join("postfix"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts every mail Postfix accepts from now on hold, or stops doing so.
fn set_hold(servers: &MailServers, on: bool) {
    let value = if on {
        "check_client_access static:HOLD"
    } else {
        ""
    };
    postfix_tool(
        servers,
        "postconf",
        &["-e", &format!("smtpd_client_restrictions = {value}")],
    );
    postfix_tool(servers, "postfix", &["reload"]);
    // `reload` returns before the new smtpd processes take over.
    std::thread::sleep(Duration::from_secs(2));
}
