//! The rules file as written (`config/rules.toml`), before validation.
//!
//! The file is read in two steps so that one mistake does not hide the
//! next: TOML syntax first, then every section and every `[[rule]]` on its
//! own, so each unknown field or wrong type is reported with its rule's
//! name and the path of the key inside it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::hours::ScheduleSpec;
use crate::inquiry::Urgency;

/// One string or a list of strings: `language = "de"` or `language = ["de", "en"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[sla]`: default first-response targets per urgency.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaFile {
    #[serde(default, with = "humantime_serde")]
    pub critical: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub high: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub normal: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub low: Option<Duration>,
}

/// One step of a `[relaxation]` ladder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaxStepFile {
    /// Shown in decisions; defaults to `<ladder>.<n>`.
    pub name: Option<String>,
    /// How long the inquiry has waited when this step applies.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    #[serde(default)]
    pub drop_language: bool,
    #[serde(default)]
    pub lower_skill_levels: u8,
    #[serde(default)]
    pub drop_skills: bool,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: String,
    /// Free text for the people reading the file.
    #[serde(default)]
    pub description: Option<String>,
    /// Conditions; all must hold. Without `when` the rule always matches.
    #[serde(default)]
    pub when: Option<CondFile>,
    // Actions.
    #[serde(default)]
    pub urgency: Option<Urgency>,
    #[serde(default)]
    pub raise_urgency: Option<u8>,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub prefer_language: Option<String>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub sla: Option<Duration>,
    #[serde(default)]
    pub ack: Option<String>,
    #[serde(default)]
    pub suppress_ack: Option<String>,
    #[serde(default)]
    pub relaxation: Option<String>,
    #[serde(default)]
    pub stop: bool,
}

/// A condition table: every key given must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondFile {
    /// `generic` (any instance of the adapter) or `generic/website`.
    pub channel: Option<OneOrMany>,
    /// `email`, `sms`, `voice`, `chat`, `generic`.
    pub medium: Option<OneOrMany>,
    pub from_email: Option<OneOrMany>,
    pub from_domain: Option<OneOrMany>,
    pub from_phone: Option<OneOrMany>,
    pub from_handle: Option<OneOrMany>,
    /// Keywords searched in the subject or the text.
    pub contains: Option<OneOrMany>,
    pub subject_contains: Option<OneOrMany>,
    pub text_contains: Option<OneOrMany>,
    /// Regular expressions searched in the subject or the text.
    pub matches: Option<OneOrMany>,
    pub subject_matches: Option<OneOrMany>,
    pub text_matches: Option<OneOrMany>,
    pub language: Option<OneOrMany>,
    pub customer_tags: Option<OneOrMany>,
    pub attachment: Option<bool>,
    pub in_hours: Option<String>,
    pub outside_hours: Option<String>,
    pub any: Option<Vec<CondFile>>,
    pub all: Option<Vec<CondFile>>,
    pub not: Option<Box<CondFile>>,
}

/// The whole file, each part parsed on its own.
#[derive(Debug, Default)]
pub struct RulesFile {
    pub sla: SlaFile,
    pub hours: BTreeMap<String, ScheduleSpec>,
    pub relaxation: BTreeMap<String, Vec<RelaxStepFile>>,
    pub rules: Vec<RuleFile>,
    /// `[hours.<name>]` entries that could not be read (already reported).
    pub broken_hours: BTreeSet<String>,
    /// `[relaxation]` ladders that could not be read (already reported).
    pub broken_ladders: BTreeSet<String>,
}

/// A problem found while reading: the rule (by name, or `#n` when it has
/// none), the key path and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadProblem {
    pub rule: Option<String>,
    pub key: String,
    pub message: String,
}

const SECTIONS: &str = "`sla`, `hours`, `relaxation` and `rule`";

