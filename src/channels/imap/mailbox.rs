//! One task per watched mailbox: connect, log in, select, take new mail
//! from the checkpoint on, wait (IDLE or poll), repeat; reconnect with
//! exponential backoff on any failure.
//!
//! Order of a pass, per batch: `UID FETCH … BODY.PEEK[]` (never sets
//! `\Seen`) → parse → commit messages, quarantined mail and the checkpoint
//! in one transaction → only then `\Seen` / move / delete. If that last
//! step fails, the checkpoint already covers the batch, and the store
//! dedupes by Message-ID anyway: nothing is taken twice. The next batch's
//! fetch runs while a batch commits.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_imap::{Client, Session};
use chrono::Utc;
use futures_util::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::loops::AckGuard;
use super::{After, ImapChannel, health, mime};
use crate::channels::smtp::TlsMode;
use crate::config::Settings;
use crate::inquiry::NewMessage;
use crate::pipeline::Pipeline;
use crate::store::lease::Held;
use crate::store::{MailCheckpoint, Quarantined, Store, StoreError};

/// Most bytes fetched in one batch (besides a single larger message). Two
/// batches can be in memory at once: one committing, the next fetched.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("login refused: {0}")]
    Auth(String),
    #[error("IMAP error: {0}")]
    Imap(String),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("store error: {0}")]
    Store(#[from] StoreError),
}

impl MailError {
    fn kind(&self) -> &'static str {
        match self {
            MailError::Connect(_) => "connect",
            MailError::Tls(_) => "tls",
            MailError::Auth(_) => "auth",
            MailError::Imap(_) => "imap",
            MailError::Timeout(_) => "timeout",
            MailError::Store(_) => "store",
        }
    }
}

impl From<async_imap::error::Error> for MailError {
    fn from(e: async_imap::error::Error) -> Self {
        MailError::Imap(e.to_string())
    }
}

async fn within<T, E: Into<MailError>>(
    limit: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, MailError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(MailError::Timeout(what)),
    }
}

/// A plain or TLS connection to the IMAP server.
#[derive(Debug)]
pub enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type ImapSession = Session<MailStream>;

async fn wrap_tls(cfg: &ImapChannel, tcp: TcpStream) -> Result<MailStream, MailError> {
    let name = rustls_pki_types::ServerName::try_from(cfg.host.clone())
        .map_err(|e| MailError::Tls(format!("bad server name {}: {e}", cfg.host)))?;
    let tls = within(cfg.timeout, "TLS handshake", async {
        crate::channels::smtp::tls_connector(&cfg.extra_roots)
            .map_err(MailError::Tls)?
            .connect(name, tcp)
            .await
            .map_err(|e| MailError::Tls(e.to_string()))
    })
    .await?;
    Ok(MailStream::Tls(Box::new(tls)))
}

async fn greeting(client: &mut Client<MailStream>, limit: Duration) -> Result<(), MailError> {
    match tokio::time::timeout(limit, client.read_response()).await {
        Err(_) => Err(MailError::Timeout("server greeting")),
        Ok(Err(e)) => Err(MailError::Connect(e.to_string())),
        Ok(Ok(None)) => Err(MailError::Connect("closed before the greeting".into())),
        Ok(Ok(Some(_))) => Ok(()),
    }
}

/// Connects, secures and logs in.
pub async fn connect(cfg: &ImapChannel) -> Result<ImapSession, MailError> {
    let tcp = within(cfg.timeout, "connect", async {
        TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| MailError::Connect(format!("{}:{}: {e}", cfg.host, cfg.port)))
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    let client = match cfg.tls {
        TlsMode::Implicit => {
            let mut c = Client::new(wrap_tls(cfg, tcp).await?);
            greeting(&mut c, cfg.timeout).await?;
            c
        }
        TlsMode::None => {
            let mut c = Client::new(MailStream::Plain(tcp));
            greeting(&mut c, cfg.timeout).await?;
            c
        }
        TlsMode::Starttls => {
            let mut c = Client::new(MailStream::Plain(tcp));
            greeting(&mut c, cfg.timeout).await?;
            within(
                cfg.timeout,
                "STARTTLS",
                c.run_command_and_check_ok("STARTTLS", None),
            )
            .await?;
            let MailStream::Plain(tcp) = c.into_inner() else {
                return Err(MailError::Tls("unexpected stream".into()));
            };
            Client::new(wrap_tls(cfg, tcp).await?)
        }
    };
    match tokio::time::timeout(
        cfg.timeout,
        client.login(&cfg.username, cfg.password.expose()),
    )
    .await
    {
        Err(_) => Err(MailError::Timeout("login")),
        Ok(Err((e, _client))) => Err(MailError::Auth(e.to_string())),
        Ok(Ok(session)) => Ok(session),
    }
}

/// `1:3,7,9:12` for sorted UIDs.
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// The exponential backoff before reconnect attempt `failures` (1-based):
/// 1 s doubling up to `max`, with jitter.
pub fn reconnect_delay(failures: u32, max: Duration) -> Duration {
    let full = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Renews a mailbox lease until `held` is cancelled; cancels `held` when
/// the lease is lost, which ends the mailbox session. A batch committing
/// at that moment is refused by the store's fence, so a successor never
/// sees mail imported twice.
async fn keep_lease(store: Arc<Store>, mut lease: Held, held: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease.period()) => {}
            _ = held.cancelled() => return,
        }
        if !lease.renew(&store).await {
            break;
        }
    }
    held.cancel();
}

