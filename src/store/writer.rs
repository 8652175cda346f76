//! The single writer: takes every queued job, applies them in one
//! transaction, commits (one fsync), then answers each caller.
//!
//! Batching is what makes durable intake fast: while one batch commits, the
//! next one queues up, so the batch size grows with the load by itself. If a
//! batch fails, its jobs are retried one by one so a single bad job cannot
//! fail its neighbours.
//!
//! The writer is a plain thread with a synchronous connection (rusqlite,
//! or the `postgres` client) and cached statements. A whole batch runs
//! without leaving the thread: with an async driver every statement was a
//! hop to the driver's thread and back, and on a busy 2-core machine each
//! hop waited for a time slice, which made the serial path (and so intake)
//! five times slower. The SQL is shared by both backends (`sql`); what
//! differs is in [`Db`]: how ids are allocated, how outbox entries are
//! claimed, and, with PostgreSQL, the fencing that keeps an instance that
//! lost a lease from writing as if it still held it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{Notify, mpsc, oneshot};

use super::sql::{Conn, Lite, Param, Row};
use super::{
    AckPlan, DeliveryRecord, DeliveryResult, Intake, IntakeOutcome, MailBatch, OutboxEntry,
    StoreError, to_ms,
};
use crate::inquiry::{MessageEdit, ProviderStatus, Reference, Status};
use crate::routing::Effect;

pub(super) enum Job {
    Intake(
        Box<Intake>,
        oneshot::Sender<Result<IntakeOutcome, StoreError>>,
    ),
    Delivery(DeliveryRecord, oneshot::Sender<Result<(), StoreError>>),
    /// Mail with its mailbox checkpoint (and quarantined mail), one transaction.
    Mail(
        Box<MailBatch>,
        oneshot::Sender<Result<Vec<IntakeOutcome>, StoreError>>,
    ),
    /// Reads due outbox entries. It runs here, after the batch's writes,
    /// so it never sees an entry as pending whose delivery was just recorded.
    Claim {
        limit: usize,
        /// How many due entries to read: `limit` plus those in flight.
        scan: usize,
        tx: oneshot::Sender<Result<Vec<OutboxEntry>, StoreError>>,
    },
    Statuses {
        channel: String,
        statuses: Vec<ProviderStatus>,
        tx: oneshot::Sender<Result<usize, StoreError>>,
    },
    Edits {
        channel: String,
        edits: Vec<MessageEdit>,
        tx: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// The router's effects of one round, all or nothing, with the
    /// details of its events already rendered (in event order).
    Routing(
        Vec<Effect>,
        Vec<String>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    /// Process what is queued before this, then stop.
    Stop,
}

/// What one job produced, in job order.
enum Output {
    Intake(IntakeOutcome),
    Mail(Vec<IntakeOutcome>),
    Done,
    Claimed(Vec<OutboxEntry>),
    Count(usize),
    /// Routing written; `true` if it queued notifications.
    Routed(bool),
}

/// Opens the writer's connection to `path` and starts its thread. The
/// returned receiver fires when the writer has committed its last batch.
/// Jobs queued before a [`Job::Stop`] are all processed.
pub(super) fn spawn(
    path: &Path,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    cache_kib: u32,
    outbox_wake: Arc<Notify>,
    in_flight: Arc<Mutex<HashSet<i64>>>,
) -> Result<oneshot::Receiver<()>, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Durability comes from the syncer's fdatasync of the WAL, which
    // answers callers; NORMAL keeps the WAL safe from corruption meanwhile.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints run on their own thread (see `checkpointer`), so commits
    // only append to the WAL; this is a backstop should that thread fall behind.
    conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
    // Negative: KiB. Intake touches the tail of each table and index; the
    // cache need not hold the database (`store.cache_kib`).
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
    conn.set_prepared_statement_cache_capacity(64);
    let last_id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM inquiries", [], |r| {
        r.get(0)
    })?;
    let (synced, to_answer) = std::sync::mpsc::channel();
    let mut writer = Writer {
        db: Db::Sqlite {
            conn,
            texts: HashMap::new(),
            next_inquiry_id: last_id + 1,
        },
        synced,
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let syncer = Syncer {
        wal: Some(PathBuf::from(wal)),
        outbox_wake,
        in_flight,
    };
    let checkpoints = Connection::open(path)?;
    checkpoints.busy_timeout(Duration::from_secs(1))?;
    let (done_tx, done_rx) = oneshot::channel();
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("switchboard-checkpoint".into())
        .spawn(move || checkpointer(checkpoints, stopped))
        .map_err(StoreError::Thread)?;
    std::thread::Builder::new()
        .name("switchboard-sync".into())
        .spawn(move || {
            syncer.run(to_answer);
            drop(stop_checkpoints);
            let _ = done_tx.send(());
        })
        .map_err(StoreError::Thread)?;
    std::thread::Builder::new()
        .name("switchboard-writer".into())
        // Dropping the writer closes the syncer's queue once it is drained.
        .spawn(move || writer.run(rx, max_batch))
        .map_err(StoreError::Thread)?;
    Ok(done_rx)
}

/// Starts the writer thread on a PostgreSQL database. Commits are durable
/// when PostgreSQL answers them, so the syncer only answers callers.
pub(super) fn spawn_postgres(
    target: super::postgres::PgTarget,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    outbox_wake: Arc<Notify>,
    in_flight: Arc<Mutex<HashSet<i64>>>,
) -> Result<oneshot::Receiver<()>, StoreError> {
    let (synced, to_answer) = std::sync::mpsc::channel();
    let mut writer = Writer {
        db: Db::Postgres(Box::new(super::postgres::Writer::new(target))),
        synced,
    };
    let syncer = Syncer {
        wal: None,
        outbox_wake,
        in_flight,
    };
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("switchboard-answer".into())
        .spawn(move || {
            syncer.run(to_answer);
            let _ = done_tx.send(());
        })
        .map_err(StoreError::Thread)?;
    std::thread::Builder::new()
        .name("switchboard-writer".into())
        .spawn(move || writer.run(rx, max_batch))
        .map_err(StoreError::Thread)?;
    Ok(done_rx)
}

