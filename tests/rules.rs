//! `switchboard test-rules` and `switchboard check` on rules, through the
//! real binary: the shipped fixtures pass against the shipped rules, a
//! wrong fixture fails with a readable diff, and a broken rules file is
//! reported with its file, rule and key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn switchboard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .expect("run switchboard")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn example_config() -> String {
    root()
        .join("config/switchboard.toml")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn shipped_fixtures_pass() {
    // The default folder is `rules.tests/` next to the config.
    let out = switchboard(&["test-rules", "--config", &example_config()]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let fixtures = std::fs::read_dir(root().join("config/rules.tests"))
        .unwrap()
        .count();
    assert!(fixtures >= 10, "{fixtures}");
    assert_eq!(report.matches("PASS  ").count(), fixtures, "{report}");
    assert!(
        report.contains(&format!(
            "{fixtures} fixture(s): {fixtures} passed, 0 failed"
        )),
        "{report}"
    );
}

#[test]
fn a_wrong_fixture_fails_with_a_readable_diff() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(root().join("config/rules.tests/fraud-de.toml")).unwrap();
    let wrong = shipped
        .replace("urgency = \"critical\"", "urgency = \"high\"")
        .replace("queue = \"security\"", "queue = \"payments\"");
    assert_ne!(wrong, shipped);
    std::fs::write(dir.path().join("fraud-de-wrong.toml"), wrong).unwrap();
    std::fs::write(
        dir.path().join("plain.toml"),
        std::fs::read_to_string(root().join("config/rules.tests/plain-question-en.toml")).unwrap(),
    )
    .unwrap();

    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = switchboard(&["test-rules", "--config", &example_config(), &dir_arg]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("PASS  plain.toml"), "{report}");
    let expected = "\
FAIL  fraud-de-wrong.toml — Kartenbetrug auf Deutsch: kritisch, Sicherheitsteam, dringende Bestätigung
      urgency:
        expected: high
        got:      critical
      queue:
        expected: payments
        got:      security
      rules that matched:
        billing: subject contains \"Abbuchung\"
        web-form: channel generic/website
        fraud: text contains \"Betrug\"
";
    assert!(report.contains(expected), "{report}");
    assert!(
        report.contains("2 fixture(s): 1 passed, 1 failed"),
        "{report}"
    );
}

#[test]
fn a_wrong_associate_fails_with_the_candidates_and_exclusions() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(root().join("config/rules.tests/fraud-de.toml")).unwrap();
    let wrong = shipped.replace("associate = \"anna\"", "associate = \"frank\"");
    assert_ne!(wrong, shipped);
    std::fs::write(dir.path().join("fraud-de-frank.toml"), wrong).unwrap();
    // Nobody expected, but Anna is in and would get the blocked account.
    let shipped =
        std::fs::read_to_string(root().join("config/rules.tests/blocked-account-en.toml")).unwrap();
    let nobody = shipped.replace("associate = \"anna\"", "associate = \"\"");
    assert_ne!(nobody, shipped);
    std::fs::write(dir.path().join("blocked-nobody.toml"), nobody).unwrap();

    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = switchboard(&["test-rules", "--config", &example_config(), &dir_arg]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    let expected = "\
FAIL  fraud-de-frank.toml — Kartenbetrug auf Deutsch: kritisch, Sicherheitsteam, dringende Bestätigung
      associate:
        expected: frank
        got:      anna
      rules that matched:
        billing: subject contains \"Abbuchung\"
        web-form: channel generic/website
        fraud: text contains \"Betrug\"
      routing:
        candidate anna: score 111.0, skill fit 1.0, load 0.0
        candidate frank: score 91.0, skill fit 0.8, load 0.0
        excluded ben: not in team security
        excluded emma: not in team security
        excluded clara: outside working hours
        excluded david: outside working hours
";
    assert!(report.contains(expected), "{report}");
    assert!(
        report.contains(
            "      associate:\n        expected: (nobody: it would wait)\n        got:      anna\n"
        ),
        "{report}"
    );
    assert!(
        report.contains("excluded frank: does not speak en"),
        "{report}"
    );
    assert!(
        report.contains("2 fixture(s): 0 passed, 2 failed"),
        "{report}"
    );
}

