//! The single writer: takes every queued job, applies them in one
//! transaction, commits (one fsync), then answers each caller.
//!
//! Batching is what makes durable intake fast: while one batch commits, the
//! next one queues up, so the batch size grows with the load by itself. If a
//! batch fails, its jobs are retried one by one so a single bad job cannot
//! fail its neighbours.
//!
//! The writer is a plain thread with a synchronous rusqlite connection and
//! cached statements. A whole batch runs without leaving the thread: with
//! an async driver every statement was a hop to the driver's thread and
//! back, and on a busy 2-core machine each hop waited for a time slice,
//! which made the serial path (and so intake) five times slower.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};

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
    /// The router's effects of one round, all or nothing.
    Routing(Vec<Effect>, oneshot::Sender<Result<(), StoreError>>),
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
    conn.pragma_update(None, "cache_size", -32_768)?;
    conn.set_prepared_statement_cache_capacity(64);
    let last_id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM inquiries", [], |r| {
        r.get(0)
    })?;
    let (synced, to_answer) = std::sync::mpsc::channel();
    let mut writer = Writer {
        conn,
        next_inquiry_id: last_id + 1,
        synced,
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let syncer = Syncer {
        wal: PathBuf::from(wal),
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
    conn: Connection,
    /// Ids are allocated here, not by SQLite, so references can be derived
    /// before the insert; this writer is the only one.
    next_inquiry_id: i64,
    /// Committed batches on their way to the syncer.
    synced: std::sync::mpsc::Sender<Committed>,
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
        let first_id = self.next_inquiry_id;
        match self.commit(&jobs) {
            Ok(outcomes) => self.to_sync(jobs, outcomes),
            Err(e) if jobs.len() == 1 => {
                self.next_inquiry_id = first_id;
                tracing::error!(error = %e, "store commit failed");
                fail(jobs, e);
            }
            Err(e) => {
                self.next_inquiry_id = first_id;
                tracing::warn!(error = %e, jobs = jobs.len(), "batch commit failed; retrying jobs one by one");
                for job in jobs {
                    let first_id = self.next_inquiry_id;
                    let single = [job];
                    match self.commit(&single) {
                        Ok(outcomes) => self.to_sync(single.into(), outcomes),
                        Err(e) => {
                            self.next_inquiry_id = first_id;
                            tracing::error!(error = %e, "store commit failed");
                            fail(single.into(), e);
                        }
                    }
                }
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
        let tx = Transaction::new(&mut self.conn, TransactionBehavior::Immediate)?;
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
        let mut plan = Plan::default();
        if !intakes.is_empty() {
            let known = existing_messages(&tx, &intakes)?;
            let threads = open_threads(&tx, &intakes)?;
            plan = Plan::build(&intakes, &known, &threads, &mut self.next_inquiry_id, now);
            plan.write(&tx)?;
        }
        let deliveries: Vec<&DeliveryRecord> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Delivery(d, _) => Some(d),
                _ => None,
            })
            .collect();
        if !deliveries.is_empty() {
            write_deliveries(&tx, &deliveries, now)?;
        }
        let mut outcomes = plan.outcomes.into_iter();
        let mut outputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            outputs.push(match job {
                Job::Intake(..) => Output::Intake(outcomes.next().expect("one outcome per intake")),
                Job::Mail(batch, _) => {
                    write_mail(&tx, batch, now)?;
                    Output::Mail(outcomes.by_ref().take(batch.items.len()).collect())
                }
                Job::Delivery(..) | Job::Stop => Output::Done,
                Job::Claim { scan, .. } => Output::Claimed(due_outbox(&tx, now, *scan)?),
                Job::Statuses {
                    channel, statuses, ..
                } => Output::Count(write_statuses(&tx, channel, statuses, now)?),
                Job::Edits { channel, edits, .. } => {
                    Output::Count(write_edits(&tx, channel, edits, now)?)
                }
                Job::Routing(effects, _) => {
                    Output::Routed(super::routing::write(&tx, effects, now)?)
                }
            });
        }
        tx.commit()?;
        Ok(outputs)
    }
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
    wal: PathBuf,
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
                    tracing::error!(error = %e, wal = %self.wal.display(), "cannot sync the WAL; answering failure");
                    for (jobs, _) in group {
                        fail(jobs, StoreError::Sync(e.kind().to_string()));
                    }
                }
            }
        }
    }

    fn sync(&self) -> std::io::Result<()> {
        // Opened per sync: fsync applies to the file, whichever descriptor.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.wal)?
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
                (Job::Routing(_, tx), Output::Routed(notified)) => {
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
            Job::Routing(_, tx) => {
                let _ = tx.send(Err(err));
            }
            Job::Stop => {}
        }
    }
}