/// Copies committed WAL frames into the database file in the background.
/// A PASSIVE checkpoint never blocks the writer; when SQLite checkpointed
/// inside a commit instead, every few commits paid for copying and syncing
/// thousands of pages while intake waited.
fn checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    const INTERVAL: Duration = Duration::from_millis(200);
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(INTERVAL) {
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "background WAL checkpoint failed");
        }
    }
    // A final full checkpoint leaves a tidy database file at shutdown.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

struct Writer {
    db: Db,
    /// Committed batches on their way to the syncer.
    synced: std::sync::mpsc::Sender<Committed>,
}

/// The writer's database and what differs between the backends.
enum Db {
    Sqlite {
        conn: Connection,
        /// Statement texts in SQLite's placeholder style, by their shared text.
        texts: HashMap<&'static str, String>,
        /// Ids are allocated here, not by SQLite, so references can be
        /// derived before the insert; this writer is the only one.
        next_inquiry_id: i64,
    },
    Postgres(Box<super::postgres::Writer>),
}

/// What a batch needs to know about the backend it runs on.
pub(super) enum Dialect<'a> {
    Sqlite {
        next_inquiry_id: &'a mut i64,
    },
    /// Shared by several instances: ids from a sequence, claims with
    /// leases, writes fenced by the leases this instance holds.
    Postgres {
        instance: &'a str,
        claim_lease_ms: i64,
    },
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
        let mut stop = false;
        while !stop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut batch = Vec::with_capacity(max_batch);
            for job in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                if matches!(job, Job::Stop) {
                    stop = true;
                    continue;
                }
                batch.push(job);
                if batch.len() == max_batch {
                    break;
                }
            }
            if !batch.is_empty() {
                self.process(batch);
            }
        }
        // Later senders see a closed channel and answer `Closed`.
        rx.close();
        while let Ok(job) = rx.try_recv() {
            fail(vec![job], StoreError::Closed);
        }
        tracing::debug!("store writer stopped");
    }

    fn process(&mut self, jobs: Vec<Job>) {
        metrics::histogram!("switchboard_store_batch_size").record(jobs.len() as f64);
        match self.commit_retrying(&jobs) {
            Ok(outcomes) => self.to_sync(jobs, outcomes),
            Err(e) if jobs.len() == 1 => {
                tracing::error!(error = %e, "store commit failed");
                fail(jobs, e);
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = jobs.len(), "batch commit failed; retrying jobs one by one");
                for job in jobs {
                    let single = [job];
                    match self.commit_retrying(&single) {
                        Ok(outcomes) => self.to_sync(single.into(), outcomes),
                        Err(e) => {
                            tracing::error!(error = %e, "store commit failed");
                            fail(single.into(), e);
                        }
                    }
                }
            }
        }
    }

    /// Commits `jobs`, again when another instance got in the way (a
    /// unique key it committed first, a deadlock, a serialization
    /// failure): the next attempt sees what it committed.
    fn commit_retrying(&mut self, jobs: &[Job]) -> Result<Vec<Output>, StoreError> {
        let mut attempt = 0;
        loop {
            let first_id = match &self.db {
                Db::Sqlite {
                    next_inquiry_id, ..
                } => Some(*next_inquiry_id),
                Db::Postgres(_) => None,
            };
            let result = self.commit(jobs);
            if result.is_err()
                && let (
                    Some(first),
                    Db::Sqlite {
                        next_inquiry_id, ..
                    },
                ) = (first_id, &mut self.db)
            {
                *next_inquiry_id = first;
            }
            match result {
                Err(e) if attempt < 3 && e.is_contention() => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "commit met another instance; retrying");
                }
                other => return other,
            }
        }
    }

    /// Hands a committed batch to the syncer, which answers its callers
    /// once the WAL holding it is on disk.
    fn to_sync(&self, jobs: Vec<Job>, outputs: Vec<Output>) {
        if let Err(std::sync::mpsc::SendError((jobs, _))) = self.synced.send((jobs, outputs)) {
            fail(jobs, StoreError::Closed);
        }
    }

    /// Applies `jobs` in one transaction: intakes, then delivery records,
    /// then claims. Returns one output per job, in job order.
    fn commit(&mut self, jobs: &[Job]) -> Result<Vec<Output>, StoreError> {
        let now = to_ms(Utc::now());
        match &mut self.db {
            Db::Sqlite {
                conn,
                texts,
                next_inquiry_id,
            } => {
                let tx = Transaction::new(conn, TransactionBehavior::Immediate)?;
                let mut c = Lite { conn: &tx, texts };
                let dialect = Dialect::Sqlite { next_inquiry_id };
                let outputs = apply(&mut c, dialect, jobs, now)?;
                tx.commit()?;
                Ok(outputs)
            }
            Db::Postgres(pg) => pg.transaction(|c, dialect| apply(c, dialect, jobs, now)),
        }
    }
}

