//! The roster: who the associates are, what they can do, how much they can
//! take per medium, when they work and how they are told about work.
//! Ops own the file (`roster.path`, default `config/roster.toml`); presence
//! is runtime state and lives in the store, not here.
//!
//! ```toml
//! [[associate]]
//! id = "anna"
//! name = "Anna Becker"
//! email = "anna@bank.example"
//! team = "payments"
//! languages = ["de", "en"]
//! skills = { billing = 4, fraud = 5 }
//! capacity = { email = 4, chat = 2 }
//! hours = "berlin-office"          # a schedule from [hours.*]
//! notify = "email"                 # or "webhook" with notify_webhook = "https://…", or "none"
//! token_env = "SWITCHBOARD_TOKEN_ANNA"
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::secret::SecretSource;
use crate::inquiry::Medium;
use crate::rules::hours::{Schedule, ScheduleSpec};

/// When an associate works. Implemented by the rules' business-hours
/// schedules, so the roster and the rules share one format.
pub trait WorkingHours: Send + Sync + fmt::Debug {
    fn is_open(&self, at: DateTime<Utc>) -> bool;
}

/// Media in capacity order; `Medium as usize` indexes capacity arrays.
pub const MEDIA: [Medium; 5] = [
    Medium::Email,
    Medium::Sms,
    Medium::Voice,
    Medium::Chat,
    Medium::Generic,
];

pub fn medium_index(m: Medium) -> usize {
    match m {
        Medium::Email => 0,
        Medium::Sms => 1,
        Medium::Voice => 2,
        Medium::Chat => 3,
        Medium::Generic => 4,
    }
}

/// Work an associate can hold at once, per medium.
///
/// A table in the file names the media an associate takes; those it leaves
/// out are 0. Without any table the built-in default applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    #[serde(default)]
    pub email: u16,
    #[serde(default)]
    pub sms: u16,
    #[serde(default)]
    pub voice: u16,
    #[serde(default)]
    pub chat: u16,
    #[serde(default)]
    pub generic: u16,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            email: 5,
            sms: 3,
            voice: 1,
            chat: 2,
            generic: 5,
        }
    }
}

impl Capacity {
    pub fn get(&self, m: Medium) -> u16 {
        match m {
            Medium::Email => self.email,
            Medium::Sms => self.sms,
            Medium::Voice => self.voice,
            Medium::Chat => self.chat,
            Medium::Generic => self.generic,
        }
    }
}

/// How an associate hears about offers and assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyVia {
    Email(String),
    Webhook(reqwest::Url),
    None,
}

/// One associate, validated.
#[derive(Debug, Clone)]
pub struct Associate {
    pub id: String,
    pub name: String,
    pub email: String,
    pub chat: Option<String>,
    pub team: Option<String>,
    pub languages: Vec<String>,
    pub skills: BTreeMap<String, u8>,
    pub capacity: Capacity,
    pub hours: Option<Arc<dyn WorkingHours>>,
    pub hours_name: Option<String>,
    pub notify: NotifyVia,
    /// SHA-256 of the associate's API token, if they have one.
    pub token_hash: Option<[u8; 32]>,
}

impl Associate {
    pub fn works_at(&self, at: DateTime<Utc>) -> bool {
        self.hours.as_ref().is_none_or(|h| h.is_open(at))
    }
}

/// The whole roster, validated, with lookups.
#[derive(Debug, Default)]
pub struct Roster {
    pub associates: Vec<Associate>,
    by_id: HashMap<String, usize>,
    by_token: HashMap<[u8; 32], usize>,
}

/// One problem in the roster file, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterProblem {
    pub key: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    #[serde(default)]
    defaults: Defaults,
    /// Named working-hours schedules, in the rules' business-hours format.
    #[serde(default)]
    hours: BTreeMap<String, toml::Value>,
    #[serde(default)]
    associate: Vec<AssociateEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    capacity: Option<Capacity>,
    hours: Option<String>,
    #[serde(default)]
    languages: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssociateEntry {
    id: String,
    name: String,
    email: String,
    chat: Option<String>,
    team: Option<String>,
    #[serde(default)]
    languages: Vec<String>,
    #[serde(default)]
    skills: BTreeMap<String, i64>,
    capacity: Option<Capacity>,
    hours: Option<String>,
    notify: Option<String>,
    notify_webhook: Option<String>,
    token_sha256: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
}

