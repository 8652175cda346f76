//! The single writer: takes every queued job, applies them in one
//! transaction, commits (one fsync), then answers each caller.
//!
//! Batching is what makes durable intake fast: while one batch commits, the
//! next one queues up, so the batch size grows with the load by itself. If a
//! batch fails, its jobs are retried one by one so a single bad job cannot
//! fail its neighbours.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    AckPlan, DeliveryRecord, DeliveryResult, Intake, IntakeOutcome, OutboxEntry, StoreError, to_ms,
};
use crate::inquiry::{Reference, Status, Urgency};

pub(super) enum Job {
    Intake(
        Box<Intake>,
        oneshot::Sender<Result<IntakeOutcome, StoreError>>,
    ),
    Delivery(DeliveryRecord, oneshot::Sender<Result<(), StoreError>>),
    /// Reads due outbox entries. It runs here, after the batch's writes,
    /// so it never sees an entry as pending whose delivery was just recorded.
    Claim {
        limit: usize,
        tx: oneshot::Sender<Result<Vec<OutboxEntry>, StoreError>>,
    },
}

/// What one job produced, in job order.
enum Output {
    Intake(IntakeOutcome),
    Done,
    Claimed(Vec<OutboxEntry>),
}

/// Starts the writer on its own connection.
pub(super) async fn spawn(
    mut conn: SqliteConnection,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    outbox_wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, StoreError> {
    let last_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM inquiries")
        .fetch_one(&mut conn)
        .await?;
    let writer = Writer {
        conn,
        next_inquiry_id: last_id + 1,
        outbox_wake,
    };
    Ok(tokio::spawn(writer.run(rx, max_batch, shutdown)))
}

struct Writer {
    conn: SqliteConnection,
    /// Ids are allocated here, not by SQLite, so references can be derived
    /// before the insert; this writer is the only one.
    next_inquiry_id: i64,
    outbox_wake: Arc<Notify>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        max_batch: usize,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, max_batch) => n,
                _ = shutdown.cancelled() => {
                    // Stop accepting, then commit everything already queued.
                    rx.close();
                    while rx.recv_many(&mut batch, max_batch).await > 0 {
                        self.process(std::mem::take(&mut batch)).await;
                    }
                    break;
                }
            };
            if received == 0 {
                break;
            }
            self.process(std::mem::take(&mut batch)).await;
        }
        tracing::debug!("store writer stopped");
    }

    async fn process(&mut self, jobs: Vec<Job>) {
        metrics::histogram!("switchboard_store_batch_size").record(jobs.len() as f64);
        let first_id = self.next_inquiry_id;
        match self.commit(&jobs).await {
            Ok(outcomes) => self.answer(jobs, outcomes),
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
                    match self.commit(&single).await {
                        Ok(outcomes) => self.answer(single.into(), outcomes),
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

    fn answer(&self, jobs: Vec<Job>, outputs: Vec<Output>) {
        let mut wake = false;
        for (job, output) in jobs.into_iter().zip(outputs) {
            match (job, output) {
                (Job::Intake(intake, tx), Output::Intake(outcome)) => {
                    wake |= outcome.opened && matches!(intake.ack, AckPlan::Send { .. });
                    let _ = tx.send(Ok(outcome));
                }
                (Job::Delivery(_, tx), _) => {
                    let _ = tx.send(Ok(()));
                }
                (Job::Claim { tx, .. }, Output::Claimed(entries)) => {
                    let _ = tx.send(Ok(entries));
                }
                _ => unreachable!("outputs follow job order"),
            }
        }
        if wake {
            self.outbox_wake.notify_one();
        }
    }

    /// Applies `jobs` in one transaction: intakes, then delivery records,
    /// then claims. Returns one output per job, in job order.
    async fn commit(&mut self, jobs: &[Job]) -> Result<Vec<Output>, StoreError> {
        let now = to_ms(Utc::now());
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let intakes: Vec<&Intake> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Intake(i, _) => Some(&**i),
                _ => None,
            })
            .collect();
        let mut plan = Plan::default();
        if !intakes.is_empty() {
            let known = existing_messages(&mut tx, &intakes).await?;
            let threads = open_threads(&mut tx, &intakes).await?;
            plan = Plan::build(&intakes, &known, &threads, &mut self.next_inquiry_id, now);
            plan.write(&mut tx).await?;
        }
        let deliveries: Vec<&DeliveryRecord> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Delivery(d, _) => Some(d),
                _ => None,
            })
            .collect();
        if !deliveries.is_empty() {
            write_deliveries(&mut tx, &deliveries, now).await?;
        }
        let mut outcomes = plan.outcomes.into_iter();
        let mut outputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            outputs.push(match job {
                Job::Intake(..) => Output::Intake(outcomes.next().expect("one outcome per intake")),
                Job::Delivery(..) => Output::Done,
                Job::Claim { limit, .. } => {
                    Output::Claimed(super::reads::due_outbox(&mut *tx, now, *limit).await?)
                }
            });
        }
        tx.commit().await?;
        Ok(outputs)
    }
}