/// Applies `jobs` in one open transaction: intakes, then delivery records,
/// then each job's own writes and reads. Returns one output per job, in
/// job order.
fn apply<C: Conn>(
    tx: &mut C,
    mut dialect: Dialect<'_>,
    jobs: &[Job],
    now: i64,
) -> Result<Vec<Output>, StoreError> {
    {
        let intakes: Vec<&Intake> = jobs
            .iter()
            .flat_map(|j| -> Box<dyn Iterator<Item = &Intake> + '_> {
                match j {
                    Job::Intake(i, _) => Box::new(std::iter::once(&**i)),
                    Job::Mail(b, _) => Box::new(b.items.iter().map(|m| &m.intake)),
                    _ => Box::new(std::iter::empty()),
                }
            })
            .collect();
        for job in jobs {
            fence(tx, &dialect, job, now)?;
        }
        let mut plan = Plan::default();
        if !intakes.is_empty() {
            lock_threads(tx, &dialect, &intakes)?;
            let known = existing_messages(tx, &intakes)?;
            let threads = open_threads(tx, &intakes)?;
            let mut shared_ids = match dialect {
                Dialect::Postgres { .. } => sequence_ids(tx, intakes.len())?,
                Dialect::Sqlite { .. } => Vec::new(),
            }
            .into_iter();
            let mut next_id = || match &mut dialect {
                Dialect::Sqlite { next_inquiry_id } => {
                    let id = **next_inquiry_id;
                    **next_inquiry_id += 1;
                    id
                }
                Dialect::Postgres { .. } => shared_ids.next().expect("one id per intake at most"),
            };
            plan = Plan::build(&intakes, &known, &threads, &mut next_id, now);
            plan.write(tx, &dialect)?;
        }
        let deliveries: Vec<&DeliveryRecord> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Delivery(d, _) => Some(d),
                _ => None,
            })
            .collect();
        if !deliveries.is_empty() {
            write_deliveries(tx, &deliveries, now)?;
        }
        let mut outcomes = plan.outcomes.into_iter();
        let mut outputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            outputs.push(match job {
                Job::Intake(..) => Output::Intake(outcomes.next().expect("one outcome per intake")),
                Job::Mail(batch, _) => {
                    write_mail(tx, batch, now)?;
                    Output::Mail(outcomes.by_ref().take(batch.items.len()).collect())
                }
                Job::Delivery(..) | Job::Stop => Output::Done,
                Job::Claim { scan, .. } => Output::Claimed(due_outbox(tx, &dialect, now, *scan)?),
                Job::Statuses {
                    channel, statuses, ..
                } => Output::Count(write_statuses(tx, channel, statuses, now)?),
                Job::Edits { channel, edits, .. } => {
                    Output::Count(write_edits(tx, channel, edits, now)?)
                }
                Job::Routing(effects, details, _) => {
                    Output::Routed(super::routing::write(tx, effects, details, now)?)
                }
            });
        }
        Ok(outputs)
    }
}

/// With PostgreSQL, a job that only the holder of a lease may write (the
/// router's decisions, a mailbox's checkpoint) checks in its transaction
/// that this instance still holds it, and keeps it from changing hands
/// until the commit: an instance that stalled past its lease cannot
/// overwrite what its successor decided.
fn fence<C: Conn>(
    tx: &mut C,
    dialect: &Dialect<'_>,
    job: &Job,
    now: i64,
) -> Result<(), StoreError> {
    let Dialect::Postgres { instance, .. } = dialect else {
        return Ok(());
    };
    let lease = match job {
        Job::Routing(..) => super::lease::ROUTER.to_owned(),
        Job::Mail(batch, _) => super::lease::mailbox(&batch.channel, &batch.mailbox),
        _ => return Ok(()),
    };
    let held = tx.query_opt(
        "SELECT holder FROM leases WHERE name = $1 AND holder = $2 AND expires_at > $3 FOR SHARE",
        &[&lease, instance, &now],
        |r| r.text(0),
    )?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseLost(lease)),
    }
}

