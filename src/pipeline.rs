//! The one place that walks an inbound message through the core:
//! decide the acknowledgement → commit (inquiry, message, events and outbox
//! entry in one transaction) → count it.
//!
//! Rules and routing slot in here: rules before the commit (they only read
//! the message), routing after it (it needs the committed inquiry).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::inquiry::{NewMessage, Urgency};
use crate::routing::{NewWork, Requirements, Router};
use crate::rules::Facts;
use crate::store::{
    AckPlan, Classified, Intake, IntakeOutcome, MailBatch, MailCheckpoint, MailItem, Quarantined,
    Store, StoreError,
};
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
        let (ack, classification) = self.classify(&message);
        let route = self.work_for(&message, &classification);
        let reopen_window = self.settings.load().threading.reopen_window;
        let language = classification
            .requirements
            .language
            .as_deref()
            .map(str::to_owned);
        let mut outcome = self
            .store
            .intake(Intake {
                message,
                ack,
                classification,
                reopen_window,
            })
            .await?;
        outcome.language = language;
        self.after_commit(&channel, &outcome, route).await;
        tracing::debug!(
            channel,
            inquiry = %outcome.inquiry,
            duplicate = outcome.duplicate,
            opened = outcome.opened,
            reopened = outcome.reopened,
            "message committed"
        );
        Ok(outcome)
    }

    /// Commits mail taken from one mailbox together with the mailbox's
    /// checkpoint (one transaction): the IMAP channel flags or moves the
    /// mail only after this returns `Ok`. Each message is classified and
    /// routed like one from [`Pipeline::accept`].
    pub async fn accept_mail_batch(
        &self,
        channel: &str,
        mailbox: &str,
        checkpoint: MailCheckpoint,
        messages: Vec<(NewMessage, Option<Vec<u8>>)>,
        quarantine: Vec<Quarantined>,
    ) -> Result<Vec<IntakeOutcome>, StoreError> {
        let mut routes = Vec::with_capacity(messages.len());
        let reopen_window = self.settings.load().threading.reopen_window;
        let items = messages
            .into_iter()
            .map(|(message, raw)| {
                let (ack, classification) = self.classify(&message);
                routes.push(self.work_for(&message, &classification));
                MailItem {
                    intake: Intake {
                        message,
                        ack,
                        classification,
                        reopen_window,
                    },
                    raw,
                }
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
        for (outcome, route) in outcomes.iter().zip(routes) {
            self.after_commit(channel, outcome, route).await;
        }
        Ok(outcomes)
    }

    /// What the router needs of a message, should it open an inquiry.
    fn work_for(&self, message: &NewMessage, c: &Classified) -> Option<NewWork> {
        self.router.as_ref()?;
        Some(NewWork {
            id: 0,
            medium: message.medium,
            urgency: c.urgency,
            customer_key: message.customer_key.clone(),
            requirements: c.requirements.clone(),
            sla_due: c.sla_due_at.map(|t| t.timestamp_millis()),
            // As the store writes it: the router then need not.
            waiting_since: message.received_at.timestamp_millis(),
        })
    }

    /// Counts a committed message and hands a new or reopened inquiry to
    /// the router.
    async fn after_commit(&self, channel: &str, outcome: &IntakeOutcome, work: Option<NewWork>) {
        count(channel, outcome);
        let Some(router) = &self.router else {
            return;
        };
        if let Some(mut work) = work
            && outcome.opened
        {
            work.id = outcome.inquiry_id;
            router.add(work);
        } else if outcome.reopened {
            // Routed as stored (its own requirements and SLA state), not as
            // the reply's classification: the same view a restart takes.
            match self.store.reopened_work(outcome.inquiry_id).await {
                Ok(Some(work)) => router.reopen(work),
                Ok(None) => {
                    tracing::debug!(inquiry = %outcome.inquiry, "reopened inquiry already resolved again")
                }
                // Committed as open: the next start's snapshot routes it.
                Err(e) => tracing::warn!(
                    inquiry = %outcome.inquiry,
                    error = %e,
                    "cannot read a reopened inquiry for routing"
                ),
            }
        }
    }

    /// Runs the rules over `message` and decides its acknowledgement: the
    /// one place both are decided, for every channel.
    pub fn classify(&self, message: &NewMessage) -> (AckPlan, Classified) {
        let settings = self.settings.load();
        classify(&settings, message)
    }
}

/// The rules' verdict and the acknowledgement plan for `message` under
/// `settings` (also used by `switchboard route`).
pub fn classify(settings: &Settings, message: &NewMessage) -> (AckPlan, Classified) {
    let tags = customer_tags(message);
    let verdict = settings.rules.evaluate(&Facts {
        message,
        customer_tags: &tags,
        at: message.received_at,
    });
    let ack = if let Some(reason) = &message.no_ack_reason {
        AckPlan::Skip {
            reason: reason.clone(),
        }
    } else if let Some(reason) = &verdict.suppress_ack {
        AckPlan::Skip {
            reason: format!("suppressed by the rules: {reason}"),
        }
    } else if !settings.channels.can_reply(&message.channel) {
        AckPlan::Skip {
            reason: "the channel has no reply address configured".into(),
        }
    } else {
        let template = verdict
            .ack_template
            .clone()
            .unwrap_or_else(|| DEFAULT_ACK.to_owned());
        let language = settings
            .templates
            .resolve_language(&template, message.language.as_deref());
        AckPlan::Send { template, language }
    };
    let trace = serde_json::to_string(&Trace {
        rules: &verdict.trace,
        urgency: verdict.urgency,
        skills: &verdict.skills,
        language: verdict.language.as_deref(),
        queue: verdict.queue.as_deref(),
        tags: &verdict.tags,
        sla: verdict
            .sla
            .map(|d| humantime::format_duration(d).to_string()),
        ack_template: verdict.ack_template.as_deref(),
        suppress_ack: verdict.suppress_ack.as_deref(),
        relaxation_ladder: &verdict.relaxation_ladder,
    })
    .unwrap_or_default();
    let classified = Classified {
        urgency: verdict.urgency,
        requirements: Requirements {
            skills: verdict.skills.iter().map(|(s, l)| (s, *l)).collect(),
            language: verdict.language.as_deref().map(Arc::from),
            queue: verdict.queue.as_deref().map(Arc::from),
            relaxation: verdict.relaxation.into(),
            rules: verdict
                .trace
                .iter()
                .map(|m| Arc::from(m.rule.as_str()))
                .collect(),
            tags: verdict.tags.iter().map(|t| Arc::from(t.as_str())).collect(),
        },
        sla_due_at: verdict
            .sla
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| message.received_at + d),
        trace,
    };
    (ack, classified)
}

/// The `classified` event: what the rules decided and why.
#[derive(serde::Serialize)]
struct Trace<'a> {
    rules: &'a [crate::rules::RuleMatch],
    urgency: Urgency,
    skills: &'a std::collections::BTreeMap<String, u8>,
    language: Option<&'a str>,
    queue: Option<&'a str>,
    tags: &'a [String],
    sla: Option<String>,
    ack_template: Option<&'a str>,
    suppress_ack: Option<&'a str>,
    relaxation_ladder: &'a str,
}

/// Tags the sender attached to the customer (`metadata.customer_tags`,
/// e.g. from a CRM), for the rules' `customer_tags` condition.
fn customer_tags(message: &NewMessage) -> Vec<String> {
    message
        .metadata
        .get("customer_tags")
        .and_then(|v| v.as_array())
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    } else if outcome.reopened {
        metrics::counter!("switchboard_inquiries_reopened_total", "channel" => channel)
            .increment(1);
    }
}