fn fail(jobs: Vec<Job>, e: StoreError) {
    let text = e.to_string();
    let mut first = Some(e);
    for job in jobs {
        let err = first
            .take()
            .unwrap_or_else(|| StoreError::Corrupt(text.clone()));
        match job {
            Job::Intake(_, tx) => {
                let _ = tx.send(Err(err));
            }
            Job::Delivery(_, tx) => {
                let _ = tx.send(Err(err));
            }
            Job::Claim { tx, .. } => {
                let _ = tx.send(Err(err));
            }
        }
    }
}

/// `(channel, provider_id)` → (inquiry id, reference) for messages already stored.
type Known = HashMap<(String, String), (i64, Reference)>;

async fn existing_messages(
    conn: &mut SqliteConnection,
    intakes: &[&Intake],
) -> Result<Known, StoreError> {
    let mut q = QueryBuilder::<Sqlite>::new(
        "SELECT m.channel, m.provider_id, i.id, i.reference FROM messages m \
         JOIN inquiries i ON i.id = m.inquiry_id WHERE (m.channel, m.provider_id) IN (VALUES ",
    );
    let mut sep = q.separated(", ");
    for i in intakes {
        sep.push("(")
            .push_bind_unseparated(i.message.channel.to_string())
            .push_unseparated(", ")
            .push_bind_unseparated(i.message.provider_id.clone())
            .push_unseparated(")");
    }
    q.push(")");
    let rows = q.build().persistent(false).fetch_all(&mut *conn).await?;
    let mut known = Known::new();
    for row in rows {
        known.insert(
            (row.try_get(0)?, row.try_get(1)?),
            (row.try_get(2)?, Reference(row.try_get(3)?)),
        );
    }
    Ok(known)
}

/// Thread keys and quoted references → the newest open inquiry they name.
#[derive(Default)]
struct OpenThreads {
    by_key: HashMap<String, (i64, Reference)>,
    by_reference: HashMap<String, i64>,
}

async fn open_threads(
    conn: &mut SqliteConnection,
    intakes: &[&Intake],
) -> Result<OpenThreads, StoreError> {
    let mut threads = OpenThreads::default();
    let keys: Vec<&String> = intakes
        .iter()
        .flat_map(|i| i.message.thread.refers_to.iter())
        .collect();
    if !keys.is_empty() {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT t.key, i.id, i.reference FROM thread_keys t JOIN inquiries i ON i.id = t.inquiry_id \
             WHERE i.status <> ",
        );
        q.push_bind(Status::Resolved.as_str())
            .push(" AND t.key IN (");
        let mut sep = q.separated(", ");
        for k in keys {
            sep.push_bind(k.clone());
        }
        q.push(") ORDER BY i.id");
        for row in q.build().persistent(false).fetch_all(&mut *conn).await? {
            // Ascending ids: the newest open inquiry wins.
            threads.by_key.insert(
                row.try_get(0)?,
                (row.try_get(1)?, Reference(row.try_get(2)?)),
            );
        }
    }
    let refs: Vec<&Reference> = intakes
        .iter()
        .filter_map(|i| i.message.thread.reference.as_ref())
        .collect();
    if !refs.is_empty() {
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT id, reference FROM inquiries WHERE status <> ");
        q.push_bind(Status::Resolved.as_str())
            .push(" AND reference IN (");
        let mut sep = q.separated(", ");
        for r in refs {
            sep.push_bind(r.0.clone());
        }
        q.push(")");
        for row in q.build().persistent(false).fetch_all(&mut *conn).await? {
            threads
                .by_reference
                .insert(row.try_get(1)?, row.try_get(0)?);
        }
    }
    Ok(threads)
}

