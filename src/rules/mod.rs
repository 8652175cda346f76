//! Routing rules: ops-authored, ordered, compiled once at load, evaluated
//! for every new inquiry.
//!
//! This module owns the rules file (`config/rules.toml`: [`file`]), its
//! validation into an immutable [`RuleSet`] ([`compile`]: regexes built,
//! keywords normalized, schedules, skills, templates and ladders checked),
//! named business hours ([`hours`], also used for associates' working
//! hours), text normalization for keyword matching ([`text`]), and
//! [`RuleSet::evaluate`], which turns an inquiry's facts into a
//! [`Classification`]: urgency, required skills, preferred language, queue,
//! tags, SLA target, acknowledgement choice, relaxation ladder, and a trace
//! of which rules matched and why.
//!
//! It is pure: no store, no roster, no clock (the time is a fact passed in).
//! Routing consumes the classification; the pipeline wires the two.

pub mod compile;
pub mod file;
pub mod hours;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::inquiry::{NewMessage, Urgency};
pub use compile::Rule;
pub use hours::{Schedule, ScheduleProblem, ScheduleSpec};

/// The name of the ladder used when no matching rule picks another.
pub const DEFAULT_LADDER: &str = "default";

/// What the rules may refer to. `None` means not known yet (e.g. the roster
/// is not loaded): that check is skipped.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub skills: Option<BTreeSet<String>>,
    pub templates: BTreeSet<String>,
    pub teams: Option<BTreeSet<String>>,
}

/// One thing wrong with a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub file: PathBuf,
    /// The rule's name (`#n` for an unnamed one), or `None` outside rules.
    pub rule: Option<String>,
    /// Dotted key inside the rule (or the file), e.g. `when.text_matches[0]`.
    pub key: String,
    pub message: String,
}

impl RuleProblem {
    /// The problem without its file: `rule `fraud`: `skills[0]`: …`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(rule) = &self.rule {
            out.push_str(&format!("rule `{rule}`: "));
        }
        if !self.key.is_empty() {
            out.push_str(&format!("`{}`: ", self.key));
        }
        out.push_str(&self.message);
        out
    }
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.describe())
    }
}

/// The facts a classification is made from.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub message: &'a NewMessage,
    /// Tags the customer carries (from a CRM, the roster of VIPs, …).
    pub customer_tags: &'a [String],
    /// The time business-hours conditions are checked at (normally the
    /// message's `received_at`).
    pub at: DateTime<Utc>,
}

/// One step of a relaxation ladder: after the inquiry has waited `after`,
/// the router may widen its requirements this way. Steps accumulate and
/// are stored accumulated: each step holds everything in force from its
/// `after` on (a language dropped at 5 minutes stays dropped at 30), so
/// the router applies only the latest step reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelaxStep {
    pub name: String,
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Ignore the preferred language.
    pub drop_language: bool,
    /// Accept skill levels this much lower (never below 1).
    pub lower_skill_levels: u8,
    /// Any associate of the queue/team, whatever their skills.
    pub drop_skills: bool,
}

/// Why a condition held: the field looked at and what matched in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Because {
    pub field: String,
    pub value: String,
}

/// One rule that matched, why, and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub rule: String,
    pub because: Vec<Because>,
    pub actions: Vec<String>,
}

/// What the rules decided about an inquiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub urgency: Urgency,
    /// Required skills with their minimum level (1..=5).
    pub skills: BTreeMap<String, u8>,
    /// Preferred language: a rule's `prefer_language`, else the primary
    /// subtag of the language the message declared.
    pub language: Option<String>,
    /// Queue / team.
    pub queue: Option<String>,
    pub tags: Vec<String>,
    /// First-response target: the shortest a matching rule set, else the
    /// file's default for the urgency.
    #[serde(with = "humantime_serde")]
    pub sla: Option<Duration>,
    /// The acknowledgement template; `None` is the default (`ack`).
    pub ack_template: Option<String>,
    /// Set when a rule suppressed the acknowledgement: the reason.
    pub suppress_ack: Option<String>,
    /// The name of the relaxation ladder chosen.
    pub relaxation_ladder: String,
    pub relaxation: Vec<RelaxStep>,
    pub trace: Vec<RuleMatch>,
}

/// A compiled, immutable rules file. Share it with `Arc`.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    schedules: BTreeMap<String, Arc<Schedule>>,
    sla: BTreeMap<Urgency, Duration>,
    ladders: BTreeMap<String, Vec<RelaxStep>>,
}

impl RuleSet {
    /// No rules: everything is `normal`, no skills, no SLA, no ladder.
    pub fn empty() -> RuleSet {
        RuleSet::default()
    }

    /// Reads and compiles `path`; nothing is half-loaded.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<RuleSet, Vec<RuleProblem>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![RuleProblem {
                file: path.to_path_buf(),
                rule: None,
                key: String::new(),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    "rules file not found".to_owned()
                } else {
                    format!("cannot read the rules file: {e}")
                },
            }]
        })?;
        Self::from_str(&text, path, catalog)
    }

    /// Compiles the text of a rules file; `file` names it in problems.
    pub fn from_str(
        text: &str,
        file: &Path,
        catalog: &Catalog,
    ) -> Result<RuleSet, Vec<RuleProblem>> {
        compile::compile(text, catalog).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| RuleProblem {
                    file: file.to_path_buf(),
                    rule: p.rule,
                    key: p.key,
                    message: p.message,
                })
                .collect()
        })
    }

    /// The default first-response target for `urgency`.
    pub fn sla_for(&self, urgency: Urgency) -> Option<Duration> {
        self.sla.get(&urgency).copied()
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// A named business-hours schedule from the file.
    pub fn schedule(&self, name: &str) -> Option<&Arc<Schedule>> {
        self.schedules.get(name)
    }

    /// A relaxation ladder by name.
    pub fn ladder(&self, name: &str) -> Option<&[RelaxStep]> {
        self.ladders.get(name).map(Vec::as_slice)
    }

    /// Applies every matching rule in order (until one says `stop`).
    pub fn evaluate(&self, facts: &Facts<'_>) -> Classification {
        let prepared = compile::Prepared::new(facts);
        let mut c = Classification {
            urgency: Urgency::Normal,
            skills: BTreeMap::new(),
            language: facts
                .message
                .language
                .as_deref()
                .map(compile::primary_language),
            queue: None,
            tags: Vec::new(),
            sla: None,
            ack_template: None,
            suppress_ack: None,
            relaxation_ladder: DEFAULT_LADDER.to_owned(),
            relaxation: Vec::new(),
            trace: Vec::new(),
        };
        let mut rule_sla: Option<Duration> = None;
        for rule in &self.rules {
            let Some(because) = rule.matches(&prepared) else {
                continue;
            };
            let actions = rule.apply(&mut c, &mut rule_sla);
            c.trace.push(RuleMatch {
                rule: rule.name().to_owned(),
                because,
                actions,
            });
            if rule.stops() {
                break;
            }
        }
        c.sla = rule_sla.or_else(|| self.sla_for(c.urgency));
        c.relaxation = self
            .ladders
            .get(&c.relaxation_ladder)
            .cloned()
            .unwrap_or_default();
        c
    }
}

#[cfg(test)]
mod tests;