impl RulesFile {
    /// Parses `text`. A TOML syntax error is the only problem reported
    /// (`Err`); otherwise every part that could be read, with the problems
    /// of the parts that could not, so validation can go on and report
    /// everything at once.
    pub fn parse(text: &str) -> Result<(RulesFile, Vec<ReadProblem>), Vec<ReadProblem>> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            vec![ReadProblem {
                rule: None,
                key: String::new(),
                message: format!("TOML syntax: {}", e.to_string().trim_end()),
            }]
        })?;
        let mut out = RulesFile::default();
        let mut problems = Vec::new();
        for (section, value) in table {
            match section.as_str() {
                "sla" => match de::<SlaFile>(value, "sla") {
                    Ok(sla) => out.sla = sla,
                    Err(p) => problems.push(p.global()),
                },
                "hours" => match into_table(value, "hours") {
                    Ok(t) => {
                        for (name, v) in t {
                            match de::<ScheduleSpec>(v, &format!("hours.{name}")) {
                                Ok(spec) => {
                                    out.hours.insert(name, spec);
                                }
                                Err(p) => {
                                    out.broken_hours.insert(name);
                                    problems.push(p.global())
                                }
                            }
                        }
                    }
                    Err(p) => problems.push(p.global()),
                },
                "relaxation" => match into_table(value, "relaxation") {
                    Ok(t) => {
                        for (name, v) in t {
                            match de::<Vec<RelaxStepFile>>(v, &format!("relaxation.{name}")) {
                                Ok(steps) => {
                                    out.relaxation.insert(name, steps);
                                }
                                Err(p) => {
                                    out.broken_ladders.insert(name);
                                    problems.push(p.global())
                                }
                            }
                        }
                    }
                    Err(p) => problems.push(p.global()),
                },
                "rule" => {
                    let toml::Value::Array(items) = value else {
                        problems.push(ReadProblem {
                            rule: None,
                            key: "rule".into(),
                            message: "write each rule as a `[[rule]]` table".into(),
                        });
                        continue;
                    };
                    for (i, item) in items.into_iter().enumerate() {
                        let name = item
                            .get("name")
                            .and_then(|n| n.as_str())
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("#{}", i + 1));
                        match de::<RuleFile>(item, "") {
                            Ok(rule) => out.rules.push(rule),
                            Err(p) => problems.push(ReadProblem {
                                rule: Some(name),
                                key: p.0,
                                message: p.1,
                            }),
                        }
                    }
                }
                other => problems.push(ReadProblem {
                    rule: None,
                    key: other.to_owned(),
                    message: format!("unknown section: the file has {SECTIONS}"),
                }),
            }
        }
        Ok((out, problems))
    }
}

/// A key path and a message.
struct KeyProblem(String, String);

impl KeyProblem {
    fn global(self) -> ReadProblem {
        ReadProblem {
            rule: None,
            key: self.0,
            message: self.1,
        }
    }
}

fn into_table(value: toml::Value, key: &str) -> Result<toml::Table, KeyProblem> {
    match value {
        toml::Value::Table(t) => Ok(t),
        other => Err(KeyProblem(
            key.to_owned(),
            format!("expected a table, found {}", other.type_str()),
        )),
    }
}

/// Deserializes `value`, naming the path of the first problem under `prefix`.
fn de<T: DeserializeOwned>(value: toml::Value, prefix: &str) -> Result<T, KeyProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let key = match (prefix.is_empty(), path.is_empty()) {
            (_, true) => prefix.to_owned(),
            (true, false) => path,
            (false, false) => format!("{prefix}.{path}"),
        };
        // toml appends "in `path`" on a line of its own; the key says it.
        let message = e.into_inner().to_string();
        let message = match message.rsplit_once("\nin `") {
            Some((head, _)) => head,
            None => &message,
        };
        KeyProblem(key, message.trim_end().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_section() {
        let (f, problems) = RulesFile::parse(
            r#"
            [sla]
            critical = "15m"
            [hours.office]
            timezone = "Europe/Berlin"
            open = ["mon-fri 08:00-18:00"]
            [relaxation]
            default = [{ after = "5m", drop_language = true }]
            [[rule]]
            name = "fraud"
            when.contains = ["betrug", "fraud"]
            when.not = { language = "fr" }
            urgency = "critical"
            skills = ["fraud>=3"]
            stop = true
            "#,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(f.sla.critical, Some(Duration::from_secs(900)));
        assert!(f.hours.contains_key("office"));
        assert_eq!(f.relaxation["default"].len(), 1);
        assert_eq!(f.rules[0].name, "fraud");
        assert_eq!(f.rules[0].urgency, Some(Urgency::Critical));
        let when = f.rules[0].when.as_ref().unwrap();
        assert!(when.contains.is_some() && when.not.is_some());
    }

    #[test]
    fn every_rule_reports_its_own_problem_with_a_path() {
        let (_, problems) = RulesFile::parse(
            r#"
            [sla]
            urgent = "1h"
            [[rule]]
            name = "a"
            when.any = [{ text_contains = "x" }, { textt = "y" }]
            [[rule]]
            name = "b"
            urgency = "urgent"
            [[rule]]
            skills = "billing"
            [oops]
            "#,
        )
        .unwrap();
        let got: Vec<_> = problems
            .iter()
            .map(|p| (p.rule.clone(), p.key.clone()))
            .collect();
        assert_eq!(got.len(), 5, "{problems:#?}");
        assert_eq!(got[0], (None, "oops".to_string()));
        assert_eq!(got[1].0, Some("a".to_string()));
        assert!(got[1].1.starts_with("when.any[1]"), "{got:?}");
        assert!(problems[1].message.contains("textt"), "{problems:?}");
        assert_eq!(got[2], (Some("b".to_string()), "urgency".to_string()));
        assert_eq!(got[3].0, Some("#3".to_string()));
        assert_eq!(got[3].1, "skills");
        // Sections are read in alphabetical order.
        assert_eq!(got[4], (None, "sla.urgent".to_string()));
        assert!(!problems[2].message.contains("\nin `"), "{problems:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let problems = RulesFile::parse("[[rule]]\nname = \n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
    }
}