/// The rows one batch of intakes writes, decided in memory first.
#[derive(Default)]
struct Plan<'a> {
    outcomes: Vec<IntakeOutcome>,
    inquiries: Vec<(i64, &'a Intake)>,
    messages: Vec<(i64, &'a Intake)>,
    thread_keys: Vec<(String, i64)>,
    events: Vec<(i64, &'static str, String)>,
    outbox: Vec<(i64, &'a Intake, String)>,
    touched: Vec<i64>,
    now: i64,
}

impl<'a> Plan<'a> {
    fn build(
        intakes: &[&'a Intake],
        known: &Known,
        threads: &OpenThreads,
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
        for &intake in intakes {
            let m = &intake.message;
            let key = (m.channel.to_string(), m.provider_id.clone());
            if let Some((id, reference)) = known.get(&key).or_else(|| batch_known.get(&key)) {
                plan.outcomes.push(IntakeOutcome {
                    inquiry: reference.clone(),
                    inquiry_id: *id,
                    duplicate: true,
                    opened: false,
                });
                continue;
            }
            let existing =
                m.thread
                    .reference
                    .as_ref()
                    .and_then(|r| threads.by_reference.get(&r.0).map(|id| (*id, r.clone())))
                    .or_else(|| {
                        m.thread.refers_to.iter().find_map(|k| {
                            batch_keys.get(k).or_else(|| threads.by_key.get(k)).cloned()
                        })
                    });
            let (id, reference, opened) = match existing {
                Some((id, reference)) => (id, reference, false),
                None => {
                    let id = *next_id;
                    *next_id += 1;
                    (id, Reference::from_id(id), true)
                }
            };
            for k in &m.thread.provides {
                batch_keys.insert(k.clone(), (id, reference.clone()));
                plan.thread_keys.push((k.clone(), id));
            }
            batch_known.insert(key, (id, reference.clone()));
            plan.messages.push((id, intake));
            let detail = serde_json::json!({
                "channel": m.channel.to_string(),
                "provider_id": m.provider_id,
            });
            if opened {
                plan.inquiries.push((id, intake));
                plan.events.push((id, "received", detail.to_string()));
                match &intake.ack {
                    AckPlan::Send { template, language } => {
                        let payload = serde_json::json!({
                            "template": template,
                            "language": language,
                            "in_reply_to": m.provider_id,
                            "reply_context": m.reply_context,
                        });
                        plan.outbox.push((id, intake, payload.to_string()));
                        let queued =
                            serde_json::json!({ "template": template, "language": language });
                        plan.events.push((id, "ack_queued", queued.to_string()));
                    }
                    AckPlan::Skip { reason } => {
                        let skipped = serde_json::json!({ "reason": reason });
                        plan.events.push((id, "ack_skipped", skipped.to_string()));
                    }
                }
            } else {
                plan.touched.push(id);
                plan.events.push((id, "message_added", detail.to_string()));
            }
            plan.outcomes.push(IntakeOutcome {
                inquiry: reference,
                inquiry_id: id,
                duplicate: false,
                opened,
            });
        }
        plan
    }

    async fn write(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        let now = self.now;
        if !self.inquiries.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO inquiries (id, reference, channel, medium, status, urgency, customer_name, \
                 customer_email, customer_phone, customer_handle, subject, language, created_at, updated_at) ",
            );
            q.push_values(&self.inquiries, |mut b, (id, intake)| {
                let m = &intake.message;
                b.push_bind(*id)
                    .push_bind(Reference::from_id(*id).0)
                    .push_bind(m.channel.to_string())
                    .push_bind(m.medium.as_str())
                    .push_bind(Status::Open.as_str())
                    .push_bind(Urgency::Normal.as_str())
                    .push_bind(m.customer.name.clone())
                    .push_bind(m.customer.email.clone())
                    .push_bind(m.customer.phone.clone())
                    .push_bind(m.customer.handle.clone())
                    .push_bind(m.subject.clone())
                    .push_bind(m.language.clone())
                    .push_bind(crate::store::to_ms(m.received_at))
                    .push_bind(now);
            });
            q.build().persistent(false).execute(&mut *conn).await?;
        }
        if !self.messages.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (inquiry_id, channel, provider_id, received_at, sender, subject, body, \
                 language, attachments, metadata, reply_context) ",
            );
            q.push_values(&self.messages, |mut b, (id, intake)| {
                let m = &intake.message;
                b.push_bind(*id)
                    .push_bind(m.channel.to_string())
                    .push_bind(m.provider_id.clone())
                    .push_bind(crate::store::to_ms(m.received_at))
                    .push_bind(serde_json::to_string(&m.customer).unwrap_or_default())
                    .push_bind(m.subject.clone())
                    .push_bind(m.text.clone())
                    .push_bind(m.language.clone())
                    .push_bind(
                        serde_json::to_string(&m.attachments).unwrap_or_else(|_| "[]".into()),
                    )
                    .push_bind(m.metadata.to_string())
                    .push_bind(m.reply_context.to_string());
            });
            q.build().persistent(false).execute(&mut *conn).await?;
        }
        if !self.thread_keys.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO thread_keys (key, inquiry_id) ");
            q.push_values(&self.thread_keys, |mut b, (key, id)| {
                b.push_bind(key.clone()).push_bind(*id);
            });
            q.push(" ON CONFLICT DO NOTHING");
            q.build().persistent(false).execute(&mut *conn).await?;
        }
        if !self.outbox.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO outbox (inquiry_id, kind, channel, payload, status, attempts, next_attempt_at, created_at) ",
            );
            q.push_values(&self.outbox, |mut b, (id, intake, payload)| {
                b.push_bind(*id)
                    .push_bind("ack")
                    .push_bind(intake.message.channel.to_string())
                    .push_bind(payload.clone())
                    .push_bind("pending")
                    .push_bind(0i64)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.build().persistent(false).execute(&mut *conn).await?;
        }
        insert_events(conn, &self.events, now).await?;
        if !self.touched.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new("UPDATE inquiries SET updated_at = ");
            q.push_bind(now).push(" WHERE id IN (");
            let mut sep = q.separated(", ");
            for id in &self.touched {
                sep.push_bind(*id);
            }
            q.push(")");
            q.build().persistent(false).execute(&mut *conn).await?;
        }
        Ok(())
    }
}

