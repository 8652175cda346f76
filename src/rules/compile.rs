//! Validation of a [`RulesFile`] into the compiled form [`RuleSet`] holds:
//! regexes built, keywords, addresses and tags normalized, schedules,
//! ladders, skills, queues and templates resolved. Every problem is
//! collected; a file with any problem yields no rule set at all.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexBuilder};

use super::file::{CondFile, OneOrMany, ReadProblem, RelaxStepFile, RuleFile, RulesFile};
use super::hours::Schedule;
use super::text::fold;
use super::{Because, Catalog, Classification, Facts, RelaxStep, RuleSet};
use crate::inquiry::{Adapter, Medium, Urgency};

/// Longest excerpt of customer text quoted in a trace.
const EXCERPT: usize = 60;
/// Bound on a compiled regex, so one rule cannot eat the daemon's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Skill levels run from 1 to 5.
const LEVELS: std::ops::RangeInclusive<u8> = 1..=5;

/// Which part of the message a text condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Subject,
    Text,
    /// Subject or text.
    Either,
}

impl Part {
    fn fields(self) -> &'static [&'static str] {
        match self {
            Part::Subject => &["subject"],
            Part::Text => &["text"],
            Part::Either => &["subject", "text"],
        }
    }
}

/// A keyword list compiled into one automaton over folded text: one pass
/// over the message, however many keywords.
#[derive(Debug, Clone)]
struct Keywords {
    /// As written in the file, for traces.
    written: Vec<String>,
    matcher: AhoCorasick,
}

impl Keywords {
    fn new(written: Vec<String>) -> Result<Keywords, String> {
        let folded: Vec<String> = written.iter().map(|k| fold(k)).collect();
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&folded)
            .map_err(|e| format!("the keyword list cannot be compiled: {e}"))?;
        Ok(Keywords { written, matcher })
    }

    /// The first keyword found in `folded` text, as written.
    fn find(&self, folded: &str) -> Option<&str> {
        self.matcher
            .find(folded)
            .map(|m| self.written[m.pattern().as_usize()].as_str())
    }
}

#[derive(Debug, Clone)]
enum ChannelPattern {
    Adapter(Adapter),
    Instance(String),
}

/// A compiled condition.
#[derive(Debug, Clone)]
enum Cond {
    Channel(Vec<ChannelPattern>),
    Medium(Vec<Medium>),
    FromEmail(Vec<String>),
    FromDomain(Vec<String>),
    FromPhone(Vec<String>),
    FromHandle(Vec<String>),
    Contains(Part, Keywords),
    Matches(Part, Vec<Regex>),
    Language(Vec<String>),
    CustomerTags(Vec<String>),
    Attachment(bool),
    Hours {
        name: String,
        schedule: Arc<Schedule>,
        inside: bool,
    },
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Default)]
struct Actions {
    urgency: Option<Urgency>,
    raise: u8,
    skills: BTreeMap<String, u8>,
    language: Option<String>,
    queue: Option<String>,
    tags: Vec<String>,
    sla: Option<Duration>,
    ack: Option<String>,
    suppress_ack: Option<String>,
    ladder: Option<String>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    description: Option<String>,
    when: Option<Cond>,
    actions: Actions,
    stop: bool,
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub fn stops(&self) -> bool {
        self.stop
    }

    /// Why the rule matches the facts, or `None` when it does not.
    pub(super) fn matches(&self, facts: &Prepared<'_>) -> Option<Vec<Because>> {
        match &self.when {
            None => Some(vec![Because {
                field: "always".into(),
                value: "the rule has no conditions".into(),
            }]),
            Some(cond) => cond.eval(facts),
        }
    }

