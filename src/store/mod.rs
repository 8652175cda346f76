//! Persistence: inquiries, messages, thread keys, the event log and the
//! outbox, in SQLite (WAL, durable commits) or, for several instances
//! sharing one database, in PostgreSQL (selected by the URL's scheme).
//!
//! Every write goes through one writer task ([`writer`]) that commits
//! whatever is queued in one transaction: many concurrent intakes share one
//! fsync, and the writer never contends with itself for SQLite's lock. A
//! caller's future resolves only after its transaction is durable, which is
//! what lets the API answer a provider 2xx. Reads use a separate pool.

pub mod cluster;
pub mod lease;
pub mod pg_tls;
mod postgres;
mod reads;
mod routing;
mod sql;
mod writer;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::StoreConfig;
pub use crate::inquiry::IntakeOutcome;
use crate::inquiry::{MessageEdit, NewMessage, ProviderStatus, Urgency};

pub use reads::{
    EventRecord, InquiryDetail, InquiryFilter, InquiryPage, MessageRecord, OutboxCounts,
    OutboxEntry, OutboxRecord,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Store failures. Callers on the intake path turn these into 503 so the
/// provider retries: nothing is acknowledged that was not committed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", pg_detail(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// This instance no longer holds the lease a write needs.
    #[error("lease `{0}` is held by another instance")]
    LeaseLost(String),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot prepare the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("store.url is neither a sqlite:// nor a postgres:// URL (it starts with `{0}`)")]
    BadUrl(String),
    #[error("store.url: {0}")]
    Tls(#[from] pg_tls::PgTlsError),
    #[error("the store is shutting down")]
    Closed,
    #[error("cannot start the store writer: {0}")]
    Thread(std::io::Error),
    /// The failure of a batch, as reported to its other jobs.
    #[error("{0}")]
    SameFailure(String),
    #[error("cannot make the commit durable (WAL sync failed: {0})")]
    Sync(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A conflict with another instance's concurrent transaction (a unique
    /// key it committed first, a deadlock, a serialization failure): the
    /// same work done again sees what the other committed.
    pub fn is_contention(&self) -> bool {
        let code = match self {
            StoreError::Postgres(e) => e.code().map(|c| c.code().to_owned()),
            StoreError::Database(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            _ => None,
        };
        matches!(code.as_deref(), Some("23505" | "40001" | "40P01"))
    }
}

/// What to do about acknowledging a message, decided before the commit
/// (by rules, later) and applied only if the message opens an inquiry:
/// replies on an open inquiry are not acknowledged again, nor are replies
/// that reopen a resolved one (the customer is in a conversation that
/// already has its reference); a reply that opens a new inquiry linked to
/// an old one is acknowledged like any new inquiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckPlan {
    Send { template: String, language: String },
    Skip { reason: String },
}

/// One message to commit.
#[derive(Debug, Clone)]
pub struct Intake {
    pub message: NewMessage,
    pub ack: AckPlan,
    /// What the rules decided; applied only if the message opens an inquiry.
    pub classification: Classified,
    /// A resolved inquiry this message threads onto is reopened if it was
    /// resolved at most this long ago (`threading.reopen_window`); else a
    /// new inquiry linked to it opens. Zero never reopens.
    pub reopen_window: Duration,
}

/// The rules' verdict on a message, stored with the inquiry it opens.
#[derive(Debug, Clone, Default)]
pub struct Classified {
    pub urgency: Urgency,
    pub requirements: crate::routing::Requirements,
    pub sla_due_at: Option<DateTime<Utc>>,
    /// The rules' trace as JSON, recorded as the `classified` event (empty:
    /// none). Serialized once where the rules ran, because the writer
    /// thread that stores it is the one serial step of intake.
    pub trace: String,
}

impl Classified {
    /// The trace parsed back, for callers that read into it (`switchboard route`).
    pub fn trace_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.trace).unwrap_or(serde_json::Value::Null)
    }
}

/// Mail taken from one IMAP mailbox, committed in one transaction with the
/// mailbox's checkpoint: after a crash either all of it and the checkpoint
/// are in the store, or none of it, and the next pass fetches it again.
#[derive(Debug, Clone)]
pub struct MailBatch {
    /// `imap/<name>`.
    pub channel: String,
    pub mailbox: String,
    /// The checkpoint this batch moves the mailbox to.
    pub checkpoint: MailCheckpoint,
    pub items: Vec<MailItem>,
    pub quarantine: Vec<Quarantined>,
}

