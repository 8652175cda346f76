//! Routing persistence: the router's effects written in one transaction,
//! and the snapshot it is rebuilt from at start.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::StoreError;
use super::sql::Conn;
use crate::inquiry::{Medium, Status, Urgency};
use crate::routing::engine::{Effect, NewWork, RestoredWork, Snapshot};
use crate::routing::{Presence, Requirements};

/// Writes `effects` in order. Runs inside the writer's batch transaction.
/// `details` are the events' details, rendered, in the order of the events.
pub(super) fn write<C: Conn>(
    tx: &mut C,
    effects: &[Effect],
    details: &[String],
    now: i64,
) -> Result<bool, StoreError> {
    let mut notified = false;
    let mut events = Vec::new();
    let mut details = details.iter();
    for e in effects {
        match e {
            Effect::Offer {
                offer_id,
                inquiry_id,
                associate,
                offered_at,
                expires_at,
            } => {
                tx.exec(
                    "INSERT INTO offers (id, inquiry_id, associate_id, offered_at, expires_at, state) \
                     VALUES ($1, $2, $3, $4, $5, 'open')",
                    &[&offer_id, &inquiry_id, &associate, &offered_at, &expires_at],
                )?;
            }
            Effect::OfferClosed {
                offer_id,
                state,
                at,
            } => {
                tx.exec(
                    "UPDATE offers SET state = $1, decided_at = $2 WHERE id = $3 AND state = 'open'",
                    &[&state.as_str(), &at, &offer_id],
                )?;
            }
            Effect::Status {
                inquiry_id,
                status,
                assignee,
                waiting_since,
            } => {
                tx.exec(
                    "UPDATE inquiries SET status = $1, assignee = COALESCE($2, assignee), \
                     waiting_since = COALESCE($3, waiting_since), updated_at = $4 WHERE id = $5",
                    &[
                        &status.as_str(),
                        &assignee,
                        &waiting_since,
                        &now,
                        &inquiry_id,
                    ],
                )?;
            }
            Effect::FirstResponse { inquiry_id, at } => {
                tx.exec(
                    "UPDATE inquiries SET first_response_at = COALESCE(first_response_at, $1) WHERE id = $2",
                    &[&at, &inquiry_id],
                )?;
            }
            Effect::SlaBreached { inquiry_id } => {
                tx.exec(
                    "UPDATE inquiries SET sla_breached = 1 WHERE id = $1",
                    &[&inquiry_id],
                )?;
            }
            Effect::Presence {
                associate,
                presence,
                since,
            } => {
                tx.exec(
                    "INSERT INTO presence (associate_id, presence, since) VALUES ($1, $2, $3) \
                     ON CONFLICT (associate_id) DO UPDATE SET presence = excluded.presence, since = excluded.since",
                    &[&associate, &presence.as_str(), &since],
                )?;
            }
            Effect::IdleSince { associate, at } => {
                tx.exec(
                    "INSERT INTO presence (associate_id, presence, since, idle_since) VALUES ($1, 'offline', $2, $2) \
                     ON CONFLICT (associate_id) DO UPDATE SET idle_since = excluded.idle_since",
                    &[&associate, &at],
                )?;
            }
            Effect::Event {
                inquiry_id, kind, ..
            } => {
                let detail = details.next().ok_or_else(|| {
                    StoreError::Corrupt("a routing event without its detail".into())
                })?;
                events.push((*inquiry_id, *kind, detail));
            }
            Effect::Notify {
                inquiry_id,
                associate,
                what,
                expires_at,
            } => {
                let payload = serde_json::json!({
                    "associate": associate, "what": what, "expires_at": expires_at,
                });
                tx.exec(
                    "INSERT INTO outbox (inquiry_id, kind, channel, payload, status, attempts, next_attempt_at, created_at) \
                     VALUES ($1, 'notify', 'notify', $2, 'pending', 0, $3, $3)",
                    &[&inquiry_id, &payload.to_string(), &now],
                )?;
                notified = true;
            }
        }
    }
    super::writer::insert_events(tx, &events, now)?;
    Ok(notified)
}

/// The routing columns `medium, urgency, customer_key, requirements,
/// sla_due_at, waiting_since` of inquiry `id`, read from `row` starting at
/// column `at`: one reading for the snapshot, a reopened inquiry and the
/// routing inbox.
pub(super) fn new_work(id: i64, row: &AnyRow, at: usize) -> Result<NewWork, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("inquiry {id}: {what}"));
    Ok(NewWork {
        id,
        medium: row
            .try_get::<String, _>(at)?
            .parse::<Medium>()
            .map_err(|_| bad("medium"))?,
        urgency: row
            .try_get::<String, _>(at + 1)?
            .parse::<Urgency>()
            .map_err(|_| bad("urgency"))?,
        customer_key: row.try_get(at + 2)?,
        requirements: match row.try_get::<Option<String>, _>(at + 3)? {
            Some(text) => {
                serde_json::from_str::<Requirements>(&text).map_err(|_| bad("requirements"))?
            }
            None => Requirements::default(),
        },
        sla_due: row.try_get(at + 4)?,
        waiting_since: row.try_get(at + 5)?,
    })
}

