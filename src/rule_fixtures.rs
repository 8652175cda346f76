//! `switchboard test-rules`: rule fixtures, so ops can unit-test the rules
//! before deploying them.
//!
//! A fixture is a TOML file: a message in the generic webhook's JSON shape
//! (written as a TOML table, or as a JSON string), optionally the time it
//! arrives and the customer's tags, and what the rules should decide. Only
//! the expectations written are checked.
//!
//! ```toml
//! description = "A blocked card reported in German is urgent"
//! at = "2026-11-27T10:00:00+01:00"     # default: now
//! customer_tags = ["vip"]              # default: none
//! channel = "generic/website"          # default: the first generic channel configured
//! medium = "email"                     # default: the adapter's (generic)
//!
//! [message]
//! id = "fx-1"
//! text = "Meine Karte ist gesperrt"
//! language = "de"
//! from = { name = "Ada", email = "ada@example.org" }
//!
//! [expect]
//! urgency = "high"
//! skills = ["billing>=3"]      # exactly these; [] for none
//! queue = "security"           # "" for none
//! tags = ["blocked-account"]   # exactly these (any order)
//! tags_include = ["vip"]       # at least these
//! ack = "ack-urgent"           # the template name; "ack" is the default
//! suppress_ack = false         # true (any reason), false, or the reason
//! language = "de"              # "" for none
//! sla = "1h"
//! rules = ["billing", "blocked-account"]   # the rules that matched, in order
//! relaxation = "urgent"        # the ladder
//! associate = "anna"           # who it would be offered to; "" for nobody
//!
//! [roster]                     # only with `expect.associate`
//! presence = { anna = "away", ben = "offline" }   # everyone else available
//! ```
//!
//! An `associate` expectation runs the message through the rules and the
//! routing engine ([`crate::dry_run`]) against the configured roster at the
//! message's time, with everyone available unless `[roster]` says
//! otherwise and nobody carrying work.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::channels::generic::GenericChannel;
use crate::config::Settings;
use crate::dry_run::{DryRun, dry_run};
use crate::inquiry::{Medium, NewMessage, Urgency};
use crate::routing::Presence;
use crate::rules::{Classification, Facts};
use crate::templates::DEFAULT_ACK;

/// The folder `test-rules` reads when none is given, next to the config file.
pub const DEFAULT_DIR: &str = "rules.tests";

/// The fixture folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FixtureDirError {
    #[error("cannot read fixture folder {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("no fixtures (*.toml) in {0}")]
    Empty(PathBuf),
}

/// One fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(default)]
    pub description: Option<String>,
    /// RFC 3339, as a string or a TOML date-time with an offset.
    #[serde(default)]
    pub at: Option<toml::Value>,
    #[serde(default)]
    pub customer_tags: Vec<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub medium: Option<Medium>,
    /// The generic webhook body: a table, or a string of JSON.
    pub message: toml::Value,
    /// The roster's state for an `associate` expectation.
    #[serde(default)]
    pub roster: RosterSnapshot,
    #[serde(default)]
    pub expect: Expect,
}

/// `[roster]`: presence of the associates it names; everyone else is
/// available.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterSnapshot {
    #[serde(default)]
    pub presence: BTreeMap<String, Presence>,
}

/// What the fixture expects; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub urgency: Option<Urgency>,
    pub skills: Option<Vec<String>>,
    pub queue: Option<String>,
    pub tags: Option<Vec<String>>,
    pub tags_include: Option<Vec<String>>,
    pub ack: Option<String>,
    pub suppress_ack: Option<SuppressExpectation>,
    pub language: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub sla: Option<Duration>,
    pub rules: Option<Vec<String>>,
    pub relaxation: Option<String>,
    /// Who routing would offer it to; `""` for nobody (it would wait).
    pub associate: Option<String>,
}

/// `suppress_ack = true | false | "reason"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SuppressExpectation {
    Any(bool),
    Reason(String),
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: &'static str,
    pub expected: String,
    pub got: String,
    /// For sets: what is missing and what is extra.
    pub note: Option<String>,
}

