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
use std::sync::Arc;
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
///
/// Compact on purpose: the router holds one per open inquiry, and the
/// shared parts (names, ladders, rule lists) are interned by the engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Requirements {
    /// Skill → minimum level (1..=5).
    pub skills: Skills,
    /// Preferred language; only associates speaking it qualify until a
    /// relaxation step drops it.
    pub language: Option<Arc<str>>,
    /// Team (queue) whose members qualify; `None` for anyone.
    pub queue: Option<Arc<str>>,
    /// Steps that widen the requirement while the inquiry waits.
    pub relaxation: Arc<[RelaxStep]>,
    /// Names of the rules that matched, for explanations.
    pub rules: Arc<[Arc<str>]>,
    pub tags: Arc<[Arc<str>]>,
}

/// Required skills with their minimum levels, sorted by name; written as
/// a JSON object (`{"billing": 3}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skills(Vec<(Arc<str>, u8)>);

impl Skills {
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, u8)> + '_ {
        self.0.iter().map(|(s, l)| (s, *l))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, skill: &str) -> Option<u8> {
        self.0.iter().find(|(s, _)| &**s == skill).map(|(_, l)| *l)
    }

    /// As a map, for explanations and relaxation.
    pub fn to_map(&self) -> BTreeMap<String, u8> {
        self.0.iter().map(|(s, l)| (s.to_string(), *l)).collect()
    }

    fn names_mut(&mut self) -> impl Iterator<Item = &mut Arc<str>> {
        self.0.iter_mut().map(|(s, _)| s)
    }
}

impl<S: AsRef<str>> FromIterator<(S, u8)> for Skills {
    fn from_iter<I: IntoIterator<Item = (S, u8)>>(iter: I) -> Self {
        let map: BTreeMap<String, u8> = iter
            .into_iter()
            .map(|(s, l)| (s.as_ref().to_owned(), l))
            .collect();
        Skills(map.into_iter().map(|(s, l)| (Arc::from(s), l)).collect())
    }
}

impl Serialize for Skills {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(s, l)| (&**s, l)))
    }
}

impl<'de> Deserialize<'de> for Skills {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, u8>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

/// Shares equal strings, ladders and name lists among open inquiries.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    strings: std::collections::HashSet<Arc<str>>,
    ladders: std::collections::HashSet<Arc<[RelaxStep]>>,
    lists: std::collections::HashSet<Arc<[Arc<str>]>>,
}

impl Interner {
    fn string(&mut self, s: &mut Arc<str>) {
        match self.strings.get(s) {
            Some(shared) => *s = shared.clone(),
            None => {
                self.strings.insert(s.clone());
            }
        }
    }

    /// The shared copy of `s` (associate ids, customer-independent names).
    pub(crate) fn name(&mut self, s: &str) -> Arc<str> {
        match self.strings.get(s) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(s);
                self.strings.insert(shared.clone());
                shared
            }
        }
    }

    fn list(&mut self, list: &mut Arc<[Arc<str>]>) {
        if let Some(shared) = self.lists.get(list) {
            *list = shared.clone();
            return;
        }
        let mut owned: Vec<Arc<str>> = list.to_vec();
        for s in &mut owned {
            self.string(s);
        }
        *list = owned.into();
        self.lists.insert(list.clone());
    }

    pub(crate) fn requirements(&mut self, r: &mut Requirements) {
        for s in r.skills.names_mut() {
            self.string(s);
        }
        r.skills.0.shrink_to_fit();
        for s in r.language.iter_mut().chain(r.queue.iter_mut()) {
            self.string(s);
        }
        match self.ladders.get(&r.relaxation) {
            Some(shared) => r.relaxation = shared.clone(),
            None => {
                self.ladders.insert(r.relaxation.clone());
            }
        }
        self.list(&mut r.rules);
        self.list(&mut r.tags);
    }
}