#[test]
fn a_roster_snapshot_changes_who_gets_it_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(root().join("config/rules.tests/fraud-de.toml")).unwrap();
    // With Anna away, Frank gets it; a snapshot naming someone not on the
    // roster, or without an associate to check, is a broken fixture.
    let away = shipped
        .replace(
            "[expect]",
            "[roster]\npresence = { anna = \"away\" }\n\n[expect]",
        )
        .replace("associate = \"anna\"", "associate = \"frank\"");
    std::fs::write(dir.path().join("a-away.toml"), &away).unwrap();
    std::fs::write(
        dir.path().join("b-unknown.toml"),
        away.replace("anna = \"away\"", "anja = \"away\""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c-no-associate.toml"),
        away.replace("associate = \"frank\"", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("d-bad-presence.toml"),
        away.replace("\"away\"", "\"asleep\""),
    )
    .unwrap();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = switchboard(&["test-rules", "--config", &example_config(), &dir_arg]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("PASS  a-away.toml"), "{report}");
    assert!(
        report.contains("ERROR b-unknown.toml")
            && report.contains("`roster.presence`: not on the roster: anja"),
        "{report}"
    );
    assert!(
        report.contains("ERROR c-no-associate.toml")
            && report.contains("a roster snapshot needs `expect.associate`"),
        "{report}"
    );
    assert!(
        report.contains("ERROR d-bad-presence.toml") && report.contains("asleep"),
        "{report}"
    );
}

#[test]
fn a_broken_fixture_or_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = switchboard(&["test-rules", "--config", &example_config(), &dir_arg]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no fixtures"), "{}", text(&out));

    std::fs::write(
        dir.path().join("typo.toml"),
        "[message]\nid = \"1\"\ntext = \"hi\"\n[expect]\nurgncy = \"high\"\n",
    )
    .unwrap();
    let out = switchboard(&["test-rules", "--config", &example_config(), &dir_arg]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("ERROR typo.toml"), "{report}");
    assert!(report.contains("urgncy"), "{report}");
}

fn config_with_rules(dir: &Path, rules: &str) -> String {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("ack.en.txt"), "ref {{ reference }}").unwrap();
    std::fs::write(dir.join("rules.toml"), rules).unwrap();
    let config = dir.join("switchboard.toml");
    std::fs::write(&config, "[rules]\npath = \"rules.toml\"\n").unwrap();
    config.to_string_lossy().into_owned()
}

#[test]
fn check_reports_every_rule_problem_with_file_rule_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_rules(
        dir.path(),
        r#"
[hours.office]
timezone = "Europe/Berlim"
open = ["mon-fri 08:00-18:00"]

[[rule]]
name = "fraud"
when.text_matches = "(unclosed"
skills = ["billing>=9"]
ack = "ack-urgent"

[[rule]]
name = "typo"
when.text_contain = "x"
urgency = "high"
"#,
    );
    let out = switchboard(&["check", "--config", &config]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    let rules = dir.path().join("rules.toml");
    let rules = rules.display();
    for line in [
        format!("{rules}: `hours.office.timezone`: unknown time zone `Europe/Berlim`"),
        format!("{rules}: rule `fraud`: `when.text_matches`: bad regex"),
        format!(
            "{rules}: rule `fraud`: `skills[0]`: `billing>=9`: the level must be a whole number from 1 to 5"
        ),
        format!("{rules}: rule `fraud`: `ack`: unknown template `ack-urgent`"),
        format!("{rules}: rule `typo`: `when.text_contain`: unknown field `text_contain`"),
    ] {
        assert!(report.contains(&line), "missing {line:?} in\n{report}");
    }
}

#[test]
fn check_counts_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_rules(
        dir.path(),
        "[[rule]]\nname = \"vip\"\nwhen.customer_tags = \"vip\"\nraise_urgency = 1\n",
    );
    let out = switchboard(&["check", "--config", &config]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rules: ok (1 rule(s))"),
        "{}",
        text(&out)
    );
}