/// With PostgreSQL, another instance may be taking a reply to the same
/// thread, or a message from the same customer, at this moment: a
/// transaction-scoped advisory lock per key (taken in one order, so two
/// batches cannot deadlock) makes the second wait and then see the first.
fn lock_threads<C: Conn>(
    tx: &mut C,
    dialect: &Dialect<'_>,
    intakes: &[&Intake],
) -> Result<(), StoreError> {
    if !matches!(dialect, Dialect::Postgres { .. }) {
        return Ok(());
    }
    let mut keys: Vec<i64> = intakes
        .iter()
        .flat_map(|i| {
            let t = &i.message.thread;
            t.refers_to
                .iter()
                .chain(&t.provides)
                .cloned()
                .chain(follow_up_key(i).map(|(c, ch)| format!("{ch}\u{1f}{c}")))
                .collect::<Vec<_>>()
        })
        .map(|k| lock_key(&k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        tx.query_opt("SELECT pg_advisory_xact_lock($1)", &[&k], |_| Ok(()))?;
    }
    Ok(())
}

/// A stable 64-bit key for an advisory lock (FNV-1a).
fn lock_key(text: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// `n` ids from the shared sequence for inquiries this batch may open.
/// Ids a batch does not use (duplicates, replies) become gaps, never reuse.
fn sequence_ids<C: Conn>(tx: &mut C, n: usize) -> Result<Vec<i64>, StoreError> {
    tx.query(
        "SELECT nextval('inquiry_ids') FROM generate_series(1, $1::bigint)",
        &[&(n as i64)],
        |r| r.int(0),
    )
}

/// Makes committed batches durable and answers their callers.
///
/// The writer commits with `synchronous=NORMAL` (SQLite writes the WAL
/// frames but does not fsync them) and moves on to the next batch while
/// this thread runs one `fdatasync` of the WAL for every batch committed
/// so far. Frames are checksummed in order, so after a crash SQLite
/// recovers exactly the transactions whose frames reached the disk: every
/// caller answered here is durable, and the fsync of one batch overlaps
/// the work of the next.
struct Syncer {
    /// SQLite's WAL file; `None` with PostgreSQL, whose commit is durable.
    wal: Option<PathBuf>,
    outbox_wake: Arc<Notify>,
    /// Outbox ids handed out and not yet recorded. Only this thread adds
    /// to it and removes recorded ones, in commit order, so a claim can
    /// never see a stale "pending".
    in_flight: Arc<Mutex<HashSet<i64>>>,
}

type Committed = (Vec<Job>, Vec<Output>);

impl Syncer {
    fn run(&self, rx: std::sync::mpsc::Receiver<Committed>) {
        while let Ok(first) = rx.recv() {
            let group: Vec<Committed> = std::iter::once(first).chain(rx.try_iter()).collect();
            metrics::histogram!("switchboard_store_sync_group").record(group.len() as f64);
            match self.sync() {
                Ok(()) => {
                    for (jobs, outputs) in group {
                        self.answer(jobs, outputs);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot sync the WAL; answering failure");
                    for (jobs, _) in group {
                        fail(jobs, StoreError::Sync(e.kind().to_string()));
                    }
                }
            }
        }
    }

    fn sync(&self) -> std::io::Result<()> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        // Opened per sync: fsync applies to the file, whichever descriptor.
        std::fs::OpenOptions::new()
            .write(true)
            .open(wal)?
            .sync_data()
    }

    fn answer(&self, jobs: Vec<Job>, outputs: Vec<Output>) {
        let mut wake = false;
        let mut in_flight = self.in_flight.lock().expect("in_flight lock");
        for job in &jobs {
            if let Job::Delivery(record, _) = job {
                in_flight.remove(&record.outbox_id);
            }
        }
        for (job, output) in jobs.into_iter().zip(outputs) {
            match (job, output) {
                (Job::Intake(intake, tx), Output::Intake(outcome)) => {
                    wake |= outcome.opened && matches!(intake.ack, AckPlan::Send { .. });
                    let _ = tx.send(Ok(outcome));
                }
                (Job::Mail(batch, tx), Output::Mail(outcomes)) => {
                    wake |= batch
                        .items
                        .iter()
                        .zip(&outcomes)
                        .any(|(i, o)| o.opened && matches!(i.intake.ack, AckPlan::Send { .. }));
                    let _ = tx.send(Ok(outcomes));
                }
                (Job::Delivery(_, tx), _) => {
                    let _ = tx.send(Ok(()));
                }
                (Job::Claim { tx, limit, .. }, Output::Claimed(entries)) => {
                    let claimed: Vec<OutboxEntry> = entries
                        .into_iter()
                        .filter(|e| in_flight.insert(e.id))
                        .take(limit)
                        .collect();
                    if let Err(Ok(unwanted)) = tx.send(Ok(claimed)) {
                        // The claimant is gone: nobody will deliver these.
                        for e in unwanted {
                            in_flight.remove(&e.id);
                        }
                    }
                }
                (Job::Statuses { tx, .. } | Job::Edits { tx, .. }, Output::Count(n)) => {
                    let _ = tx.send(Ok(n));
                }
                (Job::Routing(_, _, tx), Output::Routed(notified)) => {
                    wake |= notified;
                    let _ = tx.send(Ok(()));
                }
                _ => unreachable!("outputs follow job order"),
            }
        }
        if wake {
            self.outbox_wake.notify_one();
        }
    }
}

fn fail(jobs: Vec<Job>, e: StoreError) {
    let text = e.to_string();
    let mut first = Some(e);
    for job in jobs {
        let err = first
            .take()
            .unwrap_or_else(|| StoreError::SameFailure(text.clone()));
        match job {
            Job::Intake(_, tx) => {
                let _ = tx.send(Err(err));
            }
            Job::Delivery(_, tx) => {
                let _ = tx.send(Err(err));
            }
            Job::Mail(_, tx) => {
                let _ = tx.send(Err(err));
            }
            Job::Claim { tx, .. } => {
                let _ = tx.send(Err(err));
            }
            Job::Statuses { tx, .. } | Job::Edits { tx, .. } => {
                let _ = tx.send(Err(err));
            }
            Job::Routing(_, _, tx) => {
                let _ = tx.send(Err(err));
            }
            Job::Stop => {}
        }
    }
}

/// `(channel, provider_id)` → (inquiry id, reference) for messages already stored.
type Known = HashMap<(String, String), (i64, Reference)>;

fn existing_messages<C: Conn>(tx: &mut C, intakes: &[&Intake]) -> Result<Known, StoreError> {
    let mut known = Known::new();
    for i in intakes {
        let channel = i.message.channel.to_string();
        let found = tx.query_opt(
            "SELECT m.inquiry_id, i.reference FROM messages m JOIN inquiries i ON i.id = m.inquiry_id \
             WHERE m.channel = $1 AND m.provider_id = $2",
            &[&channel, &i.message.provider_id],
            |r| Ok((r.int(0)?, Reference(r.text(1)?))),
        )?;
        if let Some(found) = found {
            known.insert((channel, i.message.provider_id.clone()), found);
        }
    }
    Ok(known)
}

/// An earlier inquiry a message threads onto, as the store has it.
#[derive(Debug, Clone)]
struct Thread {
    id: i64,
    reference: Reference,
    created_at: i64,
    /// When it was last resolved; `None` while it is not resolved.
    resolved_at: Option<i64>,
}

impl Thread {
    /// An inquiry that is open (or was just opened or reopened).
    fn open(id: i64, reference: Reference) -> Thread {
        Thread {
            id,
            reference,
            created_at: 0,
            resolved_at: None,
        }
    }
}

/// The columns [`thread_row`] reads. A resolved inquiry's resolution time
/// is that of its latest `resolved` event (its `updated_at` for rows
/// without one: nothing else touches a resolved inquiry); open ones skip
/// the lookup.
macro_rules! thread_columns {
    () => {
        "i.id, i.reference, i.status, i.created_at, CASE WHEN i.status = 'resolved' THEN \
         COALESCE((SELECT MAX(e.at) FROM inquiry_events e WHERE e.inquiry_id = i.id \
         AND e.kind = 'resolved'), i.updated_at) END"
    };
}

fn thread_row(r: &dyn Row) -> Result<Thread, StoreError> {
    let resolved = r.text(2)? == Status::Resolved.as_str();
    Ok(Thread {
        id: r.int(0)?,
        reference: Reference(r.text(1)?),
        created_at: r.int(3)?,
        resolved_at: if resolved { Some(r.int(4)?) } else { None },
    })
}

/// Bound on the newer linked inquiries followed from the one a reply names
/// (a guard, not an expected depth: each link is one late reply).
const MAX_LINK_HOPS: usize = 16;

/// The inquiry that continues `thread` now: a resolved inquiry that a late
/// reply already continued in a new linked inquiry hands later replies on
/// to that one (so two late replies to an old mail thread do not open two
/// inquiries), unless it was itself reopened and resolved again since.
fn latest<C: Conn>(tx: &mut C, mut thread: Thread) -> Result<Thread, StoreError> {
    for _ in 0..MAX_LINK_HOPS {
        let Some(resolved_at) = thread.resolved_at else {
            break;
        };
        let newer = tx.query_opt(
            concat!(
                "SELECT ",
                thread_columns!(),
                " FROM inquiries i WHERE i.linked_to = $1 ORDER BY i.id DESC LIMIT 1"
            ),
            &[&thread.id],
            thread_row,
        )?;
        let Some(newer) = newer else {
            break;
        };
        if newer.created_at < resolved_at {
            break;
        }
        thread = newer;
    }
    Ok(thread)
}

/// Thread keys and quoted references → the inquiry they name: for a key,
/// the newest open inquiry holding it, else the newest resolved one; a
/// resolved inquiry is followed to the newer inquiry linked to it, if any.
#[derive(Default)]
struct Threads {
    by_key: HashMap<String, Thread>,
    by_reference: HashMap<String, Thread>,
    /// `(customer_key, channel)` → newest open inquiry and its last activity.
    by_customer: HashMap<(String, String), (i64, Reference, i64)>,
}

/// The `(customer_key, channel)` a message may follow up on, if its
/// channel gathers follow-ups.
fn follow_up_key(intake: &Intake) -> Option<(String, String)> {
    let m = &intake.message;
    m.thread.follow_up_window?;
    Some((m.customer_key.clone()?, m.channel.to_string()))
}

fn open_threads<C: Conn>(tx: &mut C, intakes: &[&Intake]) -> Result<Threads, StoreError> {
    let mut threads = Threads::default();
    for key in intakes
        .iter()
        .flat_map(|i| i.message.thread.refers_to.iter())
    {
        if threads.by_key.contains_key(key) {
            continue;
        }
        let found = tx.query_opt(
            concat!(
                "SELECT ",
                thread_columns!(),
                " FROM thread_keys t JOIN inquiries i ON i.id = t.inquiry_id WHERE t.key = $1 \
                 ORDER BY CASE WHEN i.status = 'resolved' THEN 1 ELSE 0 END, i.id DESC LIMIT 1"
            ),
            &[key],
            thread_row,
        )?;
        if let Some(found) = found {
            let current = latest(tx, found)?;
            threads.by_key.insert(key.clone(), current);
        }
    }
    for r in intakes
        .iter()
        .filter_map(|i| i.message.thread.reference.as_ref())
    {
        let Some(wanted) = Reference::to_id(&r.0) else {
            continue;
        };
        if threads.by_reference.contains_key(&r.0) {
            continue;
        }
        let found = tx.query_opt(
            concat!(
                "SELECT ",
                thread_columns!(),
                " FROM inquiries i WHERE i.id = $1"
            ),
            &[&wanted],
            thread_row,
        )?;
        if let Some(found) = found {
            let current = latest(tx, found)?;
            threads.by_reference.insert(r.0.clone(), current);
        }
    }
    for key in intakes.iter().filter_map(|i| follow_up_key(i)) {
        let found = tx.query_opt(
            "SELECT id, reference, updated_at FROM inquiries WHERE customer_key = $1 AND channel = $2 \
             AND status <> 'resolved' ORDER BY id DESC LIMIT 1",
            &[&key.0, &key.1],
            |r| Ok((r.int(0)?, Reference(r.text(1)?), r.int(2)?)),
        )?;
        if let Some(found) = found {
            threads.by_customer.insert(key, found);
        }
    }
    Ok(threads)
}

/// What earlier messages of the same batch did to the inquiries the store
/// knew: later messages must see it.
#[derive(Default)]
struct BatchThreads {
    /// Resolved inquiries reopened in this batch.
    reopened: HashSet<i64>,
    /// Resolved inquiry → the new inquiry linked to it in this batch.
    successors: HashMap<i64, Thread>,
}

impl BatchThreads {
    fn current(&self, thread: &Thread) -> Thread {
        if let Some(next) = self.successors.get(&thread.id) {
            return next.clone();
        }
        if self.reopened.contains(&thread.id) {
            return Thread::open(thread.id, thread.reference.clone());
        }
        thread.clone()
    }
}

/// The rows one batch of intakes writes, decided in memory first.
#[derive(Default)]
struct Plan<'a> {
    outcomes: Vec<IntakeOutcome>,
    /// New inquiries, with the resolved inquiry each continues, if any.
    inquiries: Vec<(i64, &'a Intake, Option<i64>)>,
    messages: Vec<(i64, &'a Intake)>,
    thread_keys: Vec<(String, i64)>,
    events: Vec<(i64, &'static str, String)>,
    outbox: Vec<(i64, &'a Intake, String)>,
    touched: Vec<i64>,
    /// Resolved inquiries a reply reopens.
    reopened: Vec<i64>,
    now: i64,
}

/// Where a message goes, once the thread it names (if any) is known.
enum Placement {
    /// Onto an open inquiry.
    Attach(i64, Reference),
    /// Onto a resolved inquiry, reopening it.
    Reopen(Thread),
    /// A new inquiry, continuing a resolved one when given.
    Open(Option<Thread>),
}

impl<'a> Plan<'a> {
    fn build(
        intakes: &[&'a Intake],
        known: &Known,
        threads: &Threads,
        next_id: &mut dyn FnMut() -> i64,
        now: i64,
    ) -> Plan<'a> {
        let mut plan = Plan {
            now,
            ..Plan::default()
        };
        // Later messages in this batch can find what earlier ones created.
        let mut batch_known: Known = HashMap::new();
        let mut batch_keys: HashMap<String, (i64, Reference)> = HashMap::new();
        let mut batch_customers: HashMap<(String, String), (i64, Reference, i64)> = HashMap::new();
        let mut batch_threads = BatchThreads::default();
        for &intake in intakes {
            let m = &intake.message;
            let key = (m.channel.to_string(), m.provider_id.clone());
            if let Some((id, reference)) = known.get(&key).or_else(|| batch_known.get(&key)) {
                plan.outcomes.push(IntakeOutcome {
                    inquiry: reference.clone(),
                    inquiry_id: *id,
                    duplicate: true,
                    opened: false,
                    reopened: false,
                    language: None,
                });
                continue;
            }
            let by_reference = m
                .thread
                .reference
                .as_ref()
                .and_then(|r| threads.by_reference.get(&r.0))
                .map(|t| batch_threads.current(t));
            let by_key: Vec<Thread> = m
                .thread
                .refers_to
                .iter()
                .filter_map(|k| match batch_keys.get(k) {
                    Some((id, reference)) => Some(Thread::open(*id, reference.clone())),
                    None => threads.by_key.get(k).map(|t| batch_threads.current(t)),
                })
                .collect();
            let by_customer = || {
                let key = follow_up_key(intake)?;
                let window = m.thread.follow_up_window?.as_millis() as i64;
                let (id, reference, active) = batch_customers
                    .get(&key)
                    .or_else(|| threads.by_customer.get(&key))?;
                (*active >= now - window).then(|| Thread::open(*id, reference.clone()))
            };
            // An open inquiry found any way wins over a resolved one, so
            // messages thread onto open inquiries exactly as before.
            let named = || {
                by_reference
                    .iter()
                    .map(|t| (t, "reference"))
                    .chain(by_key.iter().map(|t| (t, "thread")))
            };
            let found = named()
                .find(|(t, _)| t.resolved_at.is_none())
                .map(|(t, via)| (t.clone(), via))
                .or_else(|| by_customer().map(|t| (t, "follow_up")))
                .or_else(|| named().next().map(|(t, via)| (t.clone(), via)));
            let window = i64::try_from(intake.reopen_window.as_millis()).unwrap_or(i64::MAX);
            let placement = match &found {
                None => Placement::Open(None),
                Some((t, _)) => match t.resolved_at {
                    None => Placement::Attach(t.id, t.reference.clone()),
                    Some(at) if window > 0 && at >= now.saturating_sub(window) => {
                        Placement::Reopen(t.clone())
                    }
                    Some(_) => Placement::Open(Some(t.clone())),
                },
            };
            let via = found.as_ref().map(|(_, via)| *via);
            let channel = m.channel.to_string();
            let message = MessageRef {
                channel: &channel,
                provider_id: &m.provider_id,
            };
            // The rare reopen and link paths extend this detail.
            let detail = || serde_json::to_value(&message).unwrap_or_default();
            let resolution = |t: &Thread| {
                serde_json::json!({
                    "via": via,
                    "resolved_at": t.resolved_at.map(|at| super::from_ms(at).to_rfc3339()),
                    "reopen_window": humantime::format_duration(intake.reopen_window).to_string(),
                })
            };
            let (id, reference, opened, reopened) = match placement {
                Placement::Attach(id, reference) => {
                    plan.touched.push(id);
                    plan.events.push((id, "message_added", json_text(&message)));
                    (id, reference, false, false)
                }
                Placement::Reopen(t) => {
                    let mut why = resolution(&t);
                    why["channel"] = channel.as_str().into();
                    why["provider_id"] = m.provider_id.as_str().into();
                    tracing::info!(inquiry = %t.reference, via, "a reply reopens a resolved inquiry");
                    plan.reopened.push(t.id);
                    plan.events.push((t.id, "reopened", why.to_string()));
                    batch_threads.reopened.insert(t.id);
                    (t.id, t.reference, false, true)
                }
                Placement::Open(previous) => {
                    let id = next_id();
                    let reference = Reference::from_id(id);
                    plan.inquiries
                        .push((id, intake, previous.as_ref().map(|t| t.id)));
                    plan.events.push((id, "received", json_text(&message)));
                    if let Some(t) = previous {
                        let mut to = resolution(&t);
                        to["linked_to"] = serde_json::json!(t.reference);
                        plan.events.push((id, "linked", to.to_string()));
                        let mut from = detail();
                        from["linked_from"] = serde_json::json!(reference);
                        plan.events.push((t.id, "linked", from.to_string()));
                        tracing::info!(
                            inquiry = %reference,
                            linked_to = %t.reference,
                            via,
                            "a reply to an inquiry resolved before the reopen window opens a linked one"
                        );
                        batch_threads
                            .successors
                            .insert(t.id, Thread::open(id, reference.clone()));
                    }
                    plan.open(id, intake);
                    (id, reference, true, false)
                }
            };
            for k in &m.thread.provides {
                batch_keys.insert(k.clone(), (id, reference.clone()));
                plan.thread_keys.push((k.clone(), id));
            }
            batch_known.insert(key, (id, reference.clone()));
            if let Some(customer) = follow_up_key(intake) {
                batch_customers.insert(customer, (id, reference.clone(), now));
            }
            plan.messages.push((id, intake));
            plan.outcomes.push(IntakeOutcome {
                inquiry: reference,
                inquiry_id: id,
                duplicate: false,
                opened,
                reopened,
                language: None,
            });
        }
        plan
    }

    /// The classification and acknowledgement events (and the outbox
    /// entry) of a newly opened inquiry.
    fn open(&mut self, id: i64, intake: &'a Intake) {
        let m = &intake.message;
        if !intake.classification.trace.is_empty() {
            self.events
                .push((id, "classified", intake.classification.trace.clone()));
        }
        match &intake.ack {
            AckPlan::Send { template, language } => {
                let payload = AckPayload {
                    in_reply_to: &m.provider_id,
                    language,
                    reply_context: &m.reply_context,
                    template,
                };
                self.outbox.push((id, intake, json_text(&payload)));
                let queued = AckQueued { language, template };
                self.events.push((id, "ack_queued", json_text(&queued)));
            }
            AckPlan::Skip { reason } => {
                let skipped = serde_json::json!({ "reason": reason });
                self.events.push((id, "ack_skipped", skipped.to_string()));
            }
        }
    }

    fn write<C: Conn>(&self, tx: &mut C, dialect: &Dialect<'_>) -> Result<(), StoreError> {
        let now = self.now;
        for (id, intake, linked_to) in &self.inquiries {
            let m = &intake.message;
            let c = &intake.classification;
            tx.exec(
                "INSERT INTO inquiries (id, reference, channel, medium, status, urgency, customer_name, \
                 customer_email, customer_phone, customer_handle, customer_key, subject, language, \
                 created_at, updated_at, queue, requirements, sla_due_at, waiting_since, linked_to) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $14, $19)",
                &[
                    id,
                    &Reference::from_id(*id).0,
                    &m.channel.to_string(),
                    &m.medium.as_str(),
                    &Status::Open.as_str(),
                    &c.urgency.as_str(),
                    &m.customer.name,
                    &m.customer.email,
                    &m.customer.phone,
                    &m.customer.handle,
                    &m.customer_key,
                    &m.subject,
                    &m.language,
                    &to_ms(m.received_at),
                    &now,
                    &c.requirements.queue.as_deref(),
                    &serde_json::to_string(&c.requirements).unwrap_or_default(),
                    &c.sla_due_at.map(to_ms),
                    linked_to,
                ],
            )?;
        }
        for (id, intake) in &self.messages {
            let m = &intake.message;
            tx.exec(
                "INSERT INTO messages (inquiry_id, channel, provider_id, received_at, sender, subject, body, \
                 language, attachments, metadata, reply_context) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    id,
                    &m.channel.to_string(),
                    &m.provider_id,
                    &to_ms(m.received_at),
                    &serde_json::to_string(&m.customer).unwrap_or_default(),
                    &m.subject,
                    &m.text,
                    &m.language,
                    &serde_json::to_string(&m.attachments).unwrap_or_else(|_| "[]".into()),
                    &m.metadata.to_string(),
                    &m.reply_context.to_string(),
                ],
            )?;
        }
        for (key, id) in &self.thread_keys {
            tx.exec(
                "INSERT INTO thread_keys (key, inquiry_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[key, id],
            )?;
        }
        for (id, intake, payload) in &self.outbox {
            tx.exec(
                "INSERT INTO outbox (inquiry_id, kind, channel, payload, status, attempts, next_attempt_at, created_at) \
                 VALUES ($1, 'ack', $2, $3, 'pending', 0, $4, $4)",
                &[id, &intake.message.channel.to_string(), payload, &now],
            )?;
        }
        insert_events(tx, &self.events, now)?;
        for id in &self.touched {
            tx.exec(
                "UPDATE inquiries SET updated_at = $1 WHERE id = $2",
                &[&now, id],
            )?;
        }
        // Back in the queue from now; the assignee stays, so the router
        // (and a restart's snapshot) can prefer whoever held it before.
        for id in &self.reopened {
            tx.exec(
                "UPDATE inquiries SET status = $1, waiting_since = $2, updated_at = $2 \
                 WHERE id = $3 AND status = 'resolved'",
                &[&Status::Open.as_str(), &now, id],
            )?;
        }
        if matches!(dialect, Dialect::Postgres { .. }) {
            // The routing leader may run on another instance: it takes new
            // inquiries from this queue (see `store::cluster`).
            let opened = self.inquiries.iter().map(|(id, ..)| id);
            for id in opened.chain(&self.reopened) {
                tx.exec(
                    "INSERT INTO routing_inbox (inquiry_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[id],
                )?;
            }
        }
        Ok(())
    }
}

/// The checkpoint, quarantined mail and kept raw bytes of a mail batch.
/// A checkpoint only moves forward within one UIDVALIDITY.
fn write_mail<C: Conn>(tx: &mut C, batch: &MailBatch, now: i64) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO email_checkpoints (channel, mailbox, uidvalidity, last_uid, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, mailbox) DO UPDATE SET \
         last_uid = CASE WHEN email_checkpoints.uidvalidity <> excluded.uidvalidity \
             OR excluded.last_uid > email_checkpoints.last_uid \
             THEN excluded.last_uid ELSE email_checkpoints.last_uid END, \
         uidvalidity = excluded.uidvalidity, updated_at = excluded.updated_at",
        &[
            &batch.channel,
            &batch.mailbox,
            &i64::from(batch.checkpoint.uidvalidity),
            &i64::from(batch.checkpoint.last_uid),
            &now,
        ],
    )?;
    for q in &batch.quarantine {
        tx.exec(
            "INSERT INTO email_quarantine (channel, mailbox, uidvalidity, uid, reason, size, raw, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &[
                &batch.channel,
                &batch.mailbox,
                &i64::from(batch.checkpoint.uidvalidity),
                &i64::from(q.uid),
                &q.reason,
                &i64::try_from(q.size).unwrap_or(i64::MAX),
                &q.raw,
                &now,
            ],
        )?;
    }
    for item in &batch.items {
        if let Some(bytes) = &item.raw {
            let m = &item.intake.message;
            tx.exec(
                "INSERT INTO email_raw (channel, provider_id, raw) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&m.channel.to_string(), &m.provider_id, bytes],
            )?;
        }
    }
    Ok(())
}

pub(super) fn insert_events<C: Conn, D: Param>(
    tx: &mut C,
    events: &[(i64, &'static str, D)],
    now: i64,
) -> Result<(), StoreError> {
    for (id, kind, detail) in events {
        tx.exec(
            "INSERT INTO inquiry_events (inquiry_id, at, kind, detail) VALUES ($1, $2, $3, $4)",
            &[id, &now, kind, detail],
        )?;
    }
    Ok(())
}

fn write_deliveries<C: Conn>(
    tx: &mut C,
    records: &[&DeliveryRecord],
    now: i64,
) -> Result<(), StoreError> {
    let mut events = Vec::with_capacity(records.len());
    for r in records {
        let attempt = r.attempt;
        let (status, next_at, error, done_at, provider_id, kind, detail) = match &r.result {
            DeliveryResult::Sent {
                text,
                provider_message_id,
            } => (
                "sent",
                now,
                None,
                Some(now),
                provider_message_id.clone(),
                if r.kind == "ack" {
                    "acknowledged"
                } else {
                    "notified"
                },
                json_text(&Delivered {
                    attempt,
                    outbox_id: r.outbox_id,
                    text,
                }),
            ),
            DeliveryResult::Retry {
                error,
                next_attempt_at,
            } => (
                "pending",
                to_ms(*next_attempt_at),
                Some(error.clone()),
                None,
                None,
                "delivery_retry",
                serde_json::json!({
                    "outbox_id": r.outbox_id, "attempt": attempt, "error": error,
                    "next_attempt_at": next_attempt_at.to_rfc3339(),
                })
                .to_string(),
            ),
            DeliveryResult::Failed { error } => (
                "failed",
                now,
                Some(error.clone()),
                Some(now),
                None,
                "delivery_failed",
                serde_json::json!({ "outbox_id": r.outbox_id, "attempt": attempt, "error": error })
                    .to_string(),
            ),
        };
        // Recording releases the claim: a retry is due at `next_at`.
        tx.exec(
            "UPDATE outbox SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4, done_at = $5, \
             provider_message_id = COALESCE($6, provider_message_id), claimed_until = NULL \
             WHERE id = $7 AND status = 'pending'",
            &[
                &status,
                &i64::from(attempt),
                &next_at,
                &error,
                &done_at,
                &provider_id,
                &r.outbox_id,
            ],
        )?;
        events.push((r.inquiry_id, kind, detail));
    }
    insert_events(tx, &events, now)
}

// Details written for every inquiry are serialized straight from these
// rather than through `serde_json::json!`, whose map of owned values
// cost the writer thread more than the rows themselves. Fields are in
// alphabetical order, as `json!` writes them.

/// A message as the `received` and `message_added` events name it.
#[derive(serde::Serialize)]
struct MessageRef<'a> {
    channel: &'a str,
    provider_id: &'a str,
}

/// An acknowledgement's outbox payload.
#[derive(serde::Serialize)]
struct AckPayload<'a> {
    in_reply_to: &'a str,
    language: &'a str,
    reply_context: &'a serde_json::Value,
    template: &'a str,
}

/// The `ack_queued` event.
#[derive(serde::Serialize)]
struct AckQueued<'a> {
    language: &'a str,
    template: &'a str,
}

