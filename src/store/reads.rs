//! Read queries: the inquiry API's views, due outbox entries, counts for
//! metrics. They run on the read pool, concurrently with the writer (WAL).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::{StoreError, from_ms};
use crate::inquiry::{Customer, Inquiry, Reference, Status};

/// An inquiry with everything the API shows about it.
#[derive(Debug, Clone, Serialize)]
pub struct InquiryDetail {
    #[serde(flatten)]
    pub inquiry: Inquiry,
    pub messages: Vec<MessageRecord>,
    pub events: Vec<EventRecord>,
    pub outbox: Vec<OutboxRecord>,
    /// Newer inquiries linked to this one (replies that came after it had
    /// been resolved longer than the reopen window), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub linked_from: Vec<Reference>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageRecord {
    pub provider_id: String,
    pub received_at: DateTime<Utc>,
    pub sender: serde_json::Value,
    pub subject: Option<String>,
    pub text: String,
    pub language: Option<String>,
    pub attachments: serde_json::Value,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxRecord {
    pub id: i64,
    pub kind: String,
    pub channel: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// The provider's id of the sent message, and the latest state it reported.
    pub provider_message_id: Option<String>,
    pub provider_status: Option<String>,
}

/// Filters of `GET /api/v1/inquiries`.
#[derive(Debug, Clone, Default)]
pub struct InquiryFilter {
    pub status: Option<Status>,
    pub channel: Option<String>,
    pub limit: u32,
    /// Only inquiries older than the one with this reference (the cursor).
    pub before: Option<String>,
}

/// One page of inquiries, newest first.
#[derive(Debug, Clone)]
pub struct InquiryPage {
    pub inquiries: Vec<Inquiry>,
    /// Pass as `before` to get the next page; `None` on the last.
    pub next: Option<Reference>,
}

/// An outbox entry due for delivery, with what rendering needs.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub id: i64,
    pub inquiry_id: i64,
    pub kind: String,
    pub channel: String,
    pub payload: serde_json::Value,
    pub attempts: u32,
    pub reference: Reference,
    pub customer_name: Option<String>,
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
}

const INQUIRY_COLUMNS: &str = "id, reference, status, urgency, channel, medium, customer_name, customer_email, \
     customer_phone, customer_handle, customer_key, subject, language, created_at, updated_at, queue, assignee, \
     requirements, sla_due_at, sla_breached, first_response_at, linked_to";

fn inquiry_from_row(row: &AnyRow) -> Result<Inquiry, StoreError> {
    let corrupt = |e: crate::inquiry::UnknownValue| StoreError::Corrupt(e.to_string());
    Ok(Inquiry {
        id: row.try_get("id")?,
        reference: Reference(row.try_get("reference")?),
        status: row
            .try_get::<String, _>("status")?
            .parse()
            .map_err(corrupt)?,
        urgency: row
            .try_get::<String, _>("urgency")?
            .parse()
            .map_err(corrupt)?,
        channel: row.try_get("channel")?,
        medium: row
            .try_get::<String, _>("medium")?
            .parse()
            .map_err(corrupt)?,
        customer: Customer {
            name: row.try_get("customer_name")?,
            email: row.try_get("customer_email")?,
            phone: row.try_get("customer_phone")?,
            handle: row.try_get("customer_handle")?,
        },
        customer_key: row.try_get("customer_key")?,
        subject: row.try_get("subject")?,
        language: row.try_get("language")?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
        queue: row.try_get("queue")?,
        assignee: row.try_get("assignee")?,
        requirements: row
            .try_get::<Option<String>, _>("requirements")?
            .and_then(|t| serde_json::from_str(&t).ok()),
        sla_due_at: row.try_get::<Option<i64>, _>("sla_due_at")?.map(from_ms),
        sla_breached: row.try_get::<i64, _>("sla_breached")? != 0,
        first_response_at: row
            .try_get::<Option<i64>, _>("first_response_at")?
            .map(from_ms),
        linked_to: row
            .try_get::<Option<i64>, _>("linked_to")?
            .map(Reference::from_id),
    })
}