async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[(i64, &'static str, String)],
    now: i64,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut q =
        QueryBuilder::<Sqlite>::new("INSERT INTO inquiry_events (inquiry_id, at, kind, detail) ");
    q.push_values(events, |mut b, (id, kind, detail)| {
        b.push_bind(*id)
            .push_bind(now)
            .push_bind(*kind)
            .push_bind(detail.clone());
    });
    q.build().persistent(false).execute(&mut *conn).await?;
    Ok(())
}

async fn write_deliveries(
    conn: &mut SqliteConnection,
    records: &[&DeliveryRecord],
    now: i64,
) -> Result<(), StoreError> {
    let mut events = Vec::with_capacity(records.len());
    for r in records {
        let (status, next_at, error, done_at, kind, detail) = match &r.result {
            DeliveryResult::Sent { text } => (
                "sent",
                now,
                None,
                Some(now),
                if r.kind == "ack" {
                    "acknowledged"
                } else {
                    "notified"
                },
                serde_json::json!({ "outbox_id": r.outbox_id, "attempt": r.attempt, "text": text }),
            ),
            DeliveryResult::Retry {
                error,
                next_attempt_at,
            } => (
                "pending",
                to_ms(*next_attempt_at),
                Some(error.clone()),
                None,
                "delivery_retry",
                serde_json::json!({
                    "outbox_id": r.outbox_id, "attempt": r.attempt, "error": error,
                    "next_attempt_at": next_attempt_at.to_rfc3339(),
                }),
            ),
            DeliveryResult::Failed { error } => (
                "failed",
                now,
                Some(error.clone()),
                Some(now),
                "delivery_failed",
                serde_json::json!({ "outbox_id": r.outbox_id, "attempt": r.attempt, "error": error }),
            ),
        };
        sqlx::query(
            "UPDATE outbox SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4, done_at = $5 \
             WHERE id = $6 AND status = 'pending'",
        )
        .bind(status)
        .bind(i64::from(r.attempt))
        .bind(next_at)
        .bind(error)
        .bind(done_at)
        .bind(r.outbox_id)
        .execute(&mut *conn)
        .await?;
        events.push((r.inquiry_id, kind, detail.to_string()));
    }
    insert_events(conn, &events, now).await
}
