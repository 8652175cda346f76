//! Leases: with several instances on one PostgreSQL database, what only
//! one of them may do at a time (run the router, poll a mailbox) is held
//! through a row in `leases` with an expiry that its holder renews.
//!
//! Taking a lease is one statement that succeeds only if the lease is free,
//! expired, or already ours. A holder that cannot renew in time (crashed,
//! partitioned, paused) loses it to whoever asks next; writes that need the
//! lease check it inside their own transaction (`writer::fence`), so a
//! stale holder cannot commit after losing it.

use std::time::Duration;

use tokio::time::Instant;

use super::{Store, StoreError};

/// The routing leader's lease.
pub const ROUTER: &str = "router";

/// The lease of one IMAP mailbox of one channel (`imap/<name>`).
pub fn mailbox(channel: &str, mailbox: &str) -> String {
    format!("mailbox:{channel}/{mailbox}")
}

/// A lease this instance took, and what it takes to keep it.
#[derive(Debug)]
pub struct Held {
    name: String,
    ttl: Duration,
    url: Option<String>,
    /// Last successful renewal: past `ttl` the lease may be another's.
    renewed: Instant,
}

impl Held {
    /// Takes lease `name` for `ttl` if it is free, expired or already
    /// ours; `None` while another instance holds it. `url` is where the
    /// holder can be reached, for those who forward to it.
    pub async fn take(
        store: &Store,
        name: &str,
        ttl: Duration,
        url: Option<&str>,
    ) -> Result<Option<Held>, StoreError> {
        let held = store.acquire_lease(name, ttl, url).await?;
        Ok(held.then(|| Held {
            name: name.to_owned(),
            ttl,
            url: url.map(str::to_owned),
            renewed: Instant::now(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The renewal period: a third of the term, so one failed renewal
    /// still leaves time for another before the lease runs out.
    pub fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// Renews the lease. False once it must be treated as lost: another
    /// instance took it, or it could not be renewed for two thirds of its
    /// term. Stopping then, before it can run out, keeps a holder that
    /// cannot reach the store from overlapping with its successor.
    pub async fn renew(&mut self, store: &Store) -> bool {
        match store
            .acquire_lease(&self.name, self.ttl, self.url.as_deref())
            .await
        {
            Ok(true) => {
                self.renewed = Instant::now();
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(lease = self.name, error = %e, "cannot renew a lease");
                self.renewed.elapsed() < self.ttl * 2 / 3
            }
        }
    }
}
