//! One message through rules and routing without touching the store: what
//! `switchboard route` prints, and what rule fixtures check an `associate`
//! expectation against.
//!
//! The roster is the configured one with everyone available (unless a
//! presence is given), nobody carrying load, and the time is the message's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::channels::generic::GenericChannel;
use crate::config::Settings;
use crate::inquiry::{Adapter, ChannelId, NewMessage};
use crate::pipeline;
use crate::routing::engine::{Decision, Engine, NewWork, Snapshot};
use crate::routing::{Presence, RoutingConfig};
use crate::store::{AckPlan, Classified};

/// Why a message file could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("`{0}` is not `<adapter>/<name>`, e.g. `generic/website`")]
    Channel(String),
    #[error("`{0}` is not an RFC 3339 time with offset, e.g. 2026-11-27T10:00:00+01:00")]
    Time(String),
    #[error("the message: {0}")]
    Message(#[from] crate::channels::IntakeError),
}

/// The channel a replayed message arrives on: `adapter/name`, or by
/// default the first generic channel configured.
pub fn replay_channel(
    settings: &Settings,
    channel: Option<&str>,
) -> Result<ChannelId, MessageError> {
    match channel {
        Some(c) => c
            .split_once('/')
            .and_then(|(a, n)| Some(ChannelId::new(Adapter::parse(a)?, n)))
            .filter(|id| !id.name.is_empty())
            .ok_or_else(|| MessageError::Channel(c.to_owned())),
        None => Ok(settings
            .channels
            .ids()
            .into_iter()
            .filter(|id| id.adapter == Adapter::Generic)
            .min_by(|a, b| a.name.cmp(&b.name))
            .unwrap_or_else(|| ChannelId::new(Adapter::Generic, "test"))),
    }
}

/// Builds a message from a generic-webhook JSON body, arriving on
/// `channel` (default: the first generic channel configured) at `at`
/// (default: now).
pub fn message_from_json(
    settings: &Settings,
    body: &[u8],
    channel: Option<&str>,
    at: Option<&str>,
) -> Result<NewMessage, MessageError> {
    let channel = replay_channel(settings, channel)?;
    let at = match at {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|_| MessageError::Time(t.to_owned()))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    Ok(GenericChannel::parse_body(&channel, body, at)?)
}

/// What would happen to a message.
#[derive(Debug, Clone)]
pub struct DryRun {
    pub ack: AckPlan,
    pub classified: Classified,
    pub decision: Decision,
}

/// Classifies and routes `message` against `settings`. `presence`
/// overrides the everyone-available default for the associates it names.
pub fn dry_run(
    settings: &Settings,
    message: &NewMessage,
    presence: &BTreeMap<String, Presence>,
) -> DryRun {
    let (ack, classified) = pipeline::classify(settings, message);
    let now = message.received_at.timestamp_millis();
    let config = RoutingConfig {
        initial_presence: Presence::Available,
        ..settings.routing.clone()
    };
    let mut snapshot = Snapshot::default();
    snapshot.presence = presence
        .iter()
        .map(|(id, p)| (id.clone(), *p, now, None))
        .collect();
    let engine = Engine::new(config, settings.roster.clone(), snapshot, now);
    let work = NewWork {
        id: 0,
        medium: message.medium,
        urgency: classified.urgency,
        customer_key: message.customer_key.clone(),
        requirements: classified.requirements.clone(),
        sla_due: classified.sla_due_at.map(|t| t.timestamp_millis()),
        waiting_since: now,
    };
    let decision = engine.decide(&work, now);
    DryRun {
        ack,
        classified,
        decision,
    }
}

impl DryRun {
    /// The associate it would be offered to, if anyone.
    pub fn associate(&self) -> Option<&str> {
        self.decision.winner.as_deref()
    }

    /// `switchboard route --json`.
    pub fn to_json(&self) -> Value {
        let r = &self.classified.requirements;
        json!({
            "urgency": self.classified.urgency,
            "skills": r.skills,
            "language": r.language,
            "queue": r.queue,
            "tags": r.tags,
            "sla_due_at": self.classified.sla_due_at.map(|t| t.to_rfc3339()),
            "ack": match &self.ack {
                AckPlan::Send { template, language } => json!({ "template": template, "language": language }),
                AckPlan::Skip { reason } => json!({ "skipped": reason }),
            },
            "associate": self.associate(),
            "explanation": {
                "rules": self.classified.trace_json()["rules"],
                "routing": self.decision.explanation,
            },
        })
    }

    /// `switchboard route` for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = &self.classified.requirements;
        let skills: Vec<String> = r.skills.iter().map(|(s, l)| format!("{s}>={l}")).collect();
        let _ = writeln!(out, "urgency:   {}", self.classified.urgency.as_str());
        let _ = writeln!(out, "skills:    {}", none_if_empty(&skills.join(", ")));
        let _ = writeln!(out, "language:  {}", r.language.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "queue:     {}", r.queue.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "tags:      {}", none_if_empty(&r.tags.join(", ")));
        if let Some(due) = self.classified.sla_due_at {
            let _ = writeln!(out, "sla due:   {}", due.to_rfc3339());
        }
        match &self.ack {
            AckPlan::Send { template, language } => {
                let _ = writeln!(out, "ack:       {template} ({language})");
            }
            AckPlan::Skip { reason } => {
                let _ = writeln!(out, "ack:       none ({reason})");
            }
        }
        let _ = writeln!(out, "\nrules matched:");
        let trace = self.classified.trace_json();
        for m in trace["rules"].as_array().into_iter().flatten() {
            let because: Vec<String> = m["because"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    format!(
                        "{} {}",
                        b["field"].as_str().unwrap_or("?"),
                        b["value"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  {}: {}",
                m["rule"].as_str().unwrap_or("?"),
                because.join("; ")
            );
        }
        let e = &self.decision.explanation;
        let _ = writeln!(
            out,
            "\nassociate: {}",
            self.associate()
                .unwrap_or("none: it would wait in the queue")
        );
        for c in e["candidates"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  candidate {:<12} score {:>9}  sticky {}  skill fit {}  load {}",
                c["associate"].as_str().unwrap_or("?"),
                c["score"],
                c["sticky"],
                c["skill_fit"],
                c["load"]
            );
        }
        for x in e["excluded"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  excluded  {:<12} {}",
                x["associate"].as_str().unwrap_or("?"),
                x["reason"].as_str().unwrap_or("?")
            );
        }
        out
    }
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
