//! The writer's PostgreSQL connection: connects (and reconnects after the
//! database restarts or the network drops), keeps prepared statements, and
//! runs each batch in one transaction.
//!
//! While the database is unreachable every batch fails at once with the
//! connection error, so intake answers 503 and providers retry; the next
//! batch after the database is back reconnects. Attempts are spaced by a
//! capped backoff so an outage does not turn into a connect storm.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::StoreError;
use super::sql::Pg;
use super::writer::Dialect;

/// Settings the writer connects with.
#[derive(Clone)]
pub(super) struct PgTarget {
    pub config: postgres::Config,
    /// Used as `sslmode` asks (see `pg_tls`); unused with `disable`.
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// This instance's name in leases and outbox claims.
    pub instance: String,
    pub statement_timeout: Duration,
    /// How long a claimed outbox entry stays with this instance.
    pub claim_lease: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
}

pub(super) struct Writer {
    target: PgTarget,
    client: Option<postgres::Client>,
    statements: HashMap<&'static str, postgres::Statement>,
    /// No new attempt before this, after a failed connect.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Writer {
    pub fn new(target: PgTarget) -> Writer {
        Writer {
            target,
            client: None,
            statements: HashMap::new(),
            retry_at: None,
            backoff: Duration::from_millis(50),
        }
    }

    /// Connects if there is no live connection (or it is time to try again).
    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            tracing::warn!("lost the store connection; reconnecting");
            self.client = None;
        }
        if self.client.is_none() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
            {
                return Err(StoreError::Unavailable(
                    "the database is unreachable; retrying shortly".into(),
                ));
            }
            match connect(&self.target) {
                Ok(client) => {
                    self.statements.clear();
                    self.retry_at = None;
                    self.backoff = Duration::from_millis(50);
                    self.client = Some(client);
                    tracing::info!("store writer connected");
                }
                Err(e) => {
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(self.target.max_backoff);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Runs `work` in one transaction and commits it. A broken connection
    /// is dropped, so the next batch reconnects.
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Pg<'_, '_>, Dialect<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let instance = self.target.instance.clone();
        let claim_lease_ms = self.target.claim_lease.as_millis() as i64;
        self.ensure_connected()?;
        let client = self.client.as_mut().expect("connected above");
        let statements = &mut self.statements;
        let result = (|| {
            let mut tx = client.transaction()?;
            let out = {
                let mut conn = Pg {
                    tx: &mut tx,
                    statements,
                };
                work(
                    &mut conn,
                    Dialect::Postgres {
                        instance: &instance,
                        claim_lease_ms,
                    },
                )?
            };
            tx.commit()?;
            Ok(out)
        })();
        if result.is_err() && self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        result
    }
}

fn connect(target: &PgTarget) -> Result<postgres::Client, StoreError> {
    let mut client = target.config.connect(target.tls.clone())?;
    let timeout = target.statement_timeout.as_millis();
    // A SET cannot take a bind parameter; the value is our own number.
    client.batch_execute(&format!(
        "SET statement_timeout = {timeout}; SET application_name = 'switchboard-writer'"
    ))?;
    Ok(client)
}