fn json_column(row: &AnyRow, name: &str) -> Result<serde_json::Value, StoreError> {
    let text: String = row.try_get(name)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

pub(super) async fn inquiry_detail(
    pool: &AnyPool,
    reference: &str,
) -> Result<Option<InquiryDetail>, StoreError> {
    let Some(id) = Reference::to_id(reference) else {
        return Ok(None);
    };
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {INQUIRY_COLUMNS} FROM inquiries WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let inquiry = inquiry_from_row(&row)?;

    let rows = sqlx::query(
        "SELECT provider_id, received_at, sender, subject, body, language, attachments, metadata \
         FROM messages WHERE inquiry_id = $1 ORDER BY id",
    )
    .bind(inquiry.id)
    .fetch_all(pool)
    .await?;
    let messages = rows
        .iter()
        .map(|r| {
            Ok(MessageRecord {
                provider_id: r.try_get("provider_id")?,
                received_at: from_ms(r.try_get("received_at")?),
                sender: json_column(r, "sender")?,
                subject: r.try_get("subject")?,
                text: r.try_get("body")?,
                language: r.try_get("language")?,
                attachments: json_column(r, "attachments")?,
                metadata: json_column(r, "metadata")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;

    let rows = sqlx::query(
        "SELECT at, kind, detail FROM inquiry_events WHERE inquiry_id = $1 ORDER BY id",
    )
    .bind(inquiry.id)
    .fetch_all(pool)
    .await?;
    let events = rows
        .iter()
        .map(|r| {
            Ok(EventRecord {
                at: from_ms(r.try_get("at")?),
                kind: r.try_get("kind")?,
                detail: json_column(r, "detail")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;

    let rows = sqlx::query(
        "SELECT id, kind, channel, status, attempts, last_error, provider_message_id, provider_status \
         FROM outbox WHERE inquiry_id = $1 ORDER BY id",
    )
    .bind(inquiry.id)
    .fetch_all(pool)
    .await?;
    let outbox = rows
        .iter()
        .map(|r| {
            Ok(OutboxRecord {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                channel: r.try_get("channel")?,
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                provider_message_id: r.try_get("provider_message_id")?,
                provider_status: r.try_get("provider_status")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;

    let linked_from = sqlx::query_scalar::<_, String>(
        "SELECT reference FROM inquiries WHERE linked_to = $1 ORDER BY id",
    )
    .bind(inquiry.id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Reference)
    .collect();

    Ok(Some(InquiryDetail {
        inquiry,
        messages,
        events,
        outbox,
        linked_from,
    }))
}

pub(super) async fn list_inquiries(
    pool: &AnyPool,
    filter: &InquiryFilter,
) -> Result<InquiryPage, StoreError> {
    let limit = filter.limit.clamp(1, 500);
    // Placeholders are numbered by hand: `$n` is what both databases read.
    let mut sql = format!("SELECT {INQUIRY_COLUMNS} FROM inquiries WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if filter.status.is_some() {
        sql.push_str(&format!(" AND status = ${}", next()));
    }
    if filter.channel.is_some() {
        sql.push_str(&format!(" AND channel = ${}", next()));
    }
    if filter.before.is_some() {
        sql.push_str(&format!(" AND id < ${}", next()));
    }
    // One extra row tells whether another page exists.
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", next()));
    let mut q = sqlx::query(AssertSqlSafe(sql));
    if let Some(status) = filter.status {
        q = q.bind(status.as_str());
    }
    if let Some(channel) = &filter.channel {
        q = q.bind(channel.clone());
    }
    if let Some(before) = &filter.before {
        // A malformed cursor matches nothing rather than everything.
        q = q.bind(Reference::to_id(before).unwrap_or(0));
    }
    let rows = q.bind(i64::from(limit) + 1).fetch_all(pool).await?;
    let mut inquiries = rows
        .iter()
        .map(inquiry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if inquiries.len() > limit as usize {
        inquiries.truncate(limit as usize);
        inquiries.last().map(|i| i.reference.clone())
    } else {
        None
    };
    Ok(InquiryPage { inquiries, next })
}

pub(super) async fn outbox_counts(pool: &AnyPool) -> Result<OutboxCounts, StoreError> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")
        .fetch_all(pool)
        .await?;
    let mut counts = OutboxCounts::default();
    for r in rows {
        let n: i64 = r.try_get("n")?;
        match r.try_get::<String, _>("status")?.as_str() {
            "pending" => counts.pending = n,
            "sent" => counts.sent = n,
            "failed" => counts.failed = n,
            _ => {}
        }
    }
    Ok(counts)
}

pub(super) async fn mail_checkpoint(
    pool: &AnyPool,
    channel: &str,
    mailbox: &str,
) -> Result<Option<super::MailCheckpoint>, StoreError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT uidvalidity, last_uid FROM email_checkpoints WHERE channel = $1 AND mailbox = $2",
    )
    .bind(channel)
    .bind(mailbox)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(v, u)| super::MailCheckpoint {
        uidvalidity: u32::try_from(v).unwrap_or_default(),
        last_uid: u32::try_from(u).unwrap_or_default(),
    }))
}

pub(super) async fn quarantine_count(pool: &AnyPool, channel: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM email_quarantine WHERE channel = $1")
            .bind(channel)
            .fetch_one(pool)
            .await?,
    )
}
