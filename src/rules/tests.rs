use super::*;
use crate::inquiry::{Adapter, AttachmentMeta, ChannelId, Customer, Medium, ThreadHints};
use chrono::TimeZone;

fn catalog() -> Catalog {
    Catalog {
        skills: None,
        templates: ["ack", "ack-urgent"].map(String::from).into(),
        teams: None,
    }
}

fn set(text: &str) -> RuleSet {
    match RuleSet::from_str(text, Path::new("rules.toml"), &catalog()) {
        Ok(s) => s,
        Err(p) => panic!("{p:#?}"),
    }
}

fn problems(text: &str, catalog: &Catalog) -> Vec<RuleProblem> {
    RuleSet::from_str(text, Path::new("rules.toml"), catalog).unwrap_err()
}

fn message(subject: Option<&str>, text: &str) -> NewMessage {
    NewMessage {
        channel: ChannelId::new(Adapter::Generic, "website"),
        medium: Medium::Generic,
        provider_id: "m1".into(),
        customer: Customer {
            name: Some("Ada".into()),
            email: Some("Ada@Mail.Example.org".into()),
            phone: Some("+49 (30) 123-456".into()),
            handle: Some("@ada".into()),
        },
        customer_key: None,
        subject: subject.map(String::from),
        text: text.into(),
        language: Some("de-AT".into()),
        thread: ThreadHints::default(),
        attachments: Vec::new(),
        metadata: serde_json::Value::Null,
        reply_context: serde_json::Value::Null,
        no_ack_reason: None,
        received_at: Utc::now(),
    }
}

/// Friday 27 Nov 2026, 10:00 in Berlin.
fn friday_morning() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
}

fn eval(rules: &RuleSet, m: &NewMessage, tags: &[&str]) -> Classification {
    let tags: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
    rules.evaluate(&Facts {
        message: m,
        customer_tags: &tags,
        at: friday_morning(),
    })
}

fn matched(c: &Classification) -> Vec<&str> {
    c.trace.iter().map(|m| m.rule.as_str()).collect()
}

#[test]
fn empty_set_is_normal_with_the_message_language() {
    let c = eval(&RuleSet::empty(), &message(None, "hi"), &[]);
    assert_eq!(c.urgency, Urgency::Normal);
    assert_eq!(c.language.as_deref(), Some("de"));
    assert!(c.skills.is_empty() && c.trace.is_empty() && c.relaxation.is_empty());
    assert_eq!(c.sla, None);
}