/// One parsed mail of a [`MailBatch`].
#[derive(Debug, Clone)]
pub struct MailItem {
    pub intake: Intake,
    /// The raw message, kept when within the channel's limit.
    pub raw: Option<Vec<u8>>,
}

/// Where intake of a mailbox stands: every UID up to `last_uid` under
/// `uidvalidity` has been committed (taken or quarantined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailCheckpoint {
    pub uidvalidity: u32,
    pub last_uid: u32,
}

/// A mail that could not be parsed: kept aside, reported, and skipped.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub uid: u32,
    pub reason: String,
    pub size: u64,
    pub raw: Option<Vec<u8>>,
}

/// The result of one delivery attempt of an outbox entry.
#[derive(Debug, Clone)]
pub enum DeliveryResult {
    Sent {
        text: String,
        provider_message_id: Option<String>,
    },
    Retry {
        error: String,
        next_attempt_at: DateTime<Utc>,
    },
    Failed {
        error: String,
    },
}

/// One delivery attempt to record.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub outbox_id: i64,
    pub inquiry_id: i64,
    pub kind: String,
    pub attempt: u32,
    pub result: DeliveryResult,
}

/// The handle every part of the daemon shares.
#[derive(Debug)]
pub struct Store {
    /// Reads (API views, metrics, the router's snapshot), on either backend.
    pool: AnyPool,
    /// `Some` when the database is shared by several instances.
    shared: Option<Shared>,
    jobs: mpsc::Sender<writer::Job>,
    /// Fires when the writer thread has committed its last batch.
    writer: Mutex<Option<oneshot::Receiver<()>>>,
    /// Set by `close`: later writes fail fast with `Closed`.
    closing: AtomicBool,
    outbox_wake: Arc<Notify>,
    /// Outbox ids handed to this instance's dispatcher and not yet
    /// recorded. With SQLite (one process per file) this is the whole claim
    /// protocol; with PostgreSQL claims are also leased in the database.
    in_flight: Arc<Mutex<HashSet<i64>>>,
}

/// What an instance sharing a PostgreSQL database needs to know.
#[derive(Debug, Clone)]
pub struct Shared {
    /// This instance's name in leases and claims.
    pub instance: String,
}

impl Store {
    /// Opens (creating if needed) the database at `config.url`, applies
    /// migrations and starts the writer.
    pub async fn open(config: &StoreConfig) -> Result<Arc<Store>, StoreError> {
        Self::open_as(config, None).await
    }