    /// Applies the actions to `c`; returns what was done, for the trace.
    pub(super) fn apply(&self, c: &mut Classification, sla: &mut Option<Duration>) -> Vec<String> {
        let a = &self.actions;
        let mut done = Vec::new();
        if let Some(u) = a.urgency {
            done.push(format!(
                "urgency {} (was {})",
                u.as_str(),
                c.urgency.as_str()
            ));
            c.urgency = u;
        }
        if a.raise > 0 {
            let raised = raise(c.urgency, a.raise);
            done.push(format!(
                "urgency raised by {}: {} → {}",
                a.raise,
                c.urgency.as_str(),
                raised.as_str()
            ));
            c.urgency = raised;
        }
        for (skill, level) in &a.skills {
            let entry = c.skills.entry(skill.clone()).or_insert(*level);
            *entry = (*entry).max(*level);
            done.push(format!("skill {skill}>={level}"));
        }
        if let Some(l) = &a.language {
            done.push(format!("prefer language {l}"));
            c.language = Some(l.clone());
        }
        if let Some(q) = &a.queue {
            done.push(format!("queue {q}"));
            c.queue = Some(q.clone());
        }
        for t in &a.tags {
            if !c.tags.contains(t) {
                c.tags.push(t.clone());
            }
            done.push(format!("tag {t}"));
        }
        if let Some(d) = a.sla {
            let tighter = sla.is_none_or(|cur| d < cur);
            if tighter {
                *sla = Some(d);
            }
            done.push(format!(
                "sla {}{}",
                humantime::format_duration(d),
                if tighter {
                    ""
                } else {
                    " (a shorter one stays)"
                }
            ));
        }
        if let Some(t) = &a.ack {
            done.push(format!("ack template {t}"));
            c.ack_template = Some(t.clone());
        }
        if let Some(r) = &a.suppress_ack {
            done.push(format!("suppress ack: {r}"));
            c.suppress_ack = Some(r.clone());
        }
        if let Some(l) = &a.ladder {
            done.push(format!("relaxation ladder {l}"));
            c.relaxation_ladder = l.clone();
        }
        if self.stop {
            done.push("stop".into());
        }
        done
    }
}

/// Raises `u` by `steps`, capped at critical.
pub fn raise(u: Urgency, steps: u8) -> Urgency {
    const ORDER: [Urgency; 4] = [
        Urgency::Low,
        Urgency::Normal,
        Urgency::High,
        Urgency::Critical,
    ];
    let at = ORDER.iter().position(|x| *x == u).unwrap_or(1);
    ORDER[(at + steps as usize).min(ORDER.len() - 1)]
}

/// The primary subtag of a language tag, lower case: `de-AT` → `de`.
pub fn primary_language(tag: &str) -> String {
    tag.split('-').next().unwrap_or(tag).to_ascii_lowercase()
}

/// A BCP 47-shaped tag: `de`, `en-GB`, `zh-Hant-TW`.
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or("");
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The facts with the normalized text computed once, on first use.
pub(super) struct Prepared<'a> {
    facts: Facts<'a>,
    subject: OnceCell<String>,
    text: OnceCell<String>,
}

impl<'a> Prepared<'a> {
    pub(super) fn new(facts: &Facts<'a>) -> Self {
        Prepared {
            facts: *facts,
            subject: OnceCell::new(),
            text: OnceCell::new(),
        }
    }

    fn raw(&self, field: &str) -> &str {
        let m = self.facts.message;
        match field {
            "subject" => m.subject.as_deref().unwrap_or(""),
            _ => &m.text,
        }
    }

    fn folded(&self, field: &str) -> &str {
        let cell = if field == "subject" {
            &self.subject
        } else {
            &self.text
        };
        cell.get_or_init(|| fold(self.raw(field)))
    }
}

fn because(field: &str, value: impl Into<String>) -> Vec<Because> {
    vec![Because {
        field: field.to_owned(),
        value: value.into(),
    }]
}

fn excerpt(s: &str) -> String {
    if s.chars().count() <= EXCERPT {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(EXCERPT).collect();
        format!("{cut}…")
    }
}

fn normalize_phone(s: &str) -> String {
    s.chars()
        .enumerate()
        .filter(|(i, c)| c.is_ascii_digit() || (*i == 0 && *c == '+'))
        .map(|(_, c)| c)
        .collect()
}

