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
use crate::routing::{NewWork, Router};
use crate::store::{AckPlan, Classified, Intake, IntakeOutcome, Store, StoreError};
use crate::templates::DEFAULT_ACK;

#[derive(Debug, Clone)]
pub struct Pipeline {
    store: Arc<Store>,
    settings: Arc<ArcSwap<Settings>>,
    /// Takes each new inquiry after its commit; `None` stores only.
    router: Option<Router>,
}

impl Pipeline {
    pub fn new(
        store: Arc<Store>,
        settings: Arc<ArcSwap<Settings>>,
        router: Option<Router>,
    ) -> Self {
        Pipeline {
            store,
            settings,
            router,
        }
    }

    /// Commits `message` durably; only after this returns `Ok` may the
    /// provider be told we have it.
    pub async fn accept(&self, message: NewMessage) -> Result<IntakeOutcome, StoreError> {
        let channel = message.channel.to_string();
        let ack = self.ack_plan(&message);
        let classification = Classified::default();
        let routing = self.router.as_ref().map(|_| {
            (
                message.medium,
                message.customer_key.clone(),
                classification.clone(),
            )
        });
        let outcome = self
            .store
            .intake(Intake {
                message,
                ack,
                classification,
            })
            .await?;
        if let (Some(router), Some((medium, customer_key, c))) = (&self.router, routing)
            && outcome.opened
        {
            router.add(NewWork {
                id: outcome.inquiry_id,
                reference: outcome.inquiry.0.clone(),
                medium,
                urgency: c.urgency,
                customer_key,
                requirements: c.requirements,
                sla_due: c.sla_due_at.map(|t| t.timestamp_millis()),
                waiting_since: chrono::Utc::now().timestamp_millis(),
            });
        }
        if outcome.duplicate {
            metrics::counter!("switchboard_intake_duplicates_total", "channel" => channel.clone())
                .increment(1);
        } else {
            metrics::counter!("switchboard_messages_received_total", "channel" => channel.clone())
                .increment(1);
            if outcome.opened {
                metrics::counter!("switchboard_inquiries_received_total", "channel" => channel.clone())
                    .increment(1);
            }
        }
        tracing::debug!(
            channel,
            inquiry = %outcome.inquiry,
            duplicate = outcome.duplicate,
            opened = outcome.opened,
            "message committed"
        );
        Ok(outcome)
    }

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