/// The `acknowledged` / `notified` event.
#[derive(serde::Serialize)]
struct Delivered<'a> {
    attempt: u32,
    outbox_id: i64,
    text: &'a str,
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn write_statuses<C: Conn>(
    tx: &mut C,
    channel: &str,
    statuses: &[ProviderStatus],
    now: i64,
) -> Result<usize, StoreError> {
    let mut events = Vec::new();
    for st in statuses {
        let row = tx.query_opt(
            "UPDATE outbox SET provider_status = $1 WHERE channel = $2 AND provider_message_id = $3 \
             RETURNING id, inquiry_id",
            &[&st.status, &channel, &st.provider_message_id],
            |r| Ok((r.int(0)?, r.int(1)?)),
        )?;
        match row {
            Some((outbox_id, inquiry_id)) => {
                let detail = serde_json::json!({
                    "outbox_id": outbox_id,
                    "provider_message_id": st.provider_message_id,
                    "status": st.status,
                    "detail": st.detail,
                });
                events.push((inquiry_id, "delivery_status", detail.to_string()));
            }
            None => {
                tracing::debug!(channel, id = %st.provider_message_id, "status for a message we do not know")
            }
        }
    }
    insert_events(tx, &events, now)?;
    Ok(events.len())
}

fn write_edits<C: Conn>(
    tx: &mut C,
    channel: &str,
    edits: &[MessageEdit],
    now: i64,
) -> Result<usize, StoreError> {
    let mut events = Vec::new();
    for edit in edits {
        // Unchanged text writes nothing, so a retried edit is a no-op.
        let row = tx.query_opt(
            "UPDATE messages SET body = $1 WHERE channel = $2 AND provider_id = $3 AND body <> $1 \
             RETURNING inquiry_id",
            &[&edit.text, &channel, &edit.provider_id],
            |r| r.int(0),
        )?;
        if let Some(inquiry_id) = row {
            let detail = serde_json::json!({ "provider_id": edit.provider_id });
            events.push((inquiry_id, "message_edited", detail.to_string()));
        }
    }
    insert_events(tx, &events, now)?;
    Ok(events.len())
}