    /// Like [`Store::open`], naming this instance for leases and claims
    /// (PostgreSQL only; the default is `<hostname>-<pid>`).
    pub async fn open_as(
        config: &StoreConfig,
        instance: Option<&str>,
    ) -> Result<Arc<Store>, StoreError> {
        sqlx::any::install_default_drivers();
        if config.is_postgres() {
            let instance = instance.map_or_else(default_instance, str::to_owned);
            return Self::open_postgres(config, instance).await;
        }
        if !config.url.starts_with("sqlite:") {
            let scheme = config.url.split(':').next().unwrap_or_default();
            return Err(StoreError::BadUrl(scheme.chars().take(16).collect()));
        }
        let options = SqliteConnectOptions::from_str(&config.url)
            .map_err(|_| StoreError::BadUrl("sqlite:".into()))?;
        let path = options.get_filename().to_path_buf();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // Creates the file and switches it to WAL (a property of the file)
        // before the read pool opens it.
        rusqlite::Connection::open(&path)?.pragma_update(None, "journal_mode", "WAL")?;
        let url = format!("sqlite://{}", path.display());
        let read_cache_kib = config.read_cache_kib;
        let pool = AnyPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    // A small page cache per read connection (`store.read_cache_kib`).
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "PRAGMA cache_size = -{read_cache_kib}"
                    )))
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        let (jobs, rx) = mpsc::channel(config.max_batch * 8);
        let outbox_wake = Arc::new(Notify::new());
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let handle = writer::spawn(
            &path,
            rx,
            config.max_batch,
            config.cache_kib,
            outbox_wake.clone(),
            in_flight.clone(),
        )?;
        Ok(Arc::new(Store {
            pool,
            shared: None,
            jobs,
            writer: Mutex::new(Some(handle)),
            closing: AtomicBool::new(false),
            outbox_wake,
            in_flight,
        }))
    }

    async fn open_postgres(
        config: &StoreConfig,
        instance: String,
    ) -> Result<Arc<Store>, StoreError> {
        // The read pool (sqlx) reads the TLS parameters from the URL itself;
        // the writer's driver gets them taken out and its own connector.
        let (writer_url, tls) = pg_tls::PgTls::from_url(&config.url)?;
        let mut pg: ::postgres::Config = writer_url
            .parse()
            .map_err(|_| StoreError::BadUrl("postgres:".into()))?;
        pg.connect_timeout(config.connect_timeout);
        let tls_connector = tls.connector()?;
        let timeout_ms = config.statement_timeout.as_millis();
        let pool = AnyPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .acquire_timeout(config.connect_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "SET statement_timeout = {timeout_ms}"
                    )))
                    .await?;
                    Ok(())
                })
            })
            .connect(&config.url)
            .await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        let (jobs, rx) = mpsc::channel(config.max_batch * 8);
        let outbox_wake = Arc::new(Notify::new());
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let target = postgres::PgTarget {
            config: pg,
            tls: tls_connector,
            instance: instance.clone(),
            statement_timeout: config.statement_timeout,
            claim_lease: config.claim_lease,
            max_backoff: config.reconnect_max_backoff,
        };
        let handle = writer::spawn_postgres(
            target,
            rx,
            config.max_batch,
            outbox_wake.clone(),
            in_flight.clone(),
        )?;
        tracing::info!(instance = %instance, sslmode = ?tls.mode, "store: shared PostgreSQL database");
        Ok(Arc::new(Store {
            pool,
            shared: Some(Shared { instance }),
            jobs,
            writer: Mutex::new(Some(handle)),
            closing: AtomicBool::new(false),
            outbox_wake,
            in_flight,
        }))
    }

    /// `Some` when several instances share this store's database.
    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// Commits one inbound message (durably) and says what became of it.
    pub async fn intake(&self, intake: Intake) -> Result<IntakeOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(writer::Job::Intake(Box::new(intake), tx))
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits a batch of mail with its mailbox checkpoint (durably); one
    /// outcome per item, in order.
    pub async fn mail_batch(&self, batch: MailBatch) -> Result<Vec<IntakeOutcome>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(writer::Job::Mail(Box::new(batch), tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The committed checkpoint of `mailbox` on `channel`, if any.
    pub async fn mail_checkpoint(
        &self,
        channel: &str,
        mailbox: &str,
    ) -> Result<Option<MailCheckpoint>, StoreError> {
        reads::mail_checkpoint(&self.pool, channel, mailbox).await
    }

    /// How many mails of `channel` are in quarantine.
    pub async fn quarantine_count(&self, channel: &str) -> Result<i64, StoreError> {
        reads::quarantine_count(&self.pool, channel).await
    }

    /// Records a delivery attempt, with its event, and releases the entry.
    pub async fn record_delivery(&self, record: DeliveryRecord) -> Result<(), StoreError> {
        let id = record.outbox_id;
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.submit(writer::Job::Delivery(record, tx)).await {
            self.release(id);
            return Err(e);
        }
        let result = rx.await.map_err(|_| StoreError::Closed)?;
        if result.is_err() {
            // Not recorded: the entry is still pending and may be claimed again.
            self.release(id);
        }
        result
    }

    /// Hands out up to `limit` outbox entries due now that are not already
    /// being delivered. Each must come back through [`Store::record_delivery`]
    /// or [`Store::release`].
    pub async fn claim_due(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let busy = self.in_flight.lock().expect("in_flight lock").len();
        let (tx, rx) = oneshot::channel();
        self.submit(writer::Job::Claim {
            limit,
            scan: limit + busy,
            tx,
        })
        .await?;
        // The writer marks what it hands out in `in_flight`, in order with
        // its commits: see `writer::Writer::answer`.
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Gives back a claimed entry without recording an attempt (shutdown).
    pub fn release(&self, outbox_id: i64) {
        self.in_flight
            .lock()
            .expect("in_flight lock")
            .remove(&outbox_id);
    }

    /// Records delivery states a provider reported for messages we sent on
    /// `channel`. Ids we do not know are ignored (not ours, or not yet
    /// recorded); returns how many matched.
    pub async fn record_statuses(
        &self,
        channel: &str,
        statuses: Vec<ProviderStatus>,
    ) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(writer::Job::Statuses {
            channel: channel.to_owned(),
            statuses,
            tx,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Applies customers' edits to stored messages of `channel`; returns how
    /// many messages changed. Edits of unknown messages are ignored.
    pub async fn apply_edits(
        &self,
        channel: &str,
        edits: Vec<MessageEdit>,
    ) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(writer::Job::Edits {
            channel: channel.to_owned(),
            edits,
            tx,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Persists one round of the router's effects, durably, all or nothing.
    pub async fn apply_routing(
        &self,
        mut effects: Vec<crate::routing::Effect>,
    ) -> Result<(), StoreError> {
        // Rendered here, where the router built them: the writer thread,
        // which every intake waits on, then neither renders nor frees them.
        let details = effects
            .iter_mut()
            .filter_map(|e| match e {
                crate::routing::Effect::Event { detail, .. } => {
                    Some(std::mem::take(detail).to_string())
                }
                _ => None,
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        self.submit(writer::Job::Routing(effects, details, tx))
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Open inquiries, offers, presence and recent assignments: what the
    /// router is rebuilt from.
    pub async fn routing_snapshot(
        &self,
        sticky_window: Duration,
    ) -> Result<crate::routing::Snapshot, StoreError> {
        routing::snapshot(&self.pool, sticky_window, to_ms(Utc::now())).await
    }

    /// A reopened inquiry as the router's snapshot would restore it, for
    /// the running router; `None` if it is resolved (again) or unknown.
    pub async fn reopened_work(
        &self,
        id: i64,
    ) -> Result<Option<crate::routing::engine::RestoredWork>, StoreError> {
        routing::restored(&self.pool, id).await
    }

    /// Woken whenever a commit adds outbox entries.
    pub fn outbox_wake(&self) -> Arc<Notify> {
        self.outbox_wake.clone()
    }

    pub async fn inquiry(&self, reference: &str) -> Result<Option<InquiryDetail>, StoreError> {
        reads::inquiry_detail(&self.pool, reference).await
    }

    pub async fn list_inquiries(&self, filter: &InquiryFilter) -> Result<InquiryPage, StoreError> {
        reads::list_inquiries(&self.pool, filter).await
    }

    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        reads::outbox_counts(&self.pool).await
    }

    /// Readiness: the database answers and the writer is running.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            return Err(StoreError::Closed);
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Stops taking writes, commits what is queued, and waits for the
    /// writer to finish. Later writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            let _ = self.jobs.send(writer::Job::Stop).await;
        }
        let handle = self.writer.lock().expect("writer lock").take();
        if let Some(handle) = handle
            && handle.await.is_err()
        {
            tracing::error!("the store writer stopped abnormally");
        }
        if let Some(shared) = &self.shared {
            // Entries this instance claimed but did not deliver (cut off by
            // the drain) go back to the others now, not after the lease.
            let released = sqlx::query(
                "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL \
                 WHERE claimed_by = $1 AND status = 'pending'",
            )
            .bind(shared.instance.as_str())
            .execute(&self.pool)
            .await;
            if let Err(e) = released {
                tracing::warn!(error = %e, "cannot release outbox claims; they lapse after store.claim_lease");
            }
        }
        self.pool.close().await;
    }

    async fn submit(&self, job: writer::Job) -> Result<(), StoreError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)
    }
}

/// The server's own message (and code), which `postgres::Error`'s
/// display leaves out.
fn pg_detail(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `<hostname>-<pid>`: unique among instances running at the same time.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchboard".into());
    format!("{host}-{}", std::process::id())
}

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inquiry::{Adapter, ChannelId, Customer, Medium, ThreadHints};

    async fn open_temp() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            url: format!("sqlite://{}/db.sqlite", dir.path().display()),
            max_batch: 64,
            ..StoreConfig::default()
        };
        (dir, Store::open(&config).await.unwrap())
    }

    fn message(id: &str, thread: Option<&str>) -> Intake {
        let mut hints = ThreadHints::default();
        if let Some(t) = thread {
            hints.refers_to.push(t.to_owned());
            hints.provides.push(t.to_owned());
        }
        Intake {
            message: NewMessage {
                channel: ChannelId::new(Adapter::Generic, "test"),
                medium: Medium::Generic,
                provider_id: id.to_owned(),
                customer: Customer::default(),
                customer_key: None,
                subject: None,
                text: format!("text of {id}"),
                language: None,
                thread: hints,
                attachments: Vec::new(),
                metadata: serde_json::json!({}),
                reply_context: serde_json::Value::Null,
                no_ack_reason: None,
                received_at: Utc::now(),
            },
            ack: AckPlan::Send {
                template: "ack".into(),
                language: "en".into(),
            },
            classification: Classified::default(),
            reopen_window: Duration::ZERO,
        }
    }

    /// Many intakes at once land in shared batches; within a batch, the
    /// same id must still dedupe and the same thread must still gather.
    #[tokio::test]
    async fn concurrent_intakes_dedupe_and_thread_within_a_batch() {
        let (_dir, store) = open_temp().await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.spawn(async move {
                let (id, thread) = match i % 4 {
                    0 => ("same".to_owned(), None),
                    1 => (format!("t{i}"), Some("shared-thread")),
                    _ => (format!("m{i}"), None),
                };
                store.intake(message(&id, thread)).await.unwrap()
            });
        }
        let outcomes: Vec<IntakeOutcome> = tasks.join_all().await;
        let same: Vec<_> = outcomes.iter().filter(|o| o.duplicate).collect();
        assert_eq!(
            same.len(),
            49,
            "49 of the 50 `same` messages are duplicates"
        );
        let opened = outcomes.iter().filter(|o| o.opened).count();
        // 1 `same` + 1 thread + 100 plain messages.
        assert_eq!(opened, 102);
        let threaded: std::collections::HashSet<_> = outcomes
            .iter()
            .filter(|o| !o.duplicate && !o.opened)
            .map(|o| o.inquiry.clone())
            .collect();
        assert_eq!(
            threaded.len(),
            1,
            "all thread replies gather on one inquiry"
        );
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!(
            counts.pending, 102,
            "one acknowledgement per opened inquiry"
        );
        assert!(stored_counts_match(&store, 102, 151).await);
    }

    /// The store's own view: references unique, messages all kept.
    async fn stored_counts_match(store: &Store, inquiries: i64, messages_expected: i64) -> bool {
        let refs: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT reference) FROM inquiries")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let messages: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        refs == inquiries && messages == messages_expected
    }

    #[tokio::test]
    async fn reopened_store_continues_ids_and_keeps_idempotency() {
        let (dir, store) = open_temp().await;
        let first = store.intake(message("a", None)).await.unwrap();
        store.close().await;
        assert!(matches!(
            store.intake(message("b", None)).await,
            Err(StoreError::Closed)
        ));
        let config = StoreConfig {
            url: format!("sqlite://{}/db.sqlite", dir.path().display()),
            max_batch: 64,
            ..StoreConfig::default()
        };
        let store = Store::open(&config).await.unwrap();
        let again = store.intake(message("a", None)).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.inquiry, first.inquiry);
        let next = store.intake(message("b", None)).await.unwrap();
        assert_eq!(next.inquiry_id, first.inquiry_id + 1);
    }

    #[tokio::test]
    async fn claimed_entries_are_not_handed_out_twice() {
        let (_dir, store) = open_temp().await;
        for i in 0..5 {
            store.intake(message(&format!("c{i}"), None)).await.unwrap();
        }
        let first = store.claim_due(3).await.unwrap();
        let second = store.claim_due(10).await.unwrap();
        assert_eq!((first.len(), second.len()), (3, 2));
        assert!(store.claim_due(10).await.unwrap().is_empty());
        let done = &first[0];
        store
            .record_delivery(DeliveryRecord {
                outbox_id: done.id,
                inquiry_id: done.inquiry_id,
                kind: "ack".into(),
                attempt: 1,
                result: DeliveryResult::Sent {
                    text: "hi".into(),
                    provider_message_id: None,
                },
            })
            .await
            .unwrap();
        store.release(first[1].id);
        let third = store.claim_due(10).await.unwrap();
        assert_eq!(third.len(), 1, "only the released entry comes back");
        assert_eq!(third[0].id, first[1].id);
        assert_eq!(store.outbox_counts().await.unwrap().sent, 1);
    }

    #[tokio::test]
    async fn follow_ups_from_the_same_customer_gather_within_the_window() {
        let (_dir, store) = open_temp().await;
        let sms = |id: &str, who: &str, window_ms: u64| {
            let mut m = message(id, None);
            m.message.customer_key = Some(format!("tel:{who}"));
            m.message.thread.follow_up_window = Some(std::time::Duration::from_millis(window_ms));
            m
        };
        let first = store.intake(sms("s1", "+491", 60_000)).await.unwrap();
        let second = store.intake(sms("s2", "+491", 60_000)).await.unwrap();
        let other = store.intake(sms("s3", "+492", 60_000)).await.unwrap();
        assert!(first.opened && !second.opened && other.opened);
        assert_eq!(first.inquiry, second.inquiry);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let late = store.intake(sms("s4", "+491", 10)).await.unwrap();
        assert!(late.opened, "outside the window a new inquiry opens");
    }

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    /// A reply on thread `thread` with the given reopen window.
    fn reply(id: &str, thread: &str, window: Duration) -> Intake {
        let mut m = message(id, Some(thread));
        m.reopen_window = window;
        m
    }

    /// Resolves inquiry `id` as the router does: status and event.
    async fn resolve(store: &Store, id: i64, by: &str) {
        store
            .apply_routing(vec![
                crate::routing::Effect::Status {
                    inquiry_id: id,
                    status: crate::inquiry::Status::Resolved,
                    assignee: Some(by.into()),
                    waiting_since: None,
                },
                crate::routing::Effect::Event {
                    inquiry_id: id,
                    kind: "resolved",
                    detail: serde_json::json!({ "by": by }),
                },
            ])
            .await
            .unwrap();
    }

    /// Moves every recorded resolution `ago` into the past.
    async fn resolved_ago(store: &Store, ago: Duration) {
        sqlx::query("UPDATE inquiry_events SET at = at - ?1 WHERE kind = 'resolved'")
            .bind(ago.as_millis() as i64)
            .execute(&store.pool)
            .await
            .unwrap();
    }

    async fn detail(store: &Store, reference: &crate::inquiry::Reference) -> InquiryDetail {
        store.inquiry(reference.as_str()).await.unwrap().unwrap()
    }

    fn kinds(d: &InquiryDetail) -> Vec<&str> {
        d.events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[tokio::test]
    async fn a_reply_within_the_window_reopens_the_resolved_inquiry() {
        let (_dir, store) = open_temp().await;
        let first = store.intake(reply("r1", "t", WEEK)).await.unwrap();
        resolve(&store, first.inquiry_id, "ben").await;
        let again = store.intake(reply("r2", "t", WEEK)).await.unwrap();
        assert!(again.reopened && !again.opened && !again.duplicate);
        assert_eq!(again.inquiry, first.inquiry, "the same reference");
        let d = detail(&store, &first.inquiry).await;
        assert_eq!(d.inquiry.status, crate::inquiry::Status::Open);
        assert_eq!(
            d.inquiry.assignee.as_deref(),
            Some("ben"),
            "kept for routing"
        );
        assert_eq!(d.messages.len(), 2);
        let reopened = d.events.iter().find(|e| e.kind == "reopened").unwrap();
        assert_eq!(reopened.detail["provider_id"], "r2");
        assert_eq!(reopened.detail["via"], "thread");
        assert!(reopened.detail["resolved_at"].is_string());
        assert_eq!(
            store.outbox_counts().await.unwrap().pending,
            1,
            "a reopened inquiry is not acknowledged again"
        );
        // The router gets it back as stored, with who held it.
        let work = store
            .reopened_work(first.inquiry_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(work.assignee.as_deref(), Some("ben"));
        assert_eq!(work.status, crate::inquiry::Status::Open);
        // Idempotent: the same provider message again is a duplicate.
        let dup = store.intake(reply("r2", "t", WEEK)).await.unwrap();
        assert!(dup.duplicate && !dup.reopened);
        // Open now: a further reply simply attaches.
        let more = store.intake(reply("r3", "t", WEEK)).await.unwrap();
        assert!(!more.reopened && !more.opened);
        assert_eq!(more.inquiry, first.inquiry);
        // A quoted reference reopens it too, once resolved again.
        resolve(&store, first.inquiry_id, "ben").await;
        let mut quoted = message("r4", None);
        quoted.reopen_window = WEEK;
        quoted.message.thread.reference = Some(first.inquiry.clone());
        let by_ref = store.intake(quoted).await.unwrap();
        assert!(by_ref.reopened);
        assert_eq!(by_ref.inquiry, first.inquiry);
        let d = detail(&store, &first.inquiry).await;
        let last = d.events.iter().rfind(|e| e.kind == "reopened").unwrap();
        assert_eq!(last.detail["via"], "reference");
        assert!(store.reopened_work(9999).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_reply_after_the_window_opens_a_linked_inquiry() {
        let (_dir, store) = open_temp().await;
        let old = store.intake(reply("l1", "t", WEEK)).await.unwrap();
        resolve(&store, old.inquiry_id, "ben").await;
        resolved_ago(&store, WEEK + Duration::from_secs(60)).await;
        let late = store.intake(reply("l2", "t", WEEK)).await.unwrap();
        assert!(late.opened && !late.reopened);
        assert_ne!(late.inquiry, old.inquiry);
        let new = detail(&store, &late.inquiry).await;
        assert_eq!(new.inquiry.linked_to.as_ref(), Some(&old.inquiry));
        assert_eq!(new.inquiry.status, crate::inquiry::Status::Open);
        assert_eq!(kinds(&new), ["received", "linked", "ack_queued"]);
        assert_eq!(new.events[1].detail["linked_to"], old.inquiry.as_str());
        let was = detail(&store, &old.inquiry).await;
        assert_eq!(was.inquiry.status, crate::inquiry::Status::Resolved);
        assert_eq!(was.linked_from, std::slice::from_ref(&late.inquiry));
        let link = was.events.iter().find(|e| e.kind == "linked").unwrap();
        assert_eq!(link.detail["linked_from"], late.inquiry.as_str());
        assert_eq!(link.detail["provider_id"], "l2");
        assert_eq!(
            store.outbox_counts().await.unwrap().pending,
            2,
            "the linked inquiry is acknowledged as a new one"
        );
        // Later replies to the old thread, by key or by the old reference,
        // continue in the linked inquiry instead of opening more.
        let next = store.intake(reply("l3", "t", WEEK)).await.unwrap();
        assert!(!next.opened && !next.reopened);
        assert_eq!(next.inquiry, late.inquiry);
        let mut quoted = message("l4", None);
        quoted.reopen_window = WEEK;
        quoted.message.thread.reference = Some(old.inquiry.clone());
        let by_ref = store.intake(quoted).await.unwrap();
        assert_eq!(by_ref.inquiry, late.inquiry);
        assert!(!by_ref.opened && !by_ref.reopened);
        assert_eq!(detail(&store, &old.inquiry).await.messages.len(), 1);
    }

    #[tokio::test]
    async fn a_zero_window_never_reopens() {
        let (_dir, store) = open_temp().await;
        let old = store
            .intake(reply("z1", "t", Duration::ZERO))
            .await
            .unwrap();
        resolve(&store, old.inquiry_id, "ops").await;
        let late = store
            .intake(reply("z2", "t", Duration::ZERO))
            .await
            .unwrap();
        assert!(late.opened && !late.reopened);
        let new = detail(&store, &late.inquiry).await;
        assert_eq!(new.inquiry.linked_to.as_ref(), Some(&old.inquiry));
    }

    /// Replies to one resolved inquiry that share a write batch: the first
    /// reopens it (or opens the linked inquiry), the rest attach to that.
    #[tokio::test]
    async fn replies_in_one_batch_reopen_or_link_once() {
        let (_dir, store) = open_temp().await;
        let soon = store.intake(reply("b1", "soon", WEEK)).await.unwrap();
        let late = store.intake(reply("b2", "late", WEEK)).await.unwrap();
        resolve(&store, soon.inquiry_id, "ben").await;
        resolve(&store, late.inquiry_id, "ben").await;
        sqlx::query(
            "UPDATE inquiry_events SET at = at - ?1 WHERE kind = 'resolved' AND inquiry_id = ?2",
        )
        .bind((WEEK * 2).as_millis() as i64)
        .bind(late.inquiry_id)
        .execute(&store.pool)
        .await
        .unwrap();
        let item = |id: &str, thread: &str| MailItem {
            intake: reply(id, thread, WEEK),
            raw: None,
        };
        // Quoting the reference only: no thread key of this batch helps.
        let quoting = |id: &str, r: &crate::inquiry::Reference| {
            let mut intake = message(id, None);
            intake.reopen_window = WEEK;
            intake.message.thread.reference = Some(r.clone());
            MailItem { intake, raw: None }
        };
        let outcomes = store
            .mail_batch(MailBatch {
                channel: "imap/test".into(),
                mailbox: "INBOX".into(),
                checkpoint: MailCheckpoint {
                    uidvalidity: 1,
                    last_uid: 5,
                },
                items: vec![
                    item("b3", "soon"),
                    item("b4", "late"),
                    quoting("b5", &soon.inquiry),
                    quoting("b6", &late.inquiry),
                    item("b3", "soon"),
                ],
                quarantine: Vec::new(),
            })
            .await
            .unwrap();
        let flags: Vec<_> = outcomes
            .iter()
            .map(|o| (o.opened, o.reopened, o.duplicate))
            .collect();
        assert_eq!(
            flags,
            [
                (false, true, false),
                (true, false, false),
                (false, false, false),
                (false, false, false),
                (false, false, true),
            ]
        );
        assert_eq!(outcomes[0].inquiry, soon.inquiry);
        assert_eq!(outcomes[2].inquiry, soon.inquiry);
        assert_eq!(outcomes[3].inquiry, outcomes[1].inquiry);
        let was = detail(&store, &soon.inquiry).await;
        assert_eq!(kinds(&was).iter().filter(|k| **k == "reopened").count(), 1);
        let linked = detail(&store, &outcomes[1].inquiry).await;
        assert_eq!(linked.inquiry.linked_to.as_ref(), Some(&late.inquiry));
        assert_eq!(linked.messages.len(), 2);
    }

    #[tokio::test]
    async fn statuses_and_edits_touch_only_known_messages() {
        let (_dir, store) = open_temp().await;
        store.intake(message("e1", None)).await.unwrap();
        let entry = store.claim_due(1).await.unwrap().remove(0);
        store
            .record_delivery(DeliveryRecord {
                outbox_id: entry.id,
                inquiry_id: entry.inquiry_id,
                kind: "ack".into(),
                attempt: 1,
                result: DeliveryResult::Sent {
                    text: "hi".into(),
                    provider_message_id: Some("wamid.1".into()),
                },
            })
            .await
            .unwrap();
        let status = |id: &str| ProviderStatus {
            provider_message_id: id.into(),
            status: "delivered".into(),
            detail: serde_json::json!({}),
        };
        let channel = "generic/test";
        assert_eq!(
            store
                .record_statuses(channel, vec![status("wamid.1"), status("nope")])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .record_statuses("generic/other", vec![status("wamid.1")])
                .await
                .unwrap(),
            0
        );
        let edit = |id: &str, text: &str| MessageEdit {
            provider_id: id.into(),
            text: text.into(),
        };
        assert_eq!(
            store
                .apply_edits(channel, vec![edit("e1", "fixed typo")])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .apply_edits(channel, vec![edit("e1", "fixed typo")])
                .await
                .unwrap(),
            0,
            "same edit again is a no-op"
        );
        assert_eq!(
            store
                .apply_edits(channel, vec![edit("zz", "x")])
                .await
                .unwrap(),
            0
        );
        let detail = store
            .inquiry(entry.reference.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(detail.messages[0].text, "fixed typo");
        assert_eq!(
            detail.outbox[0].provider_status.as_deref(),
            Some("delivered")
        );
        let kinds: Vec<_> = detail.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "received",
                "ack_queued",
                "acknowledged",
                "delivery_status",
                "message_edited"
            ]
        );
    }

    #[tokio::test]
    async fn mail_batches_commit_with_their_checkpoint_which_only_moves_forward() {
        let (_dir, store) = open_temp().await;
        let channel = "imap/test";
        let item = |id: &str| {
            let mut intake = message(id, None);
            intake.message.channel = ChannelId::new(Adapter::Imap, "test");
            MailItem {
                intake,
                raw: Some(format!("raw {id}").into_bytes()),
            }
        };
        let batch = |items: Vec<MailItem>, uidvalidity, last_uid, quarantine| MailBatch {
            channel: channel.into(),
            mailbox: "INBOX".into(),
            checkpoint: MailCheckpoint {
                uidvalidity,
                last_uid,
            },
            items,
            quarantine,
        };
        assert_eq!(store.mail_checkpoint(channel, "INBOX").await.unwrap(), None);
        let poison = Quarantined {
            uid: 3,
            reason: "no headers".into(),
            size: 3,
            raw: Some(b"\x01\x02\x03".to_vec()),
        };
        let outcomes = store
            .mail_batch(batch(
                vec![item("<a@x>"), item("<b@x>")],
                7,
                3,
                vec![poison],
            ))
            .await
            .unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| o.opened));
        let cp = store
            .mail_checkpoint(channel, "INBOX")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((cp.uidvalidity, cp.last_uid), (7, 3));
        assert_eq!(store.quarantine_count(channel).await.unwrap(), 1);
        // An older checkpoint of the same UIDVALIDITY never moves it back;
        // a re-fetched message is a duplicate.
        let again = store
            .mail_batch(batch(vec![item("<a@x>")], 7, 2, Vec::new()))
            .await
            .unwrap();
        assert!(again[0].duplicate);
        let cp = store
            .mail_checkpoint(channel, "INBOX")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cp.last_uid, 3);
        // A new UIDVALIDITY resets it.
        store
            .mail_batch(batch(vec![item("<b@x>"), item("<c@x>")], 9, 2, Vec::new()))
            .await
            .unwrap();
        let cp = store
            .mail_checkpoint(channel, "INBOX")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((cp.uidvalidity, cp.last_uid), (9, 2));
        let raws: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM email_raw")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(raws, 3, "raw bytes kept once per message");
        assert_eq!(store.outbox_counts().await.unwrap().pending, 3);
    }
}