#[test]
fn keywords_ignore_case_accents_and_umlaut_spelling() {
    let rules = set(r#"
        [[rule]]
        name = "failed-transfer"
        when.contains = ["Überweisung fehlgeschlagen", "transfer failed"]
        urgency = "high"
        "#);
    for text in [
        "Meine ÜBERWEISUNG   fehlgeschlagen!",
        "meine ueberweisung\nfehlgeschlagen",
        "meine uberweisung fehlgeschlagen",
        "The TRANSFER FAILED twice",
    ] {
        let c = eval(&rules, &message(None, text), &[]);
        assert_eq!(c.urgency, Urgency::High, "{text}");
    }
    let c = eval(
        &rules,
        &message(Some("Überweisung fehlgeschlagen"), "siehe Betreff"),
        &[],
    );
    assert_eq!(c.trace[0].because[0].field, "subject");
    assert_eq!(
        c.trace[0].because[0].value,
        "contains \"Überweisung fehlgeschlagen\""
    );
    assert_eq!(
        eval(&rules, &message(None, "Überweisung ok"), &[]).urgency,
        Urgency::Normal
    );
}

#[test]
fn every_condition_kind() {
    let rules = set(r#"
        [hours.office]
        timezone = "Europe/Berlin"
        open = ["mon-fri 08:00-18:00"]

        [[rule]]
        name = "channel"
        when.channel = ["imap", "generic/website"]
        tags = ["channel"]
        [[rule]]
        name = "adapter-only"
        when.channel = "generic"
        tags = ["adapter"]
        [[rule]]
        name = "other-instance"
        when.channel = "generic/shop"
        tags = ["never"]
        [[rule]]
        name = "medium"
        when.medium = "generic"
        tags = ["medium"]
        [[rule]]
        name = "email"
        when.from_email = "ada@mail.example.org"
        tags = ["email"]
        [[rule]]
        name = "domain"
        when.from_domain = ["example.org"]
        tags = ["domain"]
        [[rule]]
        name = "not-a-suffix"
        when.from_domain = ["ample.org"]
        tags = ["never"]
        [[rule]]
        name = "phone"
        when.from_phone = "+4930"
        tags = ["phone"]
        [[rule]]
        name = "handle"
        when.from_handle = "ADA"
        tags = ["handle"]
        [[rule]]
        name = "subject"
        when.subject_contains = "karte"
        tags = ["subject"]
        [[rule]]
        name = "text-not-subject"
        when.text_contains = "karte"
        tags = ["never"]
        [[rule]]
        name = "regex"
        when.text_matches = 'DE\d{2}(\s?\d{4}){4}'
        tags = ["iban"]
        [[rule]]
        name = "language"
        when.language = "de"
        tags = ["german"]
        [[rule]]
        name = "language-exact"
        when.language = "de-CH"
        tags = ["never"]
        [[rule]]
        name = "vip"
        when.customer_tags = ["VIP"]
        tags = ["vip"]
        [[rule]]
        name = "attachment"
        when.attachment = false
        tags = ["no-attachment"]
        [[rule]]
        name = "in-hours"
        when.in_hours = "office"
        tags = ["in-hours"]
        [[rule]]
        name = "outside-hours"
        when.outside_hours = "office"
        tags = ["never"]
        [[rule]]
        name = "any-all-not"
        when.any = [{ language = "en" }, { all = [{ contains = "iban" }, { not = { attachment = true } }] }]
        tags = ["combined"]
        [[rule]]
        name = "not"
        when.not = { language = "de" }
        tags = ["never"]
        "#);
    let c = eval(
        &rules,
        &message(Some("Karte"), "Meine IBAN DE44 5001 0517 5407 3249 31"),
        &["vip"],
    );
    assert!(!c.tags.contains(&"never".to_string()), "{:?}", matched(&c));
    assert_eq!(
        c.tags,
        [
            "channel",
            "adapter",
            "medium",
            "email",
            "domain",
            "phone",
            "handle",
            "subject",
            "iban",
            "german",
            "vip",
            "no-attachment",
            "in-hours",
            "combined"
        ]
    );
    let iban = c.trace.iter().find(|m| m.rule == "regex").unwrap();
    assert!(iban.because[0].value.contains("DE44 5001"), "{iban:?}");
    let combined = c.trace.iter().find(|m| m.rule == "any-all-not").unwrap();
    let fields: Vec<_> = combined.because.iter().map(|b| b.field.as_str()).collect();
    assert_eq!(fields, ["text", "not"]);

    let mut m = message(None, "x");
    m.attachments.push(AttachmentMeta {
        name: Some("a.pdf".into()),
        content_type: None,
        size: None,
        url: None,
    });
    m.customer = Customer::default();
    m.language = None;
    let c = eval(&rules, &m, &[]);
    assert_eq!(
        c.tags,
        ["channel", "adapter", "medium", "in-hours", "never"]
    );
}

#[test]
fn actions_merge_in_order_and_stop_ends() {
    let rules = set(r#"
        [sla]
        critical = "15m"
        high = "1h"
        normal = "4h"

        [relaxation]
        default = [{ after = "5m", drop_language = true }]
        urgent = [
          { name = "any-language", after = "2m", drop_language = true },
          { after = "10m", lower_skill_levels = 1 },
          { after = "20m", drop_skills = true },
        ]

        [[rule]]
        name = "billing"
        when.contains = "rechnung"
        skills = ["billing>=2", "technical"]
        queue = "billing"
        tags = ["billing"]
        [[rule]]
        name = "complaint"
        when.contains = "beschwerde"
        raise_urgency = 1
        skills = ["billing >= 4"]
        prefer_language = "de"
        sla = "45m"
        ack = "ack-urgent"
        relaxation = "urgent"
        [[rule]]
        name = "again"
        when.contains = "beschwerde"
        raise_urgency = 3
        sla = "2h"
        stop = true
        [[rule]]
        name = "never-reached"
        tags = ["late"]
        "#);
    let c = eval(&rules, &message(None, "Beschwerde über die Rechnung"), &[]);
    assert_eq!(matched(&c), ["billing", "complaint", "again"]);
    assert_eq!(c.urgency, Urgency::Critical);
    assert_eq!(
        c.skills,
        BTreeMap::from([("billing".into(), 4), ("technical".into(), 1)])
    );
    assert_eq!(c.queue.as_deref(), Some("billing"));
    assert_eq!(c.tags, ["billing"]);
    assert_eq!(
        c.sla,
        Some(Duration::from_secs(45 * 60)),
        "the shortest rule SLA wins"
    );
    assert_eq!(c.ack_template.as_deref(), Some("ack-urgent"));
    assert_eq!(c.relaxation_ladder, "urgent");
    let names: Vec<_> = c.relaxation.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["any-language", "urgent.2", "urgent.3"]);
    // Steps accumulate.
    let last = &c.relaxation[2];
    assert!(last.drop_language && last.lower_skill_levels == 1 && last.drop_skills);
    assert!(!c.relaxation[0].drop_skills);
    assert_eq!(c.trace[1].actions[0], "urgency raised by 1: normal → high");

    let c = eval(&rules, &message(None, "Rechnung"), &[]);
    assert_eq!(matched(&c), ["billing", "never-reached"]);
    assert_eq!(
        c.sla,
        Some(Duration::from_secs(4 * 3600)),
        "default for normal"
    );
    assert_eq!(c.relaxation.len(), 1);
    assert_eq!(rules.sla_for(Urgency::Low), None);
    assert_eq!(
        rules.sla_for(Urgency::Critical),
        Some(Duration::from_secs(900))
    );

    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(
        serde_json::from_value::<Classification>(json.clone()).unwrap(),
        c
    );
    assert_eq!(json["sla"], "4h");
    assert_eq!(json["urgency"], "normal");
    assert_eq!(json["relaxation"][0]["after"], "5m");
}

#[test]
fn urgency_set_and_raise_caps_at_critical() {
    let rules = set(r#"
        [[rule]]
        name = "low"
        when.contains = "newsletter"
        urgency = "low"
        suppress_ack = "newsletter"
        [[rule]]
        name = "up"
        when.contains = "up"
        raise_urgency = 2
        "#);
    let c = eval(&rules, &message(None, "newsletter up"), &[]);
    assert_eq!(c.urgency, Urgency::High);
    assert_eq!(c.suppress_ack.as_deref(), Some("newsletter"));
    let c = eval(&rules, &message(None, "up"), &[]);
    assert_eq!(c.urgency, Urgency::Critical);
}

#[test]
fn every_problem_is_reported_with_rule_and_key() {
    let catalog = Catalog {
        skills: Some(["billing", "technical"].map(String::from).into()),
        templates: ["ack"].map(String::from).into(),
        teams: Some(["payments"].map(String::from).into()),
    };
    let p = problems(
        r#"
        [hours.office]
        timezone = "Europe/Berlim"
        open = ["mon-fri 08:00-18:00"]

        [relaxation]
        default = [{ after = "10m", drop_language = true }, { after = "5m", lower_skill_levels = 7 }]

        [[rule]]
        name = "bad"
        when.text_matches = ["ok", "(unclosed"]
        when.in_hours = "office"
        when.any = [{ outside_hours = "weekend" }]
        skills = ["fraud>=3", "billing>=6", "technical>=0", "billing>"]
        ack = "ack-vip"
        queue = "sales"
        relaxation = "fast"

        [[rule]]
        name = "bad"
        when.channel = "fax/office"
        when.language = "german"
        prefer_language = "deutsch"

        [[rule]]
        name = "noop"
        when.contains = "x"
        "#,
        &catalog,
    );
    let got: Vec<String> = p.iter().map(|p| p.describe()).collect();
    let expect = [
        "`hours.office.timezone`: unknown time zone",
        "`relaxation.default[1].after`: steps must come in order",
        "`relaxation.default[1].lower_skill_levels`",
        "rule `bad`: `when.text_matches[1]`: bad regex",
        "rule `bad`: `when.in_hours`: schedule `office` has problems (see `hours.office`)",
        "rule `bad`: `when.any[0].outside_hours`: unknown schedule `weekend`",
        "rule `bad`: `skills[0]`: unknown skill `fraud` (known: billing, technical)",
        "rule `bad`: `skills[1]`: `billing>=6`: the level must be",
        "rule `bad`: `skills[2]`",
        "rule `bad`: `skills[3]`",
        "rule `bad`: `queue`: unknown queue `sales`",
        "rule `bad`: `ack`: unknown template `ack-vip`",
        "rule `bad`: `relaxation`: unknown relaxation ladder `fast`",
        "rule `bad`: `name`: two rules have this name",
        "rule `bad`: `when.channel`: unknown adapter `fax`",
        "rule `bad`: `when.language`: `german` is not a language tag",
        "rule `bad`: `prefer_language`",
        "rule `noop`: the rule has no action",
    ];
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    for (g, e) in got.iter().zip(expect) {
        assert!(
            g.starts_with(e),
            "{g:?} does not start with {e:?}\n{got:#?}"
        );
    }
    assert!(p.iter().all(|p| p.file == Path::new("rules.toml")));
    assert!(
        p[0].to_string()
            .starts_with("rules.toml: `hours.office.timezone`")
    );
}

#[test]
fn unknown_fields_and_syntax_are_problems_too() {
    let p = problems(
        "[[rule]]\nname = \"a\"\nwhen.text_contain = \"x\"\nurgency = \"high\"\n",
        &catalog(),
    );
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].rule.as_deref(), Some("a"));
    assert!(p[0].key.starts_with("when"), "{p:?}");
    assert!(p[0].message.contains("text_contain"), "{p:?}");
    let p = problems("[[rule]\n", &catalog());
    assert!(p[0].message.contains("TOML syntax"), "{p:?}");
}

#[test]
fn load_reports_a_missing_file() {
    let p = RuleSet::load(Path::new("/nonexistent/rules.toml"), &catalog()).unwrap_err();
    assert_eq!(
        p[0].to_string(),
        "/nonexistent/rules.toml: rules file not found"
    );
}

#[test]
fn not_explains_what_did_not_match() {
    let rules = set(r#"
        [[rule]]
        name = "not-english"
        when.not = { any = [{ language = "en" }, { contains = ["hello", "dear"] }] }
        prefer_language = "de"
        "#);
    let c = eval(&rules, &message(None, "Guten Tag"), &[]);
    assert_eq!(
        c.trace[0].because[0].value,
        "any of (language en; subject or text contains \"hello\", \"dear\")"
    );
}

#[test]
fn rule_sets_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<RuleSet>();
    shared::<Arc<RuleSet>>();
}
