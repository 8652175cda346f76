//! The outbox dispatcher: delivers committed acknowledgements (and, later,
//! notifications) through their channel, with retries, backoff and jitter.
//!
//! Entries are written by the same transaction that creates the inquiry, so
//! a crash cannot lose one. Delivery is at-least-once: an entry whose
//! delivery succeeded but whose "sent" record did not commit before a crash
//! is sent again after restart, with the same `delivery_id` so the receiver
//! can drop the copy.

pub mod notify;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channels::{DeliveryError, Outbound};
use crate::config::{OutboxConfig, Settings};
use crate::store::{DeliveryRecord, DeliveryResult, OutboxEntry, Store, StoreError};
use crate::templates::{AckContext, DEFAULT_ACK};

/// How far ahead of the concurrency entries are claimed.
pub const CLAIM_AHEAD: usize = 4;

/// Counts deliveries between start and sent; wakes the dispatcher when
/// one is done sending.
#[derive(Default)]
struct SendSlots {
    count: AtomicUsize,
    freed: Notify,
}

impl SendSlots {
    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// One delivery's place among those sending; given up when dropped (also
/// if the delivery's task is cancelled).
struct SendSlot(Arc<SendSlots>);

impl SendSlot {
    fn take(slots: &Arc<SendSlots>) -> SendSlot {
        slots.count.fetch_add(1, Ordering::AcqRel);
        SendSlot(slots.clone())
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// A claim of due entries on its way through the store's writer.
type ClaimFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send>,
>;

/// Delivers due outbox entries until shut down.
pub struct Dispatcher {
    store: Arc<Store>,
    settings: Arc<ArcSwap<Settings>>,
    http: reqwest::Client,
}

impl Dispatcher {
    pub fn new(store: Arc<Store>, settings: Arc<ArcSwap<Settings>>) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            // A redirected POST would be re-sent as a GET without its body
            // (301/302/303) and still count as delivered, or re-sent with
            // its signature to whatever host the answer names (307/308).
            // A 3xx is a delivery error instead (`classify_response`).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds with static settings");
        Dispatcher {
            store,
            settings,
            http,
        }
    }

    /// Runs until `shutdown` fires, then lets in-flight deliveries finish
    /// (the caller bounds how long it waits).
    ///
    /// `outbox.concurrency` bounds the deliveries being rendered and sent.
    /// Once sent, a delivery gives its slot up and waits for its record to
    /// commit on its own, so sending never stalls behind the store's writer
    /// (busy with an intake batch, or an fsync); the entry stays claimed
    /// until its record commits, and one that never commits is sent again
    /// after a restart (at-least-once, same Message-ID).
    ///
    /// Entries are claimed ahead, up to [`CLAIM_AHEAD`] times the
    /// concurrency, so a freed slot is refilled at once from what is
    /// already claimed. The claim itself runs beside the deliveries (one
    /// at a time): the loop never waits for the writer while deliveries
    /// finish, and claims come in chunks rather than one entry per writer
    /// round trip.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let wake = this.store.outbox_wake();
        let mut in_flight = JoinSet::new();
        // Deliveries rendering or sending (not those waiting for their record).
        let sending = Arc::new(SendSlots::default());
        let mut queued: VecDeque<OutboxEntry> = VecDeque::new();
        // The claim under way, and how many entries it asked for.
        let mut claiming: Option<(usize, ClaimFuture)> = None;
        // Whether the outbox may hold due entries we have not claimed.
        let mut maybe_more = true;
        let mut next_poll = tokio::time::Instant::now();
        // One timer, moved when it fires: a new one per turn of this loop
        // (several per acknowledgement) cost a trip through the runtime's
        // timer wheel each.
        let poll = tokio::time::sleep_until(next_poll);
        tokio::pin!(poll);
        loop {
            // Reap every finished delivery, not just the one that woke us.
            while in_flight.try_join_next().is_some() {}
            let config = this.settings.load().outbox.clone();
            let now = tokio::time::Instant::now();
            if now >= next_poll {
                // Retries come due with time, without a wake-up.
                maybe_more = true;
                next_poll = now + config.poll_interval;
                poll.as_mut().reset(next_poll);
            }
            while sending.count() < config.concurrency {
                let Some(entry) = queued.pop_front() else {
                    break;
                };
                let this = this.clone();
                let slot = SendSlot::take(&sending);
                in_flight.spawn(async move { this.deliver(entry, slot).await });
            }
            let ahead = config.concurrency * CLAIM_AHEAD;
            if claiming.is_none() && maybe_more && queued.len() < ahead / 2 {
                // Counting deliveries whose record is still on its way to
                // the store (they are in `in_flight` until recorded) bounds
                // what a crash can send twice: at most `ahead` entries.
                let want = ahead.saturating_sub(in_flight.len() + queued.len());
                if want > 0 {
                    // A wake-up during the claim sets this again.
                    maybe_more = false;
                    let store = this.store.clone();
                    claiming = Some((want, Box::pin(async move { store.claim_due(want).await })));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                claimed = async {
                    match claiming.as_mut() {
                        Some((_, claim)) => claim.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if claiming.is_some() => {
                    let want = claiming.take().map_or(0, |(want, _)| want);
                    match claimed {
                        Ok(entries) => {
                            maybe_more |= entries.len() == want;
                            queued.extend(entries);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
                    }
                }
                _ = wake.notified() => maybe_more = true,
                _ = sending.freed.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = &mut poll => {}
            }
        }
        // A claim dropped unanswered gives its entries back in the store.
        drop(claiming);
        for entry in queued {
            this.store.release(entry.id);
        }
        tracing::info!(in_flight = in_flight.len(), "outbox dispatcher draining");
        while in_flight.join_next().await.is_some() {}
    }

    /// Renders and sends `entry`, gives `slot` up, then records the
    /// outcome (the entry stays claimed until the record commits).
    async fn deliver(&self, entry: OutboxEntry, slot: SendSlot) {
        let settings = self.settings.load_full();
        let config = &settings.outbox;
        let attempt = entry.attempts + 1;
        let result = if entry.kind == "notify" {
            let send = notify::deliver(&self.http, &settings, &entry);
            match tokio::time::timeout(config.request_timeout, send).await {
                Ok(r) => r.map(|text| (text, None)),
                Err(_) => Err(DeliveryError::Transient("timed out".into())),
            }
        } else {
            match self.render(&settings, &entry) {
                Err(error) => Err(DeliveryError::Permanent(error)),
                Ok(out) => {
                    let send = settings.channels.deliver(&self.http, &entry.channel, &out);
                    match tokio::time::timeout(config.request_timeout, send).await {
                        Ok(r) => r.map(|delivered| (out.text, delivered.provider_message_id)),
                        Err(_) => Err(DeliveryError::Transient("timed out".into())),
                    }
                }
            }
        };
        // Sent (or not): the next delivery may start while this one's
        // record waits for the writer.
        drop(slot);
        let outcome = match &result {
            Ok(_) => "sent",
            Err(DeliveryError::Permanent(_)) => "failed",
            Err(_) if attempt >= config.max_attempts => "failed",
            Err(_) => "retry",
        };
        metrics::counter!("switchboard_outbox_deliveries_total", "channel" => entry.channel.clone(), "outcome" => outcome)
            .increment(1);
        let result = match result {
            Ok((text, provider_message_id)) => DeliveryResult::Sent {
                text,
                provider_message_id,
            },
            Err(DeliveryError::Permanent(error)) => DeliveryResult::Failed { error },
            Err(e) if attempt >= config.max_attempts => DeliveryResult::Failed {
                error: format!("gave up after {attempt} attempts: {e}"),
            },
            Err(e) => {
                let mut delay = backoff(config, attempt);
                if let DeliveryError::RetryAfter { after, .. } = &e {
                    delay = delay.max(*after);
                }
                DeliveryResult::Retry {
                    error: e.to_string(),
                    next_attempt_at: Utc::now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
                }
            }
        };
        match &result {
            DeliveryResult::Sent { .. } => {
                tracing::info!(inquiry = %entry.reference, outbox_id = entry.id, kind = %entry.kind, attempt, "delivered")
            }
            DeliveryResult::Retry { error, .. } => {
                tracing::warn!(inquiry = %entry.reference, outbox_id = entry.id, attempt, error, "delivery failed; will retry")
            }
            DeliveryResult::Failed { error } => {
                tracing::error!(inquiry = %entry.reference, outbox_id = entry.id, attempt, error, "delivery failed for good")
            }
        }
        let record = DeliveryRecord {
            outbox_id: entry.id,
            inquiry_id: entry.inquiry_id,
            kind: entry.kind.clone(),
            attempt,
            result,
        };
        if let Err(e) = self.store.record_delivery(record).await {
            // The entry stays pending and is delivered again after restart.
            tracing::error!(outbox_id = entry.id, error = %e, "cannot record delivery");
            self.store.release(entry.id);
        }
    }

    fn render(&self, settings: &Settings, entry: &OutboxEntry) -> Result<Outbound, String> {
        let field = |name: &str| entry.payload.get(name).and_then(|v| v.as_str());
        let template = field("template").unwrap_or(DEFAULT_ACK);
        let language = field("language").unwrap_or("en");
        let ctx = AckContext {
            reference: entry.reference.as_str(),
            customer_name: entry.customer_name.as_deref(),
            subject: entry.subject.as_deref(),
            channel: &entry.channel,
            language,
        };
        let text = settings
            .templates
            .render(template, &ctx)
            .map_err(|e| e.to_string())?;
        let html = if settings.channels.sends_html(&entry.channel) {
            settings
                .templates
                .render_html(template, &ctx)
                .map_err(|e| e.to_string())?
        } else {
            None
        };
        Ok(Outbound {
            delivery_id: entry.id,
            inquiry: entry.reference.0.clone(),
            in_reply_to: field("in_reply_to").unwrap_or_default().to_owned(),
            text,
            html,
            reply_context: entry
                .payload
                .get("reply_context")
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// Exponential backoff with jitter: the `attempt`-th retry waits between
/// half and all of `initial · 2^(attempt-1)`, capped at `max_backoff`.
pub fn backoff(config: &OutboxConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = config
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(config.max_backoff);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let config = OutboxConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..OutboxConfig::default()
        };
        for _ in 0..100 {
            let first = backoff(&config, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&config, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&config, 40);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        }
    }
}
