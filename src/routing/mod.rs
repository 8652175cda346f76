//! Routing: who gets each inquiry, and why.
//!
//! [`engine`] is the decision core: a plain state machine over the roster,
//! presence, load, offers and the waiting queue. It takes commands with the
//! current time and returns the [`Effect`]s to persist; it never reads a
//! clock or touches the store, so tests and `switchboard route` drive it
//! directly. [`service`] is the daemon's one router task: it owns the
//! engine, persists each step's effects through the store before answering
//! anyone, fires timers, and rebuilds the engine from the store at start.

pub mod bitset;
pub mod engine;
pub mod roster;
pub mod service;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use engine::{Effect, Engine, NewWork, OfferState, RoutingError, Snapshot};
pub use roster::{Associate, Roster};
pub use service::{Caller, Router};

use crate::inquiry::Urgency;
pub use crate::rules::RelaxStep;

/// `[routing]`: how offers are timed and candidates ranked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// How long an associate has to accept an offer, per urgency.
    pub offer_timeout: OfferTimeouts,
    /// How long a customer's previous associate is preferred.
    #[serde(with = "humantime_serde")]
    pub sticky_window: Duration,
    /// Ranking weights; every decision shows them with each score.
    pub weights: Weights,
    /// How often waiting work is matched against everyone free, so that
    /// associates whose working hours begin get work without an event.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// Rosters up to this size get a per-associate reason for every
    /// exclusion in each explanation; larger ones get counts per reason.
    pub explain_limit: usize,
    /// Presence of an associate the store has never seen.
    pub initial_presence: Presence,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            offer_timeout: OfferTimeouts::default(),
            sticky_window: Duration::from_secs(7 * 24 * 3600),
            weights: Weights::default(),
            rescan_interval: Duration::from_secs(30),
            explain_limit: 200,
            initial_presence: Presence::Offline,
        }
    }
}

/// Offer timeouts per urgency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfferTimeouts {
    #[serde(with = "humantime_serde")]
    pub critical: Duration,
    #[serde(with = "humantime_serde")]
    pub high: Duration,
    #[serde(with = "humantime_serde")]
    pub normal: Duration,
    #[serde(with = "humantime_serde")]
    pub low: Duration,
}

impl Default for OfferTimeouts {
    fn default() -> Self {
        OfferTimeouts {
            critical: Duration::from_secs(60),
            high: Duration::from_secs(120),
            normal: Duration::from_secs(300),
            low: Duration::from_secs(600),
        }
    }
}

impl OfferTimeouts {
    pub fn get(&self, u: Urgency) -> Duration {
        match u {
            Urgency::Critical => self.critical,
            Urgency::High => self.high,
            Urgency::Normal => self.normal,
            Urgency::Low => self.low,
        }
    }
}

/// Ranking weights. Each factor is scaled to 0..=1 before weighting, so
/// the defaults rank by the customer's previous associate first, then
/// skill fit, then spare capacity, then time since their last work.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub sticky: f64,
    pub skill: f64,
    pub load: f64,
    pub idle: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            sticky: 1000.0,
            skill: 100.0,
            load: 10.0,
            idle: 1.0,
        }
    }
}

/// An associate's presence, set through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Takes new offers.
    Available,
    /// At work on what they hold; no new offers.
    Busy,
    Away,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "available",
            Presence::Busy => "busy",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Presence> {
        Some(match s {
            "available" => Presence::Available,
            "busy" => Presence::Busy,
            "away" => Presence::Away,
            "offline" => Presence::Offline,
            _ => return None,
        })
    }
}

/// What an inquiry needs, as the rules decided it. Stored with the inquiry
/// so a restart routes it the same way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Requirements {
    /// Skill → minimum level (1..=5).
    pub skills: BTreeMap<String, u8>,
    /// Preferred language; only associates speaking it qualify until a
    /// relaxation step drops it.
    pub language: Option<String>,
    /// Team (queue) whose members qualify; `None` for anyone.
    pub queue: Option<String>,
    /// Steps that widen the requirement while the inquiry waits.
    pub relaxation: Vec<RelaxStep>,
    /// Names of the rules that matched, for explanations.
    pub rules: Vec<String>,
    pub tags: Vec<String>,
}
