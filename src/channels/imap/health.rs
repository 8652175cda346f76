//! Per-mailbox health: connected or not, last success, last error,
//! messages taken, quarantined. Shown in `GET /api/v1/channels` and as
//! metrics (`switchboard_email_mailbox_up{channel,mailbox}`, …).

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct MailboxHealth {
    pub mailbox: String,
    pub connected: bool,
    /// Whether the task waits with IDLE (else it polls).
    pub idle: bool,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub messages_taken: u64,
    pub quarantined: u64,
    pub uidvalidity: Option<u32>,
    pub last_uid: Option<u32>,
}

static HEALTH: LazyLock<Mutex<BTreeMap<(String, String), MailboxHealth>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Changes the health record of `mailbox` on `channel`.
pub fn update(channel: &str, mailbox: &str, f: impl FnOnce(&mut MailboxHealth)) {
    let mut all = HEALTH.lock().expect("health lock");
    let entry = all
        .entry((channel.to_owned(), mailbox.to_owned()))
        .or_insert_with(|| MailboxHealth {
            mailbox: mailbox.to_owned(),
            ..MailboxHealth::default()
        });
    f(entry);
    metrics::gauge!("switchboard_email_mailbox_up", "channel" => channel.to_owned(), "mailbox" => mailbox.to_owned())
        .set(if entry.connected { 1.0 } else { 0.0 });
}

/// The health of every mailbox of `channel`.
pub fn of_channel(channel: &str) -> Vec<MailboxHealth> {
    let all = HEALTH.lock().expect("health lock");
    all.iter()
        .filter(|((c, _), _)| c == channel)
        .map(|(_, h)| h.clone())
        .collect()
}
