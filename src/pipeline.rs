//! The one place that walks an inbound message through the core:
//! decide the acknowledgement → commit (inquiry, message, events and outbox
//! entry in one transaction) → count it.
//!
//! Rules and routing slot in here: rules before the commit (they only read
//! the message), routing after it (it needs the committed inquiry).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::inquiry::NewMessage;
use crate::store::{
    AckPlan, Intake, IntakeOutcome, MailBatch, MailCheckpoint, MailItem, Quarantined, Store,
    StoreError,
};
use crate::templates::DEFAULT_ACK;

#[derive(Debug, Clone)]
pub struct Pipeline {
    store: Arc<Store>,
    settings: Arc<ArcSwap<Settings>>,
}

impl Pipeline {
    pub fn new(store: Arc<Store>, settings: Arc<ArcSwap<Settings>>) -> Self {
        Pipeline { store, settings }
    }

    /// Commits `message` durably; only after this returns `Ok` may the
    /// provider be told we have it.
    pub async fn accept(&self, message: NewMessage) -> Result<IntakeOutcome, StoreError> {
        let channel = message.channel.to_string();
        let ack = self.ack_plan(&message);
        let outcome = self.store.intake(Intake { message, ack }).await?;
        count(&channel, &outcome);
        tracing::debug!(
            channel,
            inquiry = %outcome.inquiry,
            duplicate = outcome.duplicate,
            opened = outcome.opened,
            "message committed"
        );
        Ok(outcome)
    }

    /// Commits mail taken from one mailbox together with the mailbox's
    /// checkpoint (one transaction): the IMAP channel flags or moves the
    /// mail only after this returns `Ok`. Each message gets the same
    /// acknowledgement planning as [`Pipeline::accept`].
    pub async fn accept_mail_batch(
        &self,
        channel: &str,
        mailbox: &str,
        checkpoint: MailCheckpoint,
        messages: Vec<(NewMessage, Option<Vec<u8>>)>,
        quarantine: Vec<Quarantined>,
    ) -> Result<Vec<IntakeOutcome>, StoreError> {
        let items = messages
            .into_iter()
            .map(|(message, raw)| MailItem {
                intake: Intake {
                    ack: self.ack_plan(&message),
                    message,
                },
                raw,
            })
            .collect();
        let outcomes = self
            .store
            .mail_batch(MailBatch {
                channel: channel.to_owned(),
                mailbox: mailbox.to_owned(),
                checkpoint,
                items,
                quarantine,
            })
            .await?;
        for outcome in &outcomes {
            count(channel, outcome);
        }
        Ok(outcomes)
    }

    /// The acknowledgement decision for one message: the one place rules
    /// will plug into.
    fn ack_plan(&self, message: &NewMessage) -> AckPlan {
        if let Some(reason) = &message.no_ack_reason {
            return AckPlan::Skip {
                reason: reason.clone(),
            };
        }
        let settings = self.settings.load();
        if !settings.channels.can_reply(&message.channel) {
            return AckPlan::Skip {
                reason: "the channel has no reply address configured".into(),
            };
        }
        AckPlan::Send {
            template: DEFAULT_ACK.to_owned(),
            language: settings
                .templates
                .resolve_language(DEFAULT_ACK, message.language.as_deref()),
        }
    }
}

fn count(channel: &str, outcome: &IntakeOutcome) {
    let channel = channel.to_owned();
    if outcome.duplicate {
        metrics::counter!("switchboard_intake_duplicates_total", "channel" => channel).increment(1);
        return;
    }
    metrics::counter!("switchboard_messages_received_total", "channel" => channel.clone())
        .increment(1);
    if outcome.opened {
        metrics::counter!("switchboard_inquiries_received_total", "channel" => channel)
            .increment(1);
    }
}