/// Outbox entries due at `now_ms`, oldest first, with what rendering needs.
/// With PostgreSQL, the entries are also claimed for this instance for a
/// while (skipping those another instance holds): if this instance dies
/// with them, another delivers them once the claim runs out.
fn due_outbox<C: Conn>(
    tx: &mut C,
    dialect: &Dialect<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let map = |r: &dyn super::sql::Row| -> Result<(OutboxEntry, String), StoreError> {
        Ok((
            OutboxEntry {
                id: r.int(0)?,
                inquiry_id: r.int(1)?,
                kind: r.text(2)?,
                channel: r.text(3)?,
                payload: serde_json::Value::Null,
                attempts: r.int(5)?.try_into().unwrap_or(u32::MAX),
                reference: Reference(r.text(6)?),
                customer_name: r.opt_text(7)?,
                subject: r.opt_text(8)?,
            },
            r.text(4)?,
        ))
    };
    let rows = match dialect {
        Dialect::Sqlite { .. } => tx.query(
            "SELECT o.id, o.inquiry_id, o.kind, o.channel, o.payload, o.attempts, i.reference, \
             i.customer_name, i.subject FROM outbox o JOIN inquiries i ON i.id = o.inquiry_id \
             WHERE o.status = 'pending' AND o.next_attempt_at <= $1 ORDER BY o.next_attempt_at, o.id LIMIT $2",
            &[&now_ms, &(limit as i64)],
            map,
        )?,
        Dialect::Postgres {
            instance,
            claim_lease_ms,
        } => tx.query(
            "WITH claimed AS ( \
                 UPDATE outbox SET claimed_by = $3, claimed_until = $4 WHERE id IN ( \
                     SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
                     AND (claimed_until IS NULL OR claimed_until <= $1 OR claimed_by = $3) \
                     ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, inquiry_id, kind, channel, payload, attempts, next_attempt_at) \
             SELECT c.id, c.inquiry_id, c.kind, c.channel, c.payload, c.attempts, i.reference, \
             i.customer_name, i.subject FROM claimed c JOIN inquiries i ON i.id = c.inquiry_id \
             ORDER BY c.next_attempt_at, c.id",
            &[
                &now_ms,
                &(limit as i64),
                instance,
                &(now_ms + claim_lease_ms),
            ],
            map,
        )?,
    };
    rows.into_iter()
        .map(|(mut entry, payload)| {
            entry.payload = serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("outbox {} payload: {e}", entry.id)))?;
            Ok(entry)
        })
        .collect()
}