/// The result of one fixture.
#[derive(Debug, Clone)]
pub enum Outcome {
    Pass,
    Fail {
        diffs: Vec<FieldDiff>,
        /// The rules that matched, with why, for the report.
        trace: Vec<String>,
        /// With a wrong `associate`: the routing decision's candidates and
        /// exclusions, one line each.
        routing: Vec<String>,
    },
    /// The fixture itself is wrong (bad TOML, bad message, bad expectation).
    Error(String),
}

#[derive(Debug, Clone)]
pub struct FixtureReport {
    pub file: PathBuf,
    pub description: Option<String>,
    pub outcome: Outcome,
}

impl FixtureReport {
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Pass)
    }
}

/// Runs every `*.toml` in `dir` (sorted by name) against `settings.rules`.
pub fn run_dir(settings: &Settings, dir: &Path) -> Result<Vec<FixtureReport>, FixtureDirError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FixtureDirError::Read(dir.to_owned(), e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(FixtureDirError::Empty(dir.to_owned()));
    }
    Ok(files.iter().map(|f| run_file(settings, f)).collect())
}

/// Runs one fixture file.
pub fn run_file(settings: &Settings, file: &Path) -> FixtureReport {
    let report = |description, outcome| FixtureReport {
        file: file.to_owned(),
        description,
        outcome,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return report(None, Outcome::Error(format!("cannot read: {e}"))),
    };
    let fixture: Fixture = match toml::from_str(&text) {
        Ok(f) => f,
        Err(e) => return report(None, Outcome::Error(e.to_string().trim_end().to_owned())),
    };
    let description = fixture.description.clone();
    let outcome = match message(settings, &fixture).and_then(|m| {
        let routed = route(settings, &fixture, &m)?;
        Ok((evaluate(settings, &fixture, &m), routed))
    }) {
        Ok((c, routed)) => {
            let outcome = check(&fixture.expect, &c);
            match routed {
                Some(r) => check_routing(&fixture.expect, &c, &r, outcome),
                None => outcome,
            }
        }
        Err(e) => Outcome::Error(e),
    };
    report(description, outcome)
}

fn parse_at(value: &toml::Value) -> Result<DateTime<Utc>, String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err(format!(
                "`at`: expected a date-time, found {}",
                other.type_str()
            ));
        }
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| {
            format!("`at`: `{text}` is not an RFC 3339 time with offset, e.g. 2026-11-27T10:00:00+01:00 ({e})")
        })
}

/// Builds the message and evaluates the rules on it.
pub fn classify(settings: &Settings, fixture: &Fixture) -> Result<Classification, String> {
    let message = message(settings, fixture)?;
    Ok(evaluate(settings, fixture, &message))
}

fn evaluate(settings: &Settings, fixture: &Fixture, message: &NewMessage) -> Classification {
    settings.rules.evaluate(&Facts {
        message,
        customer_tags: &fixture.customer_tags,
        at: message.received_at,
    })
}

/// Routes the message when the fixture expects an associate: the
/// configured roster at the message's time, with the fixture's presence.
fn route(
    settings: &Settings,
    fixture: &Fixture,
    message: &NewMessage,
) -> Result<Option<DryRun>, String> {
    if fixture.expect.associate.is_none() {
        if !fixture.roster.presence.is_empty() {
            return Err("`roster`: a roster snapshot needs `expect.associate`".into());
        }
        return Ok(None);
    }
    let unknown: Vec<&str> = fixture
        .roster
        .presence
        .keys()
        .filter(|id| settings.roster.associates.iter().all(|a| &a.id != *id))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "`roster.presence`: not on the roster: {}",
            unknown.join(", ")
        ));
    }
    if let Some(a) = fixture.expect.associate.as_deref()
        && !a.is_empty()
        && settings.roster.associates.iter().all(|x| x.id != a)
    {
        return Err(format!("`expect.associate`: `{a}` is not on the roster"));
    }
    Ok(Some(dry_run(settings, message, &fixture.roster.presence)))
}