/// One open inquiry, as [`snapshot`] restores it (without an open offer:
/// a reopened inquiry has none until the router makes one).
pub(super) async fn restored(
    pool: &sqlx::AnyPool,
    id: i64,
) -> Result<Option<RestoredWork>, StoreError> {
    let Some(r) = sqlx::query(
        "SELECT medium, urgency, customer_key, requirements, sla_due_at, \
         COALESCE(waiting_since, created_at), status, assignee, first_response_at, sla_breached \
         FROM inquiries WHERE id = $1 AND status <> 'resolved'",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let bad = |what: &str| StoreError::Corrupt(format!("inquiry {id}: {what}"));
    let status: Status = r.get::<String, _>(6).parse().map_err(|_| bad("status"))?;
    let mut work = RestoredWork {
        work: new_work(id, &r, 0)?,
        status,
        assignee: r.get(7),
        open_offer: None,
        declined: Vec::new(),
        expired: Vec::new(),
        responded: r.get::<Option<i64>, _>(8).is_some(),
        sla_breached: r.get::<i64, _>(9) != 0,
    };
    let passed = sqlx::query(
        "SELECT associate_id, state FROM offers WHERE inquiry_id = $1 AND state IN ('declined', 'expired')",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    for r in passed {
        let who: String = r.get(0);
        if r.get::<String, _>(1) == "expired" {
            work.expired.push(who);
        } else {
            work.declined.push(who);
        }
    }
    Ok(Some(work))
}

/// Everything open, for the router to start from.
pub(super) async fn snapshot(
    pool: &sqlx::AnyPool,
    sticky_window: Duration,
    now: i64,
) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot::default();
    // Streamed, and each row compacted as it comes: a large backlog is
    // never held twice (rows and works).
    let mut rows = sqlx::query(
        "SELECT i.id, i.reference, i.medium, i.urgency, i.customer_key, i.requirements, i.sla_due_at, \
         COALESCE(i.waiting_since, i.created_at), i.status, i.assignee, i.first_response_at, i.sla_breached, \
         o.id, o.associate_id, o.expires_at \
         FROM inquiries i LEFT JOIN offers o ON o.inquiry_id = i.id AND o.state = 'open' \
         WHERE i.status <> 'resolved'",
    )
    .fetch(pool);
    while let Some(r) = rows.try_next().await? {
        let id: i64 = r.get(0);
        let bad = |what: &str| StoreError::Corrupt(format!("inquiry {id}: {what}"));
        let status: Status = r.get::<String, _>(8).parse().map_err(|_| bad("status"))?;
        let offer_id: Option<i64> = r.get(12);
        snapshot.add(RestoredWork {
            work: new_work(id, &r, 2)?,
            status,
            assignee: r.get(9),
            open_offer: offer_id.map(|o| (o, r.get(13), r.get(14))),
            declined: Vec::new(),
            expired: Vec::new(),
            responded: r.get::<Option<i64>, _>(10).is_some(),
            sla_breached: r.get::<i64, _>(11) != 0,
        });
    }
    let passed = sqlx::query(
        "SELECT o.inquiry_id, o.associate_id, o.state FROM offers o JOIN inquiries i ON i.id = o.inquiry_id \
         WHERE i.status <> 'resolved' AND o.state IN ('declined', 'expired')",
    )
    .fetch_all(pool)
    .await?;
    for r in passed {
        let who: String = r.get(1);
        snapshot.passed(r.get(0), &who, r.get::<String, _>(2) == "expired");
    }
    for r in sqlx::query("SELECT associate_id, presence, since, idle_since FROM presence")
        .fetch_all(pool)
        .await?
    {
        let presence = Presence::parse(&r.get::<String, _>(1)).unwrap_or(Presence::Offline);
        snapshot
            .presence
            .push((r.get(0), presence, r.get(2), r.get(3)));
    }
    let since = now - sticky_window.as_millis() as i64;
    for r in sqlx::query(
        "SELECT customer_key, assignee, MAX(updated_at) FROM inquiries \
         WHERE customer_key IS NOT NULL AND assignee IS NOT NULL AND updated_at >= $1 \
         GROUP BY customer_key, assignee ORDER BY 3",
    )
    .bind(since)
    .fetch_all(pool)
    .await?
    {
        snapshot.sticky.push((r.get(0), r.get(1), r.get(2)));
    }
    snapshot.max_offer_id = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM offers")
        .fetch_one(pool)
        .await?;
    Ok(snapshot)
}
