//! What instances sharing one PostgreSQL database coordinate through it:
//! leases (see [`super::lease`]) and the routing inbox, through which the
//! routing leader learns of inquiries other instances took in.
//!
//! These run on the read pool as single autocommit statements: a lease
//! renewal must not wait behind a large intake batch in the writer.

use std::time::Duration;

use sqlx::Row;

use super::{Store, StoreError, to_ms};
use crate::routing::engine::NewWork;

/// Who holds a lease, and where that instance can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub instance: String,
    /// The holder's `cluster.advertise_url`, for forwarding requests.
    pub url: Option<String>,
    pub expires_at: i64,
}

impl Store {
    fn instance(&self) -> Result<&str, StoreError> {
        self.shared
            .as_ref()
            .map(|s| s.instance.as_str())
            .ok_or_else(|| {
                StoreError::Unavailable("leases need a shared (PostgreSQL) store".into())
            })
    }

    /// Takes or renews lease `name` for `ttl` if it is free, expired, or
    /// already ours. Returns whether this instance now holds it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        ttl: Duration,
        url: Option<&str>,
    ) -> Result<bool, StoreError> {
        let instance = self.instance()?;
        let now = to_ms(chrono::Utc::now());
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, url, expires_at, acquired_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, url = excluded.url, \
             expires_at = excluded.expires_at, \
             acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at \
                 ELSE excluded.acquired_at END \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= $5 \
             RETURNING holder",
        )
        .bind(name)
        .bind(instance)
        .bind(url)
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Gives lease `name` up at once (clean shutdown), if we hold it.
    pub async fn release_lease(&self, name: &str) -> Result<(), StoreError> {
        let instance = self.instance()?;
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The current, unexpired holder of lease `name`.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<LeaseHolder>, StoreError> {
        let now = to_ms(chrono::Utc::now());
        let row = sqlx::query(
            "SELECT holder, url, expires_at FROM leases WHERE name = $1 AND expires_at > $2",
        )
        .bind(name)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(LeaseHolder {
                instance: r.try_get(0)?,
                url: r.try_get(1)?,
                expires_at: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Takes up to `limit` inquiries from the routing inbox, as work for
    /// the router, each with whether it was reopened (it has a history the
    /// router should restore, see [`Store::reopened_work`]). Taken rows are deleted: a leader that dies before
    /// routing them leaves them open in `inquiries`, where its successor's
    /// snapshot finds them.
    pub async fn take_inbox(&self, limit: i64) -> Result<Vec<(NewWork, bool)>, StoreError> {
        let rows = sqlx::query(
            "WITH taken AS (DELETE FROM routing_inbox WHERE inquiry_id IN ( \
                 SELECT inquiry_id FROM routing_inbox ORDER BY inquiry_id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING inquiry_id) \
             SELECT i.id, i.medium, i.urgency, i.customer_key, i.requirements, i.sla_due_at, \
             COALESCE(i.waiting_since, i.created_at), i.assignee \
             FROM inquiries i JOIN taken t ON t.inquiry_id = i.id \
             WHERE i.status <> 'resolved' ORDER BY i.id",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get(0)?;
                let reopened = r.try_get::<Option<String>, _>(7)?.is_some();
                let work = super::routing::new_work(id, r, 1)?;
                Ok((work, reopened))
            })
            .collect()
    }
}