/// The message the fixture describes, as the generic channel parses it,
/// carrying the fixture's customer tags as routing would see them.
fn message(settings: &Settings, fixture: &Fixture) -> Result<NewMessage, String> {
    let at = match &fixture.at {
        Some(v) => parse_at(v)?,
        None => Utc::now(),
    };
    let channel = crate::dry_run::replay_channel(settings, fixture.channel.as_deref())
        .map_err(|e| format!("`channel`: {e}"))?;
    let body = match &fixture.message {
        toml::Value::String(json) => json.clone().into_bytes(),
        toml::Value::Table(t) => serde_json::to_vec(t).map_err(|e| format!("`message`: {e}"))?,
        other => {
            return Err(format!(
                "`message`: expected a table (or a JSON string), found {}",
                other.type_str()
            ));
        }
    };
    let mut message =
        GenericChannel::parse_body(&channel, &body, at).map_err(|e| format!("`message`: {e}"))?;
    if let Some(m) = fixture.medium {
        message.medium = m;
    }
    if !fixture.customer_tags.is_empty() {
        // What the pipeline (and so the dry run) reads the tags from.
        if !message.metadata.is_object() {
            message.metadata = serde_json::json!({});
        }
        message.metadata["customer_tags"] = serde_json::json!(fixture.customer_tags);
    }
    Ok(message)
}