/// `(channel, provider_id)` → (inquiry id, reference) for messages already stored.
type Known = HashMap<(String, String), (i64, Reference)>;

fn existing_messages(conn: &Connection, intakes: &[&Intake]) -> Result<Known, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.inquiry_id, i.reference FROM messages m JOIN inquiries i ON i.id = m.inquiry_id \
         WHERE m.channel = ?1 AND m.provider_id = ?2",
    )?;
    let mut known = Known::new();
    for i in intakes {
        let channel = i.message.channel.to_string();
        let found = stmt
            .query_row(params![channel, i.message.provider_id], |r| {
                Ok((r.get::<_, i64>(0)?, Reference(r.get(1)?)))
            })
            .optional()?;
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

fn thread_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Thread> {
    let resolved = r.get::<_, String>(2)? == Status::Resolved.as_str();
    Ok(Thread {
        id: r.get(0)?,
        reference: Reference(r.get(1)?),
        created_at: r.get(3)?,
        resolved_at: if resolved { Some(r.get(4)?) } else { None },
    })
}

/// Bound on the newer linked inquiries followed from the one a reply names
/// (a guard, not an expected depth: each link is one late reply).
const MAX_LINK_HOPS: usize = 16;

/// The inquiry that continues `thread` now: a resolved inquiry that a late
/// reply already continued in a new linked inquiry hands later replies on
/// to that one (so two late replies to an old mail thread do not open two
/// inquiries), unless it was itself reopened and resolved again since.
fn latest(conn: &Connection, mut thread: Thread) -> Result<Thread, StoreError> {
    let mut next = conn.prepare_cached(concat!(
        "SELECT ",
        thread_columns!(),
        " FROM inquiries i WHERE i.linked_to = ?1 ORDER BY i.id DESC LIMIT 1"
    ))?;
    for _ in 0..MAX_LINK_HOPS {
        let Some(resolved_at) = thread.resolved_at else {
            break;
        };
        let Some(newer) = next.query_row([thread.id], thread_row).optional()? else {
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

fn open_threads(conn: &Connection, intakes: &[&Intake]) -> Result<Threads, StoreError> {
    let mut threads = Threads::default();
    let mut by_key = conn.prepare_cached(concat!(
        "SELECT ",
        thread_columns!(),
        " FROM thread_keys t JOIN inquiries i ON i.id = t.inquiry_id WHERE t.key = ?1 \
         ORDER BY CASE WHEN i.status = 'resolved' THEN 1 ELSE 0 END, i.id DESC LIMIT 1"
    ))?;
    for key in intakes
        .iter()
        .flat_map(|i| i.message.thread.refers_to.iter())
    {
        if threads.by_key.contains_key(key) {
            continue;
        }
        if let Some(found) = by_key.query_row([key], thread_row).optional()? {
            threads.by_key.insert(key.clone(), latest(conn, found)?);
        }
    }
    let mut by_reference = conn.prepare_cached(concat!(
        "SELECT ",
        thread_columns!(),
        " FROM inquiries i WHERE i.id = ?1"
    ))?;
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
        if let Some(found) = by_reference.query_row([wanted], thread_row).optional()? {
            threads
                .by_reference
                .insert(r.0.clone(), latest(conn, found)?);
        }
    }
    let mut by_customer = conn.prepare_cached(
        "SELECT id, reference, updated_at FROM inquiries WHERE customer_key = ?1 AND channel = ?2 \
         AND status <> 'resolved' ORDER BY id DESC LIMIT 1",
    )?;
    for key in intakes.iter().filter_map(|i| follow_up_key(i)) {
        if let Some(found) = by_customer
            .query_row(params![key.0, key.1], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Reference(r.get(1)?),
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?
        {
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
        next_id: &mut i64,
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
            let detail = serde_json::json!({
                "channel": m.channel.to_string(),
                "provider_id": m.provider_id,
            });
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
                    plan.events.push((id, "message_added", detail.to_string()));
                    (id, reference, false, false)
                }
                Placement::Reopen(t) => {
                    let mut why = resolution(&t);
                    why["channel"] = detail["channel"].clone();
                    why["provider_id"] = detail["provider_id"].clone();
                    tracing::info!(inquiry = %t.reference, via, "a reply reopens a resolved inquiry");
                    plan.reopened.push(t.id);
                    plan.events.push((t.id, "reopened", why.to_string()));
                    batch_threads.reopened.insert(t.id);
                    (t.id, t.reference, false, true)
                }
                Placement::Open(previous) => {
                    let id = *next_id;
                    *next_id += 1;
                    let reference = Reference::from_id(id);
                    plan.inquiries
                        .push((id, intake, previous.as_ref().map(|t| t.id)));
                    plan.events.push((id, "received", detail.to_string()));
                    if let Some(t) = previous {
                        let mut to = resolution(&t);
                        to["linked_to"] = serde_json::json!(t.reference);
                        plan.events.push((id, "linked", to.to_string()));
                        let mut from = detail.clone();
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
        if !intake.classification.trace.is_null() {
            self.events
                .push((id, "classified", intake.classification.trace.to_string()));
        }
        match &intake.ack {
            AckPlan::Send { template, language } => {
                let payload = serde_json::json!({
                    "template": template,
                    "language": language,
                    "in_reply_to": m.provider_id,
                    "reply_context": m.reply_context,
                });
                self.outbox.push((id, intake, payload.to_string()));
                let queued = serde_json::json!({ "template": template, "language": language });
                self.events.push((id, "ack_queued", queued.to_string()));
            }
            AckPlan::Skip { reason } => {
                let skipped = serde_json::json!({ "reason": reason });
                self.events.push((id, "ack_skipped", skipped.to_string()));
            }
        }
    }

    fn write(&self, conn: &Connection) -> Result<(), StoreError> {
        let now = self.now;
        let mut stmt = conn.prepare_cached(
            "INSERT INTO inquiries (id, reference, channel, medium, status, urgency, customer_name, \
             customer_email, customer_phone, customer_handle, customer_key, subject, language, \
             created_at, updated_at, queue, requirements, sla_due_at, waiting_since, linked_to) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?15, ?19)",
        )?;
        for (id, intake, linked_to) in &self.inquiries {
            let m = &intake.message;
            let c = &intake.classification;
            stmt.execute(params![
                id,
                Reference::from_id(*id).0,
                m.channel.to_string(),
                m.medium.as_str(),
                Status::Open.as_str(),
                c.urgency.as_str(),
                m.customer.name,
                m.customer.email,
                m.customer.phone,
                m.customer.handle,
                m.customer_key,
                m.subject,
                m.language,
                to_ms(m.received_at),
                now,
                c.requirements.queue,
                serde_json::to_string(&c.requirements).unwrap_or_default(),
                c.sla_due_at.map(to_ms),
                linked_to,
            ])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO messages (inquiry_id, channel, provider_id, received_at, sender, subject, body, \
             language, attachments, metadata, reply_context) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for (id, intake) in &self.messages {
            let m = &intake.message;
            stmt.execute(params![
                id,
                m.channel.to_string(),
                m.provider_id,
                to_ms(m.received_at),
                serde_json::to_string(&m.customer).unwrap_or_default(),
                m.subject,
                m.text,
                m.language,
                serde_json::to_string(&m.attachments).unwrap_or_else(|_| "[]".into()),
                m.metadata.to_string(),
                m.reply_context.to_string(),
            ])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO thread_keys (key, inquiry_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for (key, id) in &self.thread_keys {
            stmt.execute(params![key, id])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO outbox (inquiry_id, kind, channel, payload, status, attempts, next_attempt_at, created_at) \
             VALUES (?1, 'ack', ?2, ?3, 'pending', 0, ?4, ?4)",
        )?;
        for (id, intake, payload) in &self.outbox {
            stmt.execute(params![
                id,
                intake.message.channel.to_string(),
                payload,
                now
            ])?;
        }
        insert_events(conn, &self.events, now)?;
        let mut stmt = conn.prepare_cached("UPDATE inquiries SET updated_at = ?1 WHERE id = ?2")?;
        for id in &self.touched {
            stmt.execute(params![now, id])?;
        }
        // Back in the queue from now; the assignee stays, so the router
        // (and a restart's snapshot) can prefer whoever held it before.
        let mut stmt = conn.prepare_cached(
            "UPDATE inquiries SET status = ?1, waiting_since = ?2, updated_at = ?2 \
             WHERE id = ?3 AND status = 'resolved'",
        )?;
        for id in &self.reopened {
            stmt.execute(params![Status::Open.as_str(), now, id])?;
        }
        Ok(())
    }
}

/// The checkpoint, quarantined mail and kept raw bytes of a mail batch.
/// A checkpoint only moves forward within one UIDVALIDITY.
fn write_mail(conn: &Connection, batch: &MailBatch, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO email_checkpoints (channel, mailbox, uidvalidity, last_uid, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (channel, mailbox) DO UPDATE SET \
         last_uid = CASE WHEN uidvalidity = excluded.uidvalidity \
             THEN MAX(last_uid, excluded.last_uid) ELSE excluded.last_uid END, \
         uidvalidity = excluded.uidvalidity, updated_at = excluded.updated_at",
    )?
    .execute(params![
        batch.channel,
        batch.mailbox,
        i64::from(batch.checkpoint.uidvalidity),
        i64::from(batch.checkpoint.last_uid),
        now
    ])?;
    let mut quarantine = conn.prepare_cached(
        "INSERT INTO email_quarantine (channel, mailbox, uidvalidity, uid, reason, size, raw, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
    )?;
    for q in &batch.quarantine {
        quarantine.execute(params![
            batch.channel,
            batch.mailbox,
            i64::from(batch.checkpoint.uidvalidity),
            i64::from(q.uid),
            q.reason,
            i64::try_from(q.size).unwrap_or(i64::MAX),
            q.raw,
            now
        ])?;
    }
    let mut raw = conn.prepare_cached(
        "INSERT INTO email_raw (channel, provider_id, raw) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )?;
    for item in &batch.items {
        if let Some(bytes) = &item.raw {
            let m = &item.intake.message;
            raw.execute(params![m.channel.to_string(), m.provider_id, bytes])?;
        }
    }
    Ok(())
}

pub(super) fn insert_events(
    conn: &Connection,
    events: &[(i64, &'static str, String)],
    now: i64,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO inquiry_events (inquiry_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (id, kind, detail) in events {
        stmt.execute(params![id, now, kind, detail])?;
    }
    Ok(())
}

fn write_deliveries(
    conn: &Connection,
    records: &[&DeliveryRecord],
    now: i64,
) -> Result<(), StoreError> {
    let mut update = conn.prepare_cached(
        "UPDATE outbox SET status = ?1, attempts = ?2, next_attempt_at = ?3, last_error = ?4, done_at = ?5, \
         provider_message_id = COALESCE(?6, provider_message_id) WHERE id = ?7 AND status = 'pending'",
    )?;
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
                serde_json::json!({ "outbox_id": r.outbox_id, "attempt": attempt, "text": text }),
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
                }),
            ),
            DeliveryResult::Failed { error } => (
                "failed",
                now,
                Some(error.clone()),
                Some(now),
                None,
                "delivery_failed",
                serde_json::json!({ "outbox_id": r.outbox_id, "attempt": attempt, "error": error }),
            ),
        };
        update.execute(params![
            status,
            i64::from(attempt),
            next_at,
            error,
            done_at,
            provider_id,
            r.outbox_id
        ])?;
        events.push((r.inquiry_id, kind, detail.to_string()));
    }
    insert_events(conn, &events, now)
}

fn write_statuses(
    conn: &Connection,
    channel: &str,
    statuses: &[ProviderStatus],
    now: i64,
) -> Result<usize, StoreError> {
    let mut update = conn.prepare_cached(
        "UPDATE outbox SET provider_status = ?1 WHERE channel = ?2 AND provider_message_id = ?3 \
         RETURNING id, inquiry_id",
    )?;
    let mut events = Vec::new();
    for st in statuses {
        let row = update
            .query_row(params![st.status, channel, st.provider_message_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?;
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
    insert_events(conn, &events, now)?;
    Ok(events.len())
}

fn write_edits(
    conn: &Connection,
    channel: &str,
    edits: &[MessageEdit],
    now: i64,
) -> Result<usize, StoreError> {
    // Unchanged text writes nothing, so a retried edit is a no-op.
    let mut update = conn.prepare_cached(
        "UPDATE messages SET body = ?1 WHERE channel = ?2 AND provider_id = ?3 AND body <> ?1 \
         RETURNING inquiry_id",
    )?;
    let mut events = Vec::new();
    for edit in edits {
        let row = update
            .query_row(params![edit.text, channel, edit.provider_id], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        if let Some(inquiry_id) = row {
            let detail = serde_json::json!({ "provider_id": edit.provider_id });
            events.push((inquiry_id, "message_edited", detail.to_string()));
        }
    }
    insert_events(conn, &events, now)?;
    Ok(events.len())
}

/// Outbox entries due at `now_ms`, oldest first, with what rendering needs.
fn due_outbox(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.id, o.inquiry_id, o.kind, o.channel, o.payload, o.attempts, i.reference, \
         i.customer_name, i.subject FROM outbox o JOIN inquiries i ON i.id = o.inquiry_id \
         WHERE o.status = 'pending' AND o.next_attempt_at <= ?1 ORDER BY o.next_attempt_at, o.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
        Ok((
            OutboxEntry {
                id: r.get(0)?,
                inquiry_id: r.get(1)?,
                kind: r.get(2)?,
                channel: r.get(3)?,
                payload: serde_json::Value::Null,
                attempts: r.get::<_, i64>(5)?.try_into().unwrap_or(u32::MAX),
                reference: Reference(r.get(6)?),
                customer_name: r.get(7)?,
                subject: r.get(8)?,
            },
            r.get::<_, String>(4)?,
        ))
    })?;
    rows.map(|row| {
        let (mut entry, payload) = row?;
        entry.payload = serde_json::from_str(&payload)
            .map_err(|e| StoreError::Corrupt(format!("outbox {} payload: {e}", entry.id)))?;
        Ok(entry)
    })
    .collect()
}
