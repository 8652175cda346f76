//! Leases: with several instances on one PostgreSQL database, what only
//! one of them may do at a time (run the router, poll a mailbox) is held
//! through a row in `leases` with an expiry that its holder renews.
//!
//! Taking a lease is one statement that succeeds only if the lease is free,
//! expired, or already ours. A holder that cannot renew in time (crashed,
//! partitioned, paused) loses it to whoever asks next; writes that need the
//! lease check it inside their own transaction (`writer::fence`), so a
//! stale holder cannot commit after losing it.

/// The routing leader's lease.
pub const ROUTER: &str = "router";

/// The lease of one IMAP mailbox of one channel (`imap/<name>`).
pub fn mailbox(channel: &str, mailbox: &str) -> String {
    format!("mailbox:{channel}/{mailbox}")
}