/// One watched mailbox.
pub struct MailboxTask {
    /// The channel's name (`[channels.imap.<name>]`).
    pub name: String,
    pub mailbox: String,
    pub settings: Arc<ArcSwap<Settings>>,
    pub pipeline: Pipeline,
    pub store: Arc<Store>,
    pub guard: Arc<AckGuard>,
}

impl MailboxTask {
    fn channel(&self) -> Option<Arc<ImapChannel>> {
        self.settings.load().imap.get(&self.name).cloned()
    }

    fn channel_id(&self) -> String {
        format!("imap/{}", self.name)
    }

    /// Runs until `shutdown` fires (or the channel or mailbox is removed
    /// from the configuration). With a shared store, the mailbox is polled
    /// only while this instance holds its lease.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.store.shared().is_none() {
            return self.poll(&shutdown).await;
        }
        let lease = crate::store::lease::mailbox(&self.channel_id(), &self.mailbox);
        loop {
            let ttl = self.settings.load().cluster.lease_ttl;
            let taken = match Held::take(&self.store, &lease, ttl, None).await {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::warn!(lease, error = %e, "cannot reach the store to take a mailbox lease");
                    None
                }
            };
            let Some(taken) = taken else {
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 3) => continue,
                    _ = shutdown.cancelled() => return,
                }
            };
            tracing::info!(lease, "this instance polls the mailbox");
            let held = shutdown.child_token();
            let renewal = tokio::spawn(keep_lease(self.store.clone(), taken, held.clone()));
            self.poll(&held).await;
            held.cancel();
            let _ = renewal.await;
            if shutdown.is_cancelled() {
                // Handed over at once: another instance need not wait out the TTL.
                let _ = self.store.release_lease(&lease).await;
                return;
            }
            tracing::warn!(
                lease,
                "lost the mailbox lease; another instance polls it now"
            );
        }
    }

    async fn poll(&self, shutdown: &CancellationToken) {
        let channel = self.channel_id();
        let mut failures = 0u32;
        loop {
            let Some(cfg) = self.channel() else {
                tracing::info!(channel, mailbox = %self.mailbox, "channel removed from the configuration; mailbox task stops");
                return;
            };
            if !cfg.mailboxes.contains(&self.mailbox) {
                tracing::info!(channel, mailbox = %self.mailbox, "mailbox removed from the configuration; task stops");
                return;
            }
            match self.session(&cfg, shutdown, &mut failures).await {
                Ok(()) => {
                    health::update(&channel, &self.mailbox, |h| h.connected = false);
                    return;
                }
                Err(e) => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    failures += 1;
                    let delay = reconnect_delay(failures, cfg.max_backoff);
                    let text = e.to_string();
                    metrics::counter!("switchboard_email_errors_total", "channel" => channel.clone(), "mailbox" => self.mailbox.clone(), "kind" => e.kind())
                        .increment(1);
                    health::update(&channel, &self.mailbox, |h| {
                        h.connected = false;
                        h.last_error = Some(text.clone());
                        h.last_error_at = Some(Utc::now());
                        h.consecutive_failures = failures;
                    });
                    // Logged once per backoff step, never in a tight loop.
                    if matches!(e, MailError::Auth(_)) || failures >= 5 {
                        tracing::error!(channel, mailbox = %self.mailbox, error = %text, failures, retry_in = ?delay, "mailbox unavailable");
                    } else {
                        tracing::warn!(channel, mailbox = %self.mailbox, error = %text, failures, retry_in = ?delay, "mailbox session failed; reconnecting");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        cfg: &ImapChannel,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), MailError> {
        let channel = self.channel_id();
        let mut session = tokio::select! {
            s = connect(cfg) => s?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let selected = within(cfg.timeout, "SELECT", session.select(&self.mailbox)).await?;
        let uidvalidity = selected
            .uid_validity
            .ok_or_else(|| MailError::Imap("the server reports no UIDVALIDITY".into()))?;
        let can_idle = cfg.idle
            && within(cfg.timeout, "CAPABILITY", session.capabilities())
                .await?
                .has_str("IDLE");
        let mut last = match self.store.mail_checkpoint(&channel, &self.mailbox).await? {
            Some(c) if c.uidvalidity == uidvalidity => c.last_uid,
            Some(c) => {
                tracing::warn!(
                    channel,
                    mailbox = %self.mailbox,
                    old = c.uidvalidity,
                    new = uidvalidity,
                    "UIDVALIDITY changed: rescanning the mailbox; mail already taken is recognized by Message-ID"
                );
                0
            }
            None => 0,
        };
        *failures = 0;
        health::update(&channel, &self.mailbox, |h| {
            h.connected = true;
            h.idle = can_idle;
            h.consecutive_failures = 0;
            h.uidvalidity = Some(uidvalidity);
            h.last_uid = Some(last);
        });
        tracing::info!(channel, mailbox = %self.mailbox, uidvalidity, from_uid = last + 1, idle = can_idle, "mailbox connected");
        loop {
            last = self
                .pass(&mut session, cfg, uidvalidity, last, shutdown)
                .await?;
            health::update(&channel, &self.mailbox, |h| {
                h.last_success = Some(Utc::now());
                h.last_uid = Some(last);
            });
            if shutdown.is_cancelled() {
                let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                return Ok(());
            }
            if can_idle {
                while session.unsolicited_responses.try_recv().is_ok() {}
                let mut idle = session.idle();
                within(cfg.timeout, "IDLE", idle.init()).await?;
                let stopped = {
                    // Keep the stop handle alive while waiting: dropping it ends IDLE.
                    let (wait, stop) = idle.wait_with_timeout(cfg.idle_timeout);
                    let stopped = tokio::select! {
                        r = wait => { r?; false }
                        _ = shutdown.cancelled() => true,
                    };
                    drop(stop);
                    stopped
                };
                session = within(cfg.timeout, "IDLE DONE", idle.done()).await?;
                if stopped {
                    let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                    return Ok(());
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.poll_interval) => {}
                    _ = shutdown.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                        return Ok(());
                    }
                }
                // Lets the server report new mail (and detects a dead connection).
                within(cfg.timeout, "NOOP", session.noop()).await?;
            }
        }
    }

    /// Takes every mail with a UID above `last`; returns the new checkpoint UID.
    async fn pass(
        &self,
        session: &mut ImapSession,
        cfg: &ImapChannel,
        uidvalidity: u32,
        mut last: u32,
        shutdown: &CancellationToken,
    ) -> Result<u32, MailError> {
        let Some(from) = last.checked_add(1) else {
            return Ok(last);
        };
        let listing: Vec<(u32, u64)> = within(cfg.timeout, "UID FETCH (sizes)", async {
            let mut out = Vec::new();
            let mut stream = session
                .uid_fetch(format!("{from}:*"), "(UID RFC822.SIZE)")
                .await?;
            while let Some(f) = stream.try_next().await? {
                if let Some(uid) = f.uid
                    && uid > last
                {
                    out.push((uid, u64::from(f.size.unwrap_or(0))));
                }
            }
            Ok::<_, async_imap::error::Error>(out)
        })
        .await?;
        let mut listing = listing;
        listing.sort_unstable();
        listing.dedup_by_key(|(uid, _)| *uid);
        let mut batches = Vec::new();
        let mut start = 0;
        while start < listing.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < listing.len() && end - start < cfg.batch_size {
                let size = listing[end].1.min(cfg.max_message_bytes);
                if end > start && bytes + size > BATCH_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            batches.push(&listing[start..end]);
            start = end;
        }
        // Three stages at once: while batch i commits (the store's
        // writer), batch i+1 is parsed (this task) and the session flags
        // batch i-1, committed in the previous round, then fetches batch
        // i+2 (the server). Flags still only follow their own batch's
        // commit, and batches commit in order. Parsing ahead counts senders
        // against the acknowledgement rate limit ahead; if a commit fails,
        // they are counted again when refetched, which only errs on the
        // side of fewer acknowledgements.
        let mut parsed = None;
        let mut fetched = None;
        if let Some(first) = batches.first() {
            let raw = fetch_batch(session, cfg, first).await?;
            parsed = Some(self.prepare(cfg, uidvalidity, first, raw));
            if let Some(second) = batches.get(1) {
                fetched = Some(fetch_batch(session, cfg, second).await?);
            }
        }
        let mut unflagged: Vec<u32> = Vec::new();
        for i in 0..batches.len() {
            let Some(prepared) = parsed.take() else { break };
            let raw = fetched.take();
            let after = batches.get(i + 2).filter(|_| !shutdown.is_cancelled());
            let flags = std::mem::take(&mut unflagged);
            let (committed, next_parsed, flagged_then_fetched) = tokio::join!(
                self.commit(prepared),
                async { raw.map(|raw| self.prepare(cfg, uidvalidity, batches[i + 1], raw)) },
                async {
                    if !flags.is_empty() {
                        self.after_commit(session, cfg, &flags).await?;
                    }
                    match after {
                        Some(batch) => fetch_batch(session, cfg, batch).await.map(Some),
                        None => Ok(None),
                    }
                }
            );
            let taken = committed?;
            last = taken.last_uid;
            unflagged = taken.uids;
            fetched = flagged_then_fetched?;
            parsed = next_parsed;
            if shutdown.is_cancelled() {
                break;
            }
        }
        // The last committed batch.
        if !unflagged.is_empty() {
            self.after_commit(session, cfg, &unflagged).await?;
        }
        Ok(last)
    }

    /// Parses a fetched batch: messages to commit, quarantined mail.
    fn prepare(
        &self,
        cfg: &ImapChannel,
        uidvalidity: u32,
        batch: &[(u32, u64)],
        fetched: Fetched,
    ) -> Prepared {
        let channel = self.channel_id();
        let Fetched { bodies, headers } = fetched;
        let own = cfg.own_addresses();
        let can_reply = cfg.smtp().is_some();
        let limits = cfg.smtp().map(|s| s.limits());
        let id = crate::inquiry::ChannelId::new(crate::inquiry::Adapter::Imap, &self.name);
        let ctx = mime::Context {
            channel: &id,
            mailbox: &self.mailbox,
            own_addresses: &own,
            plus_tokens: cfg.plus_tokens,
            received_at: Utc::now(),
        };
        let mut prepared = Prepared {
            checkpoint: MailCheckpoint {
                uidvalidity,
                last_uid: batch.last().map(|(u, _)| *u).unwrap_or_default(),
            },
            messages: Vec::new(),
            quarantine: Vec::new(),
            uids: Vec::new(),
        };
        for &(uid, size) in batch {
            let parsed = if let Some(raw) = bodies.get(&uid) {
                mime::normalize(raw, &ctx).map(|m| (m, Some(raw)))
            } else if let Some(head) = headers.get(&uid) {
                mime::normalize_oversize(head, size, cfg.max_message_bytes, &ctx).map(|m| (m, None))
            } else {
                // Expunged meanwhile: nothing to take.
                continue;
            };
            match parsed {
                Ok((mut message, raw)) => {
                    if can_reply
                        && message.no_ack_reason.is_none()
                        && let (Some(sender), Some(limits)) = (&message.customer.email, limits)
                        && let Err(reason) = self.guard.check(sender, limits, Instant::now())
                    {
                        message.no_ack_reason = Some(reason);
                    }
                    let keep = raw
                        .filter(|r| r.len() as u64 <= cfg.keep_raw_bytes)
                        .cloned();
                    prepared.messages.push((message, keep));
                    prepared.uids.push(uid);
                }
                Err(e) => {
                    let raw = bodies.get(&uid).or_else(|| headers.get(&uid));
                    tracing::warn!(channel, mailbox = %self.mailbox, uid, reason = %e, "unparseable mail quarantined");
                    metrics::counter!("switchboard_email_quarantined_total", "channel" => channel.clone(), "mailbox" => self.mailbox.clone())
                        .increment(1);
                    prepared.quarantine.push(Quarantined {
                        uid,
                        reason: e.to_string(),
                        size,
                        raw: raw
                            .filter(|r| r.len() as u64 <= cfg.keep_raw_bytes)
                            .cloned(),
                    });
                }
            }
        }
        prepared
    }

    /// Commits a prepared batch with its checkpoint; returns what it took.
    async fn commit(&self, prepared: Prepared) -> Result<Taken, MailError> {
        let channel = self.channel_id();
        let Prepared {
            checkpoint,
            messages,
            quarantine,
            uids,
        } = prepared;
        let last_uid = checkpoint.last_uid;
        let quarantined = quarantine.len() as u64;
        let outcomes = self
            .pipeline
            .accept_mail_batch(&channel, &self.mailbox, checkpoint, messages, quarantine)
            .await?;
        let new = outcomes.iter().filter(|o| !o.duplicate).count() as u64;
        metrics::counter!("switchboard_email_messages_taken_total", "channel" => channel.clone(), "mailbox" => self.mailbox.clone())
            .increment(new);
        health::update(&channel, &self.mailbox, |h| {
            h.messages_taken += new;
            h.quarantined += quarantined;
            h.last_uid = Some(last_uid);
        });
        tracing::debug!(channel, mailbox = %self.mailbox, last_uid, taken = new, quarantined, "mail batch committed");
        Ok(Taken { last_uid, uids })
    }

    /// `\Seen`, move or delete: only ever after the commit.
    async fn after_commit(
        &self,
        session: &mut ImapSession,
        cfg: &ImapChannel,
        uids: &[u32],
    ) -> Result<(), MailError> {
        let set = uid_set(uids);
        let result = match &cfg.after {
            After::Seen => {
                within(cfg.timeout, "UID STORE", async {
                    let stream = session.uid_store(&set, "+FLAGS.SILENT (\\Seen)").await?;
                    let _: Vec<_> = stream.try_collect().await?;
                    Ok::<_, async_imap::error::Error>(())
                })
                .await
            }
            After::Move(folder) => {
                within(cfg.timeout, "UID MOVE", session.uid_mv(&set, folder)).await
            }
            After::Delete => {
                within(cfg.timeout, "UID STORE/EXPUNGE", async {
                    let stream = session.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?;
                    let _: Vec<_> = stream.try_collect().await?;
                    let expunged = session.uid_expunge(&set).await?;
                    let _: Vec<_> = expunged.try_collect().await?;
                    Ok::<_, async_imap::error::Error>(())
                })
                .await
            }
        };
        if let Err(e) = &result {
            // The batch is committed and covered by the checkpoint: the
            // next pass will not take it again.
            tracing::warn!(channel = %self.channel_id(), mailbox = %self.mailbox, error = %e, "cannot flag/move committed mail");
        }
        result
    }
}

/// The raw mail of one batch, by UID: whole messages, and only the
/// headers of those over the size limit.
struct Fetched {
    bodies: HashMap<u32, Vec<u8>>,
    headers: HashMap<u32, Vec<u8>>,
}

/// A parsed batch, ready to commit.
struct Prepared {
    checkpoint: MailCheckpoint,
    messages: Vec<(NewMessage, Option<Vec<u8>>)>,
    quarantine: Vec<Quarantined>,
    /// UIDs of the messages taken, to flag once committed.
    uids: Vec<u32>,
}

/// What a committed batch took.
struct Taken {
    last_uid: u32,
    uids: Vec<u32>,
}

async fn fetch_batch(
    session: &mut ImapSession,
    cfg: &ImapChannel,
    batch: &[(u32, u64)],
) -> Result<Fetched, MailError> {
    let uids = |whole: bool| -> Vec<u32> {
        batch
            .iter()
            .filter(|(_, size)| (*size <= cfg.max_message_bytes) == whole)
            .map(|(uid, _)| *uid)
            .collect()
    };
    Ok(Fetched {
        bodies: fetch_sections(session, cfg, &uids(true), "BODY.PEEK[]", false).await?,
        headers: fetch_sections(session, cfg, &uids(false), "BODY.PEEK[HEADER]", true).await?,
    })
}

/// `UID FETCH <set> (UID <section>)`, section bytes by UID.
async fn fetch_sections(
    session: &mut ImapSession,
    cfg: &ImapChannel,
    uids: &[u32],
    section: &str,
    header: bool,
) -> Result<HashMap<u32, Vec<u8>>, MailError> {
    let mut out = HashMap::new();
    if uids.is_empty() {
        return Ok(out);
    }
    within(cfg.timeout, "UID FETCH", async {
        let mut stream = session
            .uid_fetch(uid_set(uids), format!("(UID {section})"))
            .await?;
        while let Some(f) = stream.try_next().await? {
            let bytes = if header { f.header() } else { f.body() };
            if let (Some(uid), Some(bytes)) = (f.uid, bytes) {
                out.insert(uid, bytes.to_vec());
            }
        }
        Ok::<_, async_imap::error::Error>(())
    })
    .await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn reconnect_delay_grows_and_caps() {
        let max = Duration::from_secs(60);
        for _ in 0..50 {
            let d1 = reconnect_delay(1, max);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d20 = reconnect_delay(20, max);
            assert!(d20 >= Duration::from_secs(30) && d20 <= max);
        }
    }
}