/// The daemon's parser of `[hours.<name>]` tables: the rules'
/// business-hours format, so one schedule reads the same in both files.
pub fn parse_hours(table: &toml::Value) -> Result<Arc<dyn WorkingHours>, String> {
    let spec: ScheduleSpec = table
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    spec.compile()
        .map(|s| Arc::new(s) as Arc<dyn WorkingHours>)
        .map_err(|problems| {
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

impl WorkingHours for Schedule {
    fn is_open(&self, at: DateTime<Utc>) -> bool {
        Schedule::is_open(self, at)
    }
}

/// Turns a `[hours.<name>]` table into a schedule.
pub type HoursParser<'a> = &'a dyn Fn(&toml::Value) -> Result<Arc<dyn WorkingHours>, String>;

impl Roster {
    /// Parses and validates roster text. `base` resolves `token_file`.
    pub fn from_str(
        text: &str,
        base: &Path,
        parse_hours: HoursParser<'_>,
    ) -> Result<Roster, Vec<RosterProblem>> {
        let file: RosterFile = toml::from_str(text).map_err(|e| {
            vec![RosterProblem {
                key: String::new(),
                message: e.message().to_owned()
                    + &e.span()
                        .map(|s| format!(" (at byte {})", s.start))
                        .unwrap_or_default(),
            }]
        })?;
        let mut problems = Vec::new();
        let mut problem =
            |key: String, message: String| problems.push(RosterProblem { key, message });
        let mut schedules = BTreeMap::new();
        for (name, table) in &file.hours {
            match parse_hours(table) {
                Ok(s) => {
                    schedules.insert(name.clone(), s);
                }
                Err(e) => problem(format!("hours.{name}"), e),
            }
        }
        let mut roster = Roster::default();
        for (i, entry) in file.associate.into_iter().enumerate() {
            let key = |field: &str| format!("associate[{i}] ({}).{field}", entry.id);
            if entry.id.is_empty()
                || !entry
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                problem(
                    key("id"),
                    "ids use only letters, digits, `-`, `_` and `.`".into(),
                );
                continue;
            }
            if roster.by_id.contains_key(&entry.id) {
                problem(key("id"), "duplicate associate id".into());
                continue;
            }
            if !entry.email.contains('@') {
                problem(
                    key("email"),
                    format!("`{}` is not an email address", entry.email),
                );
            }
            let mut skills = BTreeMap::new();
            for (skill, level) in &entry.skills {
                match u8::try_from(*level) {
                    Ok(l @ 1..=5) => {
                        skills.insert(skill.clone(), l);
                    }
                    _ => problem(
                        key(&format!("skills.{skill}")),
                        format!("level {level} is outside 1..=5"),
                    ),
                }
            }
            let hours_name = entry.hours.clone().or_else(|| file.defaults.hours.clone());
            let hours = match &hours_name {
                None => None,
                Some(name) => match schedules.get(name) {
                    Some(s) => Some(s.clone()),
                    None => {
                        problem(
                            key("hours"),
                            format!("no schedule `[hours.{name}]` in the roster"),
                        );
                        None
                    }
                },
            };
            let notify = match (entry.notify.as_deref(), &entry.notify_webhook) {
                (None | Some("email"), None) => NotifyVia::Email(entry.email.clone()),
                (Some("none"), None) => NotifyVia::None,
                (None | Some("webhook"), Some(url)) => match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => NotifyVia::Webhook(u),
                    _ => {
                        problem(
                            key("notify_webhook"),
                            format!("`{url}` is not an http(s) URL"),
                        );
                        NotifyVia::None
                    }
                },
                (Some("webhook"), None) => {
                    problem(
                        key("notify_webhook"),
                        "notify = \"webhook\" needs notify_webhook".into(),
                    );
                    NotifyVia::None
                }
                (Some(other), _) => {
                    problem(
                        key("notify"),
                        format!(
                            "`{other}`: expected `email`, `webhook` or `none` (a webhook needs notify_webhook)"
                        ),
                    );
                    NotifyVia::None
                }
            };
            let token_hash = match token_hash(&entry, base) {
                Ok(h) => h,
                Err(e) => {
                    problem(key("token"), e);
                    None
                }
            };
            let languages = if entry.languages.is_empty() {
                file.defaults.languages.clone()
            } else {
                entry.languages.clone()
            };
            let associate = Associate {
                id: entry.id.clone(),
                name: entry.name,
                email: entry.email,
                chat: entry.chat,
                team: entry.team,
                languages: languages.iter().map(|l| l.to_lowercase()).collect(),
                skills,
                capacity: entry
                    .capacity
                    .or(file.defaults.capacity)
                    .unwrap_or_default(),
                hours,
                hours_name,
                notify,
                token_hash,
            };
            let index = roster.associates.len();
            if let Some(hash) = associate.token_hash
                && roster.by_token.insert(hash, index).is_some()
            {
                problem(key("token"), "two associates share one token".into());
            }
            roster.by_id.insert(associate.id.clone(), index);
            roster.associates.push(associate);
        }
        if problems.is_empty() {
            Ok(roster)
        } else {
            Err(problems)
        }
    }

    /// Builds a roster from associates already validated (tests, benches).
    pub fn from_associates(associates: Vec<Associate>) -> Roster {
        let mut roster = Roster::default();
        for a in associates {
            let index = roster.associates.len();
            if let Some(h) = a.token_hash {
                roster.by_token.insert(h, index);
            }
            roster.by_id.insert(a.id.clone(), index);
            roster.associates.push(a);
        }
        roster
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub fn get(&self, id: &str) -> Option<&Associate> {
        self.index_of(id).map(|i| &self.associates[i])
    }

    /// The associate whose token this is. The lookup is by the token's
    /// SHA-256, so timing reveals nothing about the stored tokens.
    pub fn by_token(&self, token: &str) -> Option<&Associate> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_token.get(&hash).map(|&i| &self.associates[i])
    }

    /// Every skill some associate has.
    pub fn skills(&self) -> BTreeSet<String> {
        self.associates
            .iter()
            .flat_map(|a| a.skills.keys().cloned())
            .collect()
    }

    /// Every team some associate is in.
    pub fn teams(&self) -> BTreeSet<String> {
        self.associates
            .iter()
            .filter_map(|a| a.team.clone())
            .collect()
    }
}

fn token_hash(entry: &AssociateEntry, base: &Path) -> Result<Option<[u8; 32]>, String> {
    if let Some(hex_hash) = &entry.token_sha256 {
        if entry.token_env.is_some() || entry.token_file.is_some() {
            return Err("give one of token_sha256, token_env, token_file".into());
        }
        let bytes =
            hex::decode(hex_hash.trim()).map_err(|_| "token_sha256 is not hex".to_owned())?;
        return bytes
            .try_into()
            .map(Some)
            .map_err(|_| "token_sha256 must be 64 hex digits (a SHA-256)".into());
    }
    let secret =
        SecretSource::new("token", &None, &entry.token_env, &entry.token_file).resolve(base)?;
    Ok(secret.map(|s| Sha256::digest(s.expose().as_bytes()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Always(bool);
    impl WorkingHours for Always {
        fn is_open(&self, _: DateTime<Utc>) -> bool {
            self.0
        }
    }

    fn parse(text: &str) -> Result<Roster, Vec<RosterProblem>> {
        let hours = |v: &toml::Value| -> Result<Arc<dyn WorkingHours>, String> {
            match v.get("open").and_then(|o| o.as_bool()) {
                Some(open) => Ok(Arc::new(Always(open))),
                None => Err("needs `open`".into()),
            }
        };
        Roster::from_str(text, Path::new("."), &hours)
    }

    #[test]
    fn parses_associates_with_defaults() {
        let roster = parse(
            r#"
            [defaults]
            languages = ["en"]
            capacity = { email = 2 }
            [hours.day]
            open = true
            [[associate]]
            id = "anna"
            name = "Anna"
            email = "anna@x.example"
            skills = { billing = 4 }
            hours = "day"
            token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            [[associate]]
            id = "ben"
            name = "Ben"
            email = "ben@x.example"
            languages = ["DE"]
            notify_webhook = "https://hooks.example/ben"
            "#,
        )
        .unwrap();
        let anna = roster.get("anna").unwrap();
        assert_eq!(anna.capacity.email, 2);
        assert_eq!(
            anna.capacity.chat, 0,
            "a partial capacity table means 0 elsewhere"
        );
        assert_eq!(anna.languages, vec!["en"]);
        assert!(anna.works_at(Utc::now()));
        assert_eq!(roster.by_token("test").unwrap().id, "anna");
        assert!(roster.by_token("wrong").is_none());
        let ben = roster.get("ben").unwrap();
        assert_eq!(ben.languages, vec!["de"]);
        assert!(matches!(ben.notify, NotifyVia::Webhook(_)));
        assert_eq!(
            roster.skills().into_iter().collect::<Vec<_>>(),
            vec!["billing"]
        );
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let problems = parse(
            r#"
            [[associate]]
            id = "anna"
            name = "Anna"
            email = "nope"
            skills = { billing = 9 }
            hours = "night"
            notify = "pigeon"
            [[associate]]
            id = "anna"
            name = "Anna again"
            email = "a@x.example"
            "#,
        )
        .unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"associate[0] (anna).email"), "{keys:?}");
        assert!(
            keys.contains(&"associate[0] (anna).skills.billing"),
            "{keys:?}"
        );
        assert!(keys.contains(&"associate[0] (anna).hours"), "{keys:?}");
        assert!(keys.contains(&"associate[0] (anna).notify"), "{keys:?}");
        assert!(keys.contains(&"associate[1] (anna).id"), "{keys:?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let problems =
            parse("[[associate]]\nid = \"a\"\nname = \"A\"\nemail = \"a@x\"\nskils = {}\n")
                .unwrap_err();
        assert!(problems[0].message.contains("skils"), "{problems:?}");
    }
}