fn email_domain(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

impl Cond {
    fn eval(&self, p: &Prepared<'_>) -> Option<Vec<Because>> {
        let m = p.facts.message;
        match self {
            Cond::Channel(patterns) => {
                let id = m.channel.to_string();
                patterns
                    .iter()
                    .any(|pat| match pat {
                        ChannelPattern::Adapter(a) => *a == m.channel.adapter,
                        ChannelPattern::Instance(i) => *i == id,
                    })
                    .then(|| because("channel", id))
            }
            Cond::Medium(media) => media
                .contains(&m.medium)
                .then(|| because("medium", m.medium.as_str())),
            Cond::FromEmail(list) => {
                let email = m.customer.email.as_deref()?.trim().to_lowercase();
                list.contains(&email).then(|| because("from_email", email))
            }
            Cond::FromDomain(list) => {
                let email = m.customer.email.as_deref()?.trim().to_lowercase();
                let domain = email_domain(&email)?;
                list.iter()
                    .find(|d| {
                        domain == d.as_str()
                            || domain
                                .strip_suffix(d.as_str())
                                .is_some_and(|head| head.ends_with('.'))
                    })
                    .map(|d| because("from_domain", format!("{domain} (rule: {d})")))
            }
            Cond::FromPhone(list) => {
                let phone = normalize_phone(m.customer.phone.as_deref()?);
                list.iter()
                    .find(|prefix| !phone.is_empty() && phone.starts_with(prefix.as_str()))
                    .map(|prefix| because("from_phone", format!("{phone} (rule: {prefix})")))
            }
            Cond::FromHandle(list) => {
                let handle = m.customer.handle.as_deref()?.trim();
                let handle = handle.trim_start_matches('@').to_lowercase();
                list.contains(&handle)
                    .then(|| because("from_handle", handle))
            }
            Cond::Contains(part, keywords) => part.fields().iter().find_map(|field| {
                keywords
                    .find(p.folded(field))
                    .map(|k| because(field, format!("contains \"{k}\"")))
            }),
            Cond::Matches(part, regexes) => part.fields().iter().find_map(|field| {
                let raw = p.raw(field);
                regexes.iter().find_map(|re| {
                    re.find(raw).map(|found| {
                        because(
                            field,
                            format!("matches /{}/: \"{}\"", re.as_str(), excerpt(found.as_str())),
                        )
                    })
                })
            }),
            Cond::Language(list) => {
                let lang = m.language.as_deref()?.to_ascii_lowercase();
                let primary = primary_language(&lang);
                list.iter()
                    .any(|l| *l == lang || *l == primary)
                    .then(|| because("language", lang.clone()))
            }
            Cond::CustomerTags(list) => p
                .facts
                .customer_tags
                .iter()
                .find(|t| list.contains(&t.to_lowercase()))
                .map(|t| because("customer_tags", t.clone())),
            Cond::Attachment(wanted) => {
                let has = !m.attachments.is_empty();
                (has == *wanted).then(|| {
                    because(
                        "attachment",
                        if has {
                            format!("{} attached", m.attachments.len())
                        } else {
                            "none".to_owned()
                        },
                    )
                })
            }
            Cond::Hours {
                name,
                schedule,
                inside,
            } => (schedule.is_open(p.facts.at) == *inside).then(|| {
                because(
                    "received_at",
                    format!(
                        "{} {} {name} hours",
                        p.facts
                            .at
                            .with_timezone(&schedule.timezone())
                            .format("%a %Y-%m-%d %H:%M %Z"),
                        if *inside { "inside" } else { "outside" }
                    ),
                )
            }),
            Cond::All(conds) => {
                let mut all = Vec::new();
                for c in conds {
                    all.extend(c.eval(p)?);
                }
                Some(all)
            }
            Cond::Any(conds) => conds.iter().find_map(|c| c.eval(p)),
            Cond::Not(inner) => match inner.eval(p) {
                Some(_) => None,
                None => Some(because("not", inner.describe())),
            },
        }
    }

    /// A short description, for `not` in traces.
    fn describe(&self) -> String {
        let list = |v: &[String]| v.join(", ");
        match self {
            Cond::Channel(p) => format!(
                "channel {}",
                p.iter()
                    .map(|p| match p {
                        ChannelPattern::Adapter(a) => a.as_str().to_owned(),
                        ChannelPattern::Instance(i) => i.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Cond::Medium(m) => format!(
                "medium {}",
                m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            ),
            Cond::FromEmail(v) => format!("from_email {}", list(v)),
            Cond::FromDomain(v) => format!("from_domain {}", list(v)),
            Cond::FromPhone(v) => format!("from_phone {}", list(v)),
            Cond::FromHandle(v) => format!("from_handle {}", list(v)),
            Cond::Contains(part, k) => format!(
                "{} contains {}",
                part.fields().join(" or "),
                k.written
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Cond::Matches(part, r) => format!(
                "{} matches {}",
                part.fields().join(" or "),
                r.iter()
                    .map(|r| format!("/{}/", r.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Cond::Language(v) => format!("language {}", list(v)),
            Cond::CustomerTags(v) => format!("customer_tags {}", list(v)),
            Cond::Attachment(b) => format!("attachment {b}"),
            Cond::Hours { name, inside, .. } => {
                format!(
                    "{} {name} hours",
                    if *inside { "inside" } else { "outside" }
                )
            }
            Cond::All(c) => format!(
                "all of ({})",
                c.iter().map(Cond::describe).collect::<Vec<_>>().join("; ")
            ),
            Cond::Any(c) => format!(
                "any of ({})",
                c.iter().map(Cond::describe).collect::<Vec<_>>().join("; ")
            ),
            Cond::Not(c) => format!("not ({})", c.describe()),
        }
    }
}

/// Collects problems while compiling.
struct Ctx<'a> {
    catalog: &'a Catalog,
    schedules: &'a BTreeMap<String, Arc<Schedule>>,
    ladders: &'a BTreeMap<String, Vec<RelaxStep>>,
    /// Schedules the file defines that did not compile (reported already).
    broken_schedules: BTreeSet<String>,
    /// Ladders the file defines that could not be read (reported already).
    broken_ladders: &'a BTreeSet<String>,
    rule: Option<String>,
    problems: Vec<ReadProblem>,
}

impl Ctx<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ReadProblem {
            rule: self.rule.clone(),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The non-empty entries of a one-or-many list; an empty entry or an
    /// empty list is a problem.
    fn entries(&mut self, key: &str, value: &OneOrMany) -> Vec<(String, String)> {
        let list = value.to_vec();
        if list.is_empty() {
            self.problem(key, "the list is empty");
        }
        let many = matches!(value, OneOrMany::Many(_));
        let mut out = Vec::new();
        for (i, v) in list.into_iter().enumerate() {
            let k = if many {
                format!("{key}[{i}]")
            } else {
                key.to_owned()
            };
            if v.trim().is_empty() {
                self.problem(&k, "must not be empty");
            } else {
                out.push((k, v.trim().to_owned()));
            }
        }
        out
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn compile_cond(f: &CondFile, prefix: &str, ctx: &mut Ctx<'_>) -> Option<Cond> {
    let mut all = Vec::new();
    let before = ctx.problems.len();
    let k = |key: &str| join(prefix, key);

    if let Some(v) = &f.channel {
        let mut pats = Vec::new();
        for (key, s) in ctx.entries(&k("channel"), v) {
            let (adapter, name) = match s.split_once('/') {
                Some((a, n)) => (a, Some(n)),
                None => (s.as_str(), None),
            };
            match (Adapter::parse(adapter), name) {
                (None, _) => ctx.problem(
                    &key,
                    format!(
                        "unknown adapter `{adapter}`: expected one of {} (optionally `/<instance>`)",
                        Adapter::ALL.map(|a| a.as_str()).join(", ")
                    ),
                ),
                (Some(a), None) => pats.push(ChannelPattern::Adapter(a)),
                (Some(a), Some(n)) if !n.is_empty() => {
                    pats.push(ChannelPattern::Instance(format!("{}/{n}", a.as_str())))
                }
                (Some(_), Some(_)) => ctx.problem(&key, "the instance name after `/` is empty"),
            }
        }
        all.push(Cond::Channel(pats));
    }
    if let Some(v) = &f.medium {
        let mut media = Vec::new();
        for (key, s) in ctx.entries(&k("medium"), v) {
            match s.parse::<Medium>() {
                Ok(m) => media.push(m),
                Err(_) => ctx.problem(
                    &key,
                    format!("unknown medium `{s}`: expected email, sms, voice, chat or generic"),
                ),
            }
        }
        all.push(Cond::Medium(media));
    }
    if let Some(v) = &f.from_email {
        let mut list = Vec::new();
        for (key, s) in ctx.entries(&k("from_email"), v) {
            if !s.contains('@') {
                ctx.problem(
                    &key,
                    format!("`{s}` is not an email address (use `from_domain` for a domain)"),
                );
            }
            list.push(s.to_lowercase());
        }
        all.push(Cond::FromEmail(list));
    }
    if let Some(v) = &f.from_domain {
        let mut list = Vec::new();
        for (key, s) in ctx.entries(&k("from_domain"), v) {
            let d = s.trim_start_matches('@').to_lowercase();
            if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                ctx.problem(&key, format!("`{s}` is not a domain such as `example.org`"));
            }
            list.push(d);
        }
        all.push(Cond::FromDomain(list));
    }
    if let Some(v) = &f.from_phone {
        let mut list = Vec::new();
        for (key, s) in ctx.entries(&k("from_phone"), v) {
            let n = normalize_phone(&s);
            if !n.bytes().any(|b| b.is_ascii_digit()) {
                ctx.problem(
                    &key,
                    format!("`{s}` is not a phone number or prefix such as `+49` or `+4930123`"),
                );
            }
            list.push(n);
        }
        all.push(Cond::FromPhone(list));
    }
    if let Some(v) = &f.from_handle {
        let list = ctx
            .entries(&k("from_handle"), v)
            .into_iter()
            .map(|(_, s)| s.trim_start_matches('@').to_lowercase())
            .collect();
        all.push(Cond::FromHandle(list));
    }
    for (key, part, value) in [
        ("contains", Part::Either, &f.contains),
        ("subject_contains", Part::Subject, &f.subject_contains),
        ("text_contains", Part::Text, &f.text_contains),
    ] {
        let Some(v) = value else { continue };
        let key = k(key);
        let mut keywords = Vec::new();
        for (key, s) in ctx.entries(&key, v) {
            if fold(&s).is_empty() {
                ctx.problem(&key, "the keyword is empty once normalized");
            }
            keywords.push(s);
        }
        let keywords = match Keywords::new(keywords) {
            Ok(k) => k,
            Err(e) => {
                ctx.problem(&key, e);
                continue;
            }
        };
        all.push(Cond::Contains(part, keywords));
    }
    for (key, part, value) in [
        ("matches", Part::Either, &f.matches),
        ("subject_matches", Part::Subject, &f.subject_matches),
        ("text_matches", Part::Text, &f.text_matches),
    ] {
        let Some(v) = value else { continue };
        let mut regexes = Vec::new();
        for (key, s) in ctx.entries(&k(key), v) {
            match RegexBuilder::new(&s)
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(re) => regexes.push(re),
                Err(e) => ctx.problem(&key, format!("bad regex: {e}")),
            }
        }
        all.push(Cond::Matches(part, regexes));
    }
    if let Some(v) = &f.language {
        let mut list = Vec::new();
        for (key, s) in ctx.entries(&k("language"), v) {
            if !is_language_tag(&s) {
                ctx.problem(
                    &key,
                    format!("`{s}` is not a language tag such as `de` or `en-GB`"),
                );
            }
            list.push(s.to_ascii_lowercase());
        }
        all.push(Cond::Language(list));
    }
    if let Some(v) = &f.customer_tags {
        let list = ctx
            .entries(&k("customer_tags"), v)
            .into_iter()
            .map(|(_, s)| s.to_lowercase())
            .collect();
        all.push(Cond::CustomerTags(list));
    }
    if let Some(b) = f.attachment {
        all.push(Cond::Attachment(b));
    }
    for (key, inside, value) in [
        ("in_hours", true, &f.in_hours),
        ("outside_hours", false, &f.outside_hours),
    ] {
        let Some(name) = value else { continue };
        match ctx.schedules.get(name) {
            Some(schedule) => all.push(Cond::Hours {
                name: name.clone(),
                schedule: schedule.clone(),
                inside,
            }),
            None if ctx.broken_schedules.contains(name) => ctx.problem(
                &k(key),
                format!("schedule `{name}` has problems (see `hours.{name}`)"),
            ),
            None => {
                let known: Vec<_> = ctx.schedules.keys().map(String::as_str).collect();
                let msg = if known.is_empty() {
                    format!("unknown schedule `{name}`: define it as `[hours.{name}]`")
                } else {
                    format!(
                        "unknown schedule `{name}`: the file defines {}",
                        known.join(", ")
                    )
                };
                ctx.problem(&k(key), msg);
            }
        }
    }
    for (key, is_any, value) in [("any", true, &f.any), ("all", false, &f.all)] {
        let Some(list) = value else { continue };
        if list.is_empty() {
            ctx.problem(&k(key), "the list is empty");
        }
        let conds: Vec<Cond> = list
            .iter()
            .enumerate()
            .filter_map(|(i, c)| compile_cond(c, &format!("{}[{i}]", k(key)), ctx))
            .collect();
        all.push(if is_any {
            Cond::Any(conds)
        } else {
            Cond::All(conds)
        });
    }
    if let Some(inner) = &f.not
        && let Some(c) = compile_cond(inner, &k("not"), ctx)
    {
        all.push(Cond::Not(Box::new(c)));
    }

    if all.is_empty() && ctx.problems.len() == before {
        ctx.problem(
            prefix,
            "no condition given (leave out `when` for a rule that always applies)",
        );
    }
    if ctx.problems.len() > before {
        return None;
    }
    Some(if all.len() == 1 {
        all.pop().expect("one element")
    } else {
        Cond::All(all)
    })
}

/// `billing>=3`, `billing >= 3` or `billing` (level 1).
fn parse_skill(s: &str) -> Result<(String, u8), String> {
    let (name, level) = match s.split_once(">=") {
        Some((n, l)) => {
            let level = l.trim().parse::<u8>().ok().filter(|l| LEVELS.contains(l));
            let Some(level) = level else {
                return Err(format!(
                    "`{s}`: the level must be a whole number from 1 to 5"
                ));
            };
            (n.trim(), level)
        }
        None => (s.trim(), 1),
    };
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "`{s}`: write a skill as `name>=level` (level 1 to 5) or `name`, e.g. `billing>=3`"
        ));
    }
    Ok((name.to_owned(), level))
}

fn known_list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none are defined".to_owned()
    } else {
        format!(
            "known: {}",
            set.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn compile_rule(f: &RuleFile, ctx: &mut Ctx<'_>) -> Option<Rule> {
    let before = ctx.problems.len();
    let when = f.when.as_ref().and_then(|w| compile_cond(w, "when", ctx));
    let mut a = Actions {
        urgency: f.urgency,
        ..Default::default()
    };
    if let Some(steps) = f.raise_urgency {
        if f.urgency.is_some() {
            ctx.problem(
                "raise_urgency",
                "give either `urgency` or `raise_urgency`, not both",
            );
        }
        if !(1..=3).contains(&steps) {
            ctx.problem("raise_urgency", "raise by 1 to 3 steps");
        }
        a.raise = steps;
    }
    for (i, s) in f.skills.iter().enumerate() {
        let key = format!("skills[{i}]");
        match parse_skill(s) {
            Ok((name, level)) => {
                if let Some(known) = &ctx.catalog.skills
                    && !known.contains(&name)
                {
                    ctx.problem(
                        &key,
                        format!("unknown skill `{name}` ({})", known_list(known)),
                    );
                }
                let e = a.skills.entry(name).or_insert(level);
                *e = (*e).max(level);
            }
            Err(msg) => ctx.problem(&key, msg),
        }
    }
    if let Some(l) = &f.prefer_language {
        if is_language_tag(l.trim()) {
            a.language = Some(l.trim().to_ascii_lowercase());
        } else {
            ctx.problem(
                "prefer_language",
                format!("`{l}` is not a language tag such as `de` or `en-GB`"),
            );
        }
    }
    if let Some(q) = &f.queue {
        let q = q.trim();
        if q.is_empty() {
            ctx.problem("queue", "must not be empty");
        } else if let Some(teams) = &ctx.catalog.teams
            && !teams.contains(q)
        {
            ctx.problem(
                "queue",
                format!("unknown queue `{q}` ({})", known_list(teams)),
            );
        }
        a.queue = Some(q.to_owned());
    }
    for (i, t) in f.tags.iter().enumerate() {
        if t.trim().is_empty() {
            ctx.problem(&format!("tags[{i}]"), "must not be empty");
        } else if !a.tags.contains(&t.trim().to_owned()) {
            a.tags.push(t.trim().to_owned());
        }
    }
    if let Some(d) = f.sla {
        if d.is_zero() {
            ctx.problem("sla", "must be longer than zero");
        }
        a.sla = Some(d);
    }
    if let Some(t) = &f.ack {
        if !ctx.catalog.templates.contains(t) {
            ctx.problem(
                "ack",
                format!(
                    "unknown template `{t}`: add `{t}.<language>.txt` in the default language to the templates folder ({})",
                    known_list(&ctx.catalog.templates)
                ),
            );
        }
        a.ack = Some(t.clone());
    }
    if let Some(r) = &f.suppress_ack {
        if r.trim().is_empty() {
            ctx.problem("suppress_ack", "give the reason, e.g. `newsletter`");
        }
        if f.ack.is_some() {
            ctx.problem(
                "suppress_ack",
                "give either `ack` or `suppress_ack`, not both",
            );
        }
        a.suppress_ack = Some(r.trim().to_owned());
    }
    if let Some(l) = &f.relaxation {
        if ctx.broken_ladders.contains(l) {
            ctx.problem(
                "relaxation",
                format!("ladder `{l}` has problems (see `relaxation.{l}`)"),
            );
        } else if !ctx.ladders.contains_key(l) {
            let known: BTreeSet<String> = ctx.ladders.keys().cloned().collect();
            ctx.problem(
                "relaxation",
                format!("unknown relaxation ladder `{l}` ({})", known_list(&known)),
            );
        }
        a.ladder = Some(l.clone());
    }
    let does_something = f.urgency.is_some()
        || f.raise_urgency.is_some()
        || !f.skills.is_empty()
        || f.prefer_language.is_some()
        || f.queue.is_some()
        || !f.tags.is_empty()
        || f.sla.is_some()
        || f.ack.is_some()
        || f.suppress_ack.is_some()
        || f.relaxation.is_some()
        || f.stop;
    if !does_something {
        ctx.problem(
            "",
            "the rule has no action (urgency, raise_urgency, skills, prefer_language, queue, tags, sla, ack, suppress_ack, relaxation or stop)",
        );
    }
    if ctx.problems.len() > before {
        return None;
    }
    Some(Rule {
        name: f.name.clone(),
        description: f.description.clone(),
        when,
        actions: a,
        stop: f.stop,
    })
}

fn compile_ladder(
    name: &str,
    steps: &[RelaxStepFile],
    problems: &mut Vec<ReadProblem>,
) -> Vec<RelaxStep> {
    let mut out: Vec<RelaxStep> = Vec::new();
    let mut problem = |key: String, message: String| {
        problems.push(ReadProblem {
            rule: None,
            key,
            message,
        })
    };
    for (i, s) in steps.iter().enumerate() {
        let key = format!("relaxation.{name}[{i}]");
        if let Some(prev) = out.last()
            && s.after < prev.after
        {
            problem(
                format!("{key}.after"),
                format!(
                    "steps must come in order of `after`: {} is before the previous step's {}",
                    humantime::format_duration(s.after),
                    humantime::format_duration(prev.after)
                ),
            );
        }
        if s.lower_skill_levels > 4 {
            problem(
                format!("{key}.lower_skill_levels"),
                "levels run from 1 to 5: lower by 0 to 4".into(),
            );
        }
        if !s.drop_language && s.lower_skill_levels == 0 && !s.drop_skills {
            problem(
                key.clone(),
                "the step relaxes nothing: set drop_language, lower_skill_levels or drop_skills"
                    .into(),
            );
        }
        let step_name = match &s.name {
            Some(n) if n.trim().is_empty() => {
                problem(format!("{key}.name"), "must not be empty".into());
                String::new()
            }
            Some(n) => n.trim().to_owned(),
            None => format!("{name}.{}", i + 1),
        };
        if out.iter().any(|o| o.name == step_name) {
            problem(
                format!("{key}.name"),
                format!("two steps are named `{step_name}`"),
            );
        }
        // Steps accumulate: each compiled step is everything in force from
        // its `after` on, so the router needs only the latest one reached.
        let prev = out.last();
        out.push(RelaxStep {
            name: step_name,
            after: s.after,
            drop_language: s.drop_language || prev.is_some_and(|p| p.drop_language),
            lower_skill_levels: s
                .lower_skill_levels
                .max(prev.map_or(0, |p| p.lower_skill_levels)),
            drop_skills: s.drop_skills || prev.is_some_and(|p| p.drop_skills),
        });
    }
    out
}

/// Parses and validates a rules file. With any problem, every problem found.
pub fn compile(text: &str, catalog: &Catalog) -> Result<RuleSet, Vec<ReadProblem>> {
    let (file, mut problems) = RulesFile::parse(text)?;

    let mut sla = BTreeMap::new();
    for (urgency, d) in [
        (Urgency::Critical, file.sla.critical),
        (Urgency::High, file.sla.high),
        (Urgency::Normal, file.sla.normal),
        (Urgency::Low, file.sla.low),
    ] {
        let Some(d) = d else { continue };
        if d.is_zero() {
            problems.push(ReadProblem {
                rule: None,
                key: format!("sla.{}", urgency.as_str()),
                message: "must be longer than zero".into(),
            });
        }
        sla.insert(urgency, d);
    }

    let mut schedules = BTreeMap::new();
    for (name, spec) in &file.hours {
        match spec.compile() {
            Ok(s) => {
                schedules.insert(name.clone(), Arc::new(s));
            }
            Err(list) => problems.extend(list.into_iter().map(|p| ReadProblem {
                rule: None,
                key: format!("hours.{name}.{}", p.key),
                message: p.message,
            })),
        }
    }

    let mut ladders = BTreeMap::new();
    for (name, steps) in &file.relaxation {
        ladders.insert(name.clone(), compile_ladder(name, steps, &mut problems));
    }

    let mut ctx = Ctx {
        catalog,
        schedules: &schedules,
        ladders: &ladders,
        broken_schedules: file
            .hours
            .keys()
            .filter(|n| !schedules.contains_key(*n))
            .chain(&file.broken_hours)
            .cloned()
            .collect(),
        broken_ladders: &file.broken_ladders,
        rule: None,
        problems,
    };
    let mut rules = Vec::new();
    let mut names = BTreeSet::new();
    for (i, f) in file.rules.iter().enumerate() {
        let name = f.name.trim();
        ctx.rule = Some(if name.is_empty() {
            format!("#{}", i + 1)
        } else {
            name.to_owned()
        });
        if name.is_empty() {
            ctx.problem("name", "every rule needs a name");
        } else if !names.insert(name.to_owned()) {
            ctx.problem("name", "two rules have this name");
        }
        if let Some(rule) = compile_rule(f, &mut ctx) {
            rules.push(rule);
        }
    }
    let problems = ctx.problems;
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(RuleSet {
        rules,
        schedules,
        sla,
        ladders,
    })
}