fn show_list<T: AsRef<str>>(items: &[T]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn show_opt(v: Option<&str>) -> String {
    v.map_or_else(|| "(none)".to_owned(), str::to_owned)
}

fn set_note(expected: &BTreeSet<String>, got: &BTreeSet<String>) -> Option<String> {
    let missing: Vec<_> = expected.difference(got).map(String::as_str).collect();
    let extra: Vec<_> = got.difference(expected).map(String::as_str).collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        parts.push(format!("unexpected {}", extra.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn skills_text(skills: &BTreeMap<String, u8>) -> Vec<String> {
    skills.iter().map(|(s, l)| format!("{s}>={l}")).collect()
}

/// Compares a classification with the expectations.
pub fn check(expect: &Expect, got: &Classification) -> Outcome {
    let mut diffs = Vec::new();
    let mut diff = |field, expected: String, got: String, note: Option<String>| {
        diffs.push(FieldDiff {
            field,
            expected,
            got,
            note,
        })
    };
    if let Some(u) = expect.urgency
        && u != got.urgency
    {
        diff(
            "urgency",
            u.as_str().into(),
            got.urgency.as_str().into(),
            None,
        );
    }
    if let Some(list) = &expect.skills {
        let mut wanted = BTreeMap::new();
        for s in list {
            let parsed = s
                .split_once(">=")
                .map(|(n, l)| (n.trim().to_owned(), l.trim().parse::<u8>().ok()))
                .unwrap_or_else(|| (s.trim().to_owned(), Some(1)));
            match parsed {
                (name, Some(level)) => {
                    wanted.insert(name, level);
                }
                (_, None) => {
                    return Outcome::Error(format!(
                        "`expect.skills`: `{s}` is not `name>=level` or `name`"
                    ));
                }
            }
        }
        if wanted != got.skills {
            let (e, g) = (skills_text(&wanted), skills_text(&got.skills));
            let note = set_note(&e.iter().cloned().collect(), &g.iter().cloned().collect());
            diff("skills", show_list(&e), show_list(&g), note);
        }
    }
    let none_if_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    if let Some(q) = &expect.queue
        && none_if_empty(q) != got.queue
    {
        diff(
            "queue",
            show_opt(none_if_empty(q).as_deref()),
            show_opt(got.queue.as_deref()),
            None,
        );
    }
    if let Some(tags) = &expect.tags {
        let (e, g): (BTreeSet<String>, BTreeSet<String>) = (
            tags.iter().cloned().collect(),
            got.tags.iter().cloned().collect(),
        );
        if e != g {
            diff(
                "tags",
                show_list(tags),
                show_list(&got.tags),
                set_note(&e, &g),
            );
        }
    }
    if let Some(tags) = &expect.tags_include {
        let missing: Vec<&String> = tags.iter().filter(|t| !got.tags.contains(t)).collect();
        if !missing.is_empty() {
            diff(
                "tags_include",
                show_list(tags),
                show_list(&got.tags),
                Some(format!(
                    "missing {}",
                    show_list(&missing).trim_matches(['[', ']'])
                )),
            );
        }
    }
    if let Some(a) = &expect.ack {
        let effective = got.ack_template.as_deref().unwrap_or(DEFAULT_ACK);
        if a != effective {
            diff("ack", a.clone(), effective.to_owned(), None);
        }
    }
    if let Some(s) = &expect.suppress_ack {
        let ok = match (s, &got.suppress_ack) {
            (SuppressExpectation::Any(b), g) => *b == g.is_some(),
            (SuppressExpectation::Reason(r), Some(g)) => r == g,
            (SuppressExpectation::Reason(_), None) => false,
        };
        if !ok {
            let expected = match s {
                SuppressExpectation::Any(true) => "suppressed (any reason)".to_owned(),
                SuppressExpectation::Any(false) => "not suppressed".to_owned(),
                SuppressExpectation::Reason(r) => format!("suppressed: {r}"),
            };
            let g = match &got.suppress_ack {
                Some(r) => format!("suppressed: {r}"),
                None => "not suppressed".to_owned(),
            };
            diff("suppress_ack", expected, g, None);
        }
    }
    if let Some(l) = &expect.language
        && none_if_empty(l) != got.language
    {
        diff(
            "language",
            show_opt(none_if_empty(l).as_deref()),
            show_opt(got.language.as_deref()),
            None,
        );
    }
    if let Some(d) = expect.sla
        && Some(d) != got.sla
    {
        diff(
            "sla",
            humantime::format_duration(d).to_string(),
            got.sla.map_or_else(
                || "(none)".to_owned(),
                |d| humantime::format_duration(d).to_string(),
            ),
            None,
        );
    }
    if let Some(rules) = &expect.rules {
        let matched: Vec<&str> = got.trace.iter().map(|m| m.rule.as_str()).collect();
        if *rules != matched {
            diff("rules", show_list(rules), show_list(&matched), None);
        }
    }
    if let Some(l) = &expect.relaxation
        && *l != got.relaxation_ladder
    {
        diff("relaxation", l.clone(), got.relaxation_ladder.clone(), None);
    }
    if diffs.is_empty() {
        return Outcome::Pass;
    }
    Outcome::Fail {
        diffs,
        trace: trace_lines(got),
        routing: Vec::new(),
    }
}

fn show_associate(a: Option<&str>) -> String {
    a.map_or_else(|| "(nobody: it would wait)".to_owned(), str::to_owned)
}

/// Adds the `associate` expectation's verdict on `got` to `outcome`, what
/// [`check`] said of the rules' classification `rules`.
pub fn check_routing(
    expect: &Expect,
    rules: &Classification,
    got: &DryRun,
    outcome: Outcome,
) -> Outcome {
    let Some(wanted) = &expect.associate else {
        return outcome;
    };
    let wanted = (!wanted.is_empty()).then_some(wanted.as_str());
    if wanted == got.associate() {
        return outcome;
    }
    let why = &got.decision.explanation;
    let mut routing = Vec::new();
    if let Some(step) = why["relaxation_step"].as_str() {
        routing.push(format!("relaxation step {step}"));
    }
    for c in why["candidates"].as_array().into_iter().flatten() {
        routing.push(format!(
            "candidate {}: score {}, skill fit {}, load {}{}",
            c["associate"].as_str().unwrap_or("?"),
            c["score"],
            c["skill_fit"],
            c["load"],
            if c["sticky"] == true { ", sticky" } else { "" },
        ));
    }
    for x in why["excluded"].as_array().into_iter().flatten() {
        routing.push(format!(
            "excluded {}: {}",
            x["associate"].as_str().unwrap_or("?"),
            x["reason"].as_str().unwrap_or("?")
        ));
    }
    if why.get("excluded").is_none() {
        for f in why["filters"].as_array().into_iter().flatten() {
            routing.push(format!(
                "filter {}: {} left",
                f["filter"].as_str().unwrap_or("?"),
                f["left"]
            ));
        }
    }
    let diff = FieldDiff {
        field: "associate",
        expected: show_associate(wanted),
        got: show_associate(got.associate()),
        note: None,
    };
    match outcome {
        Outcome::Pass => Outcome::Fail {
            diffs: vec![diff],
            trace: trace_lines(rules),
            routing,
        },
        Outcome::Fail {
            mut diffs, trace, ..
        } => {
            diffs.push(diff);
            Outcome::Fail {
                diffs,
                trace,
                routing,
            }
        }
        e @ Outcome::Error(_) => e,
    }
}

/// The rules that matched, with why, one line each.
fn trace_lines(got: &Classification) -> Vec<String> {
    got.trace
        .iter()
        .map(|m| {
            let why: Vec<String> = m
                .because
                .iter()
                .map(|b| format!("{} {}", b.field, b.value))
                .collect();
            format!("{}: {}", m.rule, why.join("; "))
        })
        .collect()
}

/// The human-readable report: one line per fixture, a diff under each
/// failure, a summary line.
pub fn render(reports: &[FixtureReport]) -> String {
    let mut out = String::new();
    let name = |r: &FixtureReport| {
        r.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.file.display().to_string())
    };
    for r in reports {
        let desc = r
            .description
            .as_deref()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default();
        match &r.outcome {
            Outcome::Pass => {
                let _ = writeln!(out, "PASS  {}{desc}", name(r));
            }
            Outcome::Error(e) => {
                let _ = writeln!(out, "ERROR {}{desc}", name(r));
                for line in e.lines() {
                    let _ = writeln!(out, "      {line}");
                }
            }
            Outcome::Fail {
                diffs,
                trace,
                routing,
            } => {
                let _ = writeln!(out, "FAIL  {}{desc}", name(r));
                for d in diffs {
                    let _ = writeln!(out, "      {}:", d.field);
                    let _ = writeln!(out, "        expected: {}", d.expected);
                    let _ = writeln!(out, "        got:      {}", d.got);
                    if let Some(n) = &d.note {
                        let _ = writeln!(out, "        ({n})");
                    }
                }
                if trace.is_empty() {
                    let _ = writeln!(out, "      no rule matched");
                } else {
                    let _ = writeln!(out, "      rules that matched:");
                    for t in trace {
                        let _ = writeln!(out, "        {t}");
                    }
                }
                if !routing.is_empty() {
                    let _ = writeln!(out, "      routing:");
                    for line in routing {
                        let _ = writeln!(out, "        {line}");
                    }
                }
            }
        }
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    let failed = reports.len() - passed;
    let _ = writeln!(
        out,
        "\n{} fixture(s): {passed} passed, {failed} failed",
        reports.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleMatch;

    fn classification() -> Classification {
        Classification {
            urgency: Urgency::High,
            skills: BTreeMap::from([("billing".into(), 3)]),
            language: Some("de".into()),
            queue: Some("payments".into()),
            tags: vec!["failed-transfer".into(), "web-form".into()],
            sla: Some(Duration::from_secs(3600)),
            ack_template: Some("ack-urgent".into()),
            suppress_ack: None,
            relaxation_ladder: "urgent".into(),
            relaxation: Vec::new(),
            trace: vec![RuleMatch {
                rule: "failed-transfer".into(),
                because: Vec::new(),
                actions: Vec::new(),
            }],
        }
    }

    fn expect(text: &str) -> Expect {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn matching_expectations_pass() {
        let e = expect(
            r#"
            urgency = "high"
            skills = ["billing>=3"]
            queue = "payments"
            tags = ["web-form", "failed-transfer"]
            tags_include = ["web-form"]
            ack = "ack-urgent"
            suppress_ack = false
            language = "de"
            sla = "1h"
            rules = ["failed-transfer"]
            relaxation = "urgent"
            "#,
        );
        assert!(matches!(check(&e, &classification()), Outcome::Pass));
        assert!(matches!(
            check(&Expect::default(), &classification()),
            Outcome::Pass
        ));
    }

    #[test]
    fn differences_are_listed_per_field() {
        let e = expect(
            r#"
            urgency = "critical"
            skills = ["billing>=4", "technical"]
            queue = ""
            tags = ["failed-transfer", "vip"]
            ack = "ack"
            suppress_ack = true
            "#,
        );
        let Outcome::Fail { diffs, trace, .. } = check(&e, &classification()) else {
            panic!("expected a failure");
        };
        let fields: Vec<_> = diffs.iter().map(|d| d.field).collect();
        assert_eq!(
            fields,
            ["urgency", "skills", "queue", "tags", "ack", "suppress_ack"]
        );
        assert_eq!(diffs[0].expected, "critical");
        assert_eq!(diffs[0].got, "high");
        assert_eq!(
            diffs[1].note.as_deref(),
            Some("missing billing>=4, technical>=1; unexpected billing>=3")
        );
        assert_eq!(diffs[2].expected, "(none)");
        assert_eq!(
            diffs[3].note.as_deref(),
            Some("missing vip; unexpected web-form")
        );
        assert_eq!(trace, ["failed-transfer: "]);
        let text = render(&[FixtureReport {
            file: "x.toml".into(),
            description: Some("d".into()),
            outcome: Outcome::Fail {
                diffs,
                trace,
                routing: Vec::new(),
            },
        }]);
        assert!(text.starts_with("FAIL  x.toml — d\n      urgency:\n        expected: critical\n        got:      high\n"), "{text}");
        assert!(
            text.ends_with("1 fixture(s): 0 passed, 1 failed\n"),
            "{text}"
        );
    }

    fn routed(winner: Option<&str>) -> DryRun {
        use crate::routing::engine::Decision;
        use crate::store::{AckPlan, Classified};
        DryRun {
            ack: AckPlan::Skip {
                reason: "test".into(),
            },
            classified: Classified {
                urgency: Urgency::High,
                requirements: Default::default(),
                sla_due_at: None,
                trace: String::new(),
            },
            decision: Decision {
                winner: winner.map(str::to_owned),
                explanation: serde_json::json!({
                    "relaxation_step": "urgent.1",
                    "candidates": [{"associate": "ben", "score": 91.0, "skill_fit": 0.8, "load": 0.0, "sticky": true}],
                    "excluded": [{"associate": "anna", "reason": "away"}],
                }),
            },
        }
    }

    #[test]
    fn associate_expectations_add_to_the_rules_verdict() {
        let c = classification();
        let e = expect("associate = \"ben\"");
        let ok = check(&e, &c);
        assert!(matches!(
            check_routing(&e, &c, &routed(Some("ben")), ok),
            Outcome::Pass
        ));
        let nobody = expect("associate = \"\"");
        let Outcome::Fail { diffs, routing, .. } =
            check_routing(&nobody, &c, &routed(Some("ben")), Outcome::Pass)
        else {
            panic!("expected a failure");
        };
        assert_eq!(diffs[0].expected, "(nobody: it would wait)");
        assert_eq!(diffs[0].got, "ben");
        assert_eq!(
            routing,
            [
                "relaxation step urgent.1",
                "candidate ben: score 91.0, skill fit 0.8, load 0.0, sticky",
                "excluded anna: away",
            ]
        );

        // A rules failure keeps its diffs and trace; the associate's comes last.
        let both = expect("urgency = \"low\"\nassociate = \"anna\"");
        let rules_said = check(&both, &c);
        let Outcome::Fail {
            diffs,
            trace,
            routing,
        } = check_routing(&both, &c, &routed(None), rules_said)
        else {
            panic!("expected a failure");
        };
        let fields: Vec<_> = diffs.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["urgency", "associate"]);
        assert_eq!(diffs[1].got, "(nobody: it would wait)");
        assert_eq!(trace, ["failed-transfer: "]);
        let text = render(&[FixtureReport {
            file: "x.toml".into(),
            description: None,
            outcome: Outcome::Fail {
                diffs,
                trace,
                routing,
            },
        }]);
        assert!(
            text.contains("      routing:\n        relaxation step urgent.1\n"),
            "{text}"
        );
    }

    #[test]
    fn unknown_expectations_are_errors() {
        assert!(toml::from_str::<Expect>("urgencyy = \"high\"").is_err());
    }
}
