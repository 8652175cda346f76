//! Routing over HTTP against the real binary: offers, accepts, declines,
//! timeouts, backfill, presence, sticky routing, capacity under concurrent
//! accepts, authorization, explanations and restart.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Each associate's API token is `tok-<id>`.
fn token(id: &str) -> String {
    format!("tok-{id}")
}

/// `(id, skills, generic capacity)`; everyone speaks English, no hours.
fn roster(people: &[(&str, &str, u16)], extra: &str) -> String {
    let mut text = String::from(extra);
    for (id, skills, cap) in people {
        let hash = hex::encode(Sha256::digest(token(id).as_bytes()));
        text.push_str(&format!(
            "\n[[associate]]\nid = \"{id}\"\nname = \"{id}\"\nemail = \"{id}@bank.example\"\n\
             languages = [\"en\"]\nskills = {{ {skills} }}\ncapacity = {{ generic = {cap} }}\n\
             notify = \"none\"\ntoken_sha256 = \"{hash}\"\n"
        ));
    }
    text
}

struct Desk {
    setup: Setup,
    daemon: Daemon,
    client: reqwest::Client,
}

impl Desk {
    fn start(roster_text: &str, routing: &str) -> Desk {
        let setup = Setup::new(None);
        std::fs::write(setup.dir.path().join("roster.toml"), roster_text).unwrap();
        let extra = format!("[roster]\npath = \"roster.toml\"\n\n[routing]\n{routing}\n");
        setup.write_config(&setup.config_text(None, &extra));
        let daemon = setup.start();
        Desk {
            setup,
            daemon,
            client: http(),
        }
    }

    async fn inquiry(&self, id: &str, email: &str) -> String {
        let body = json!({"id": id, "from": {"email": email}, "subject": id, "text": "Hello"});
        let (status, answer) = post_webhook(&self.client, &self.daemon, "shop", &body).await;
        assert_eq!(status, 202, "{answer}");
        answer["inquiry"].as_str().unwrap().to_owned()
    }

    async fn act(
        &self,
        who: &str,
        reference: &str,
        action: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let path = format!("/api/v1/inquiries/{reference}/{action}");
        api(
            &self.client,
            &self.daemon,
            Method::POST,
            &path,
            &token(who),
            body,
        )
        .await
    }

    async fn ops(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        api(&self.client, &self.daemon, method, path, TOKEN, body).await
    }

    async fn offers(&self, who: &str) -> Vec<String> {
        let path = format!("/api/v1/associates/{who}/offers");
        let (status, body) = api(
            &self.client,
            &self.daemon,
            Method::GET,
            &path,
            &token(who),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["offers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["inquiry"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until `who` holds an offer for `reference`.
    async fn offered(&self, who: &str, reference: &str) {
        eventually(
            Duration::from_secs(10),
            &format!("offer of {reference} to {who}"),
            || async {
                self.offers(who)
                    .await
                    .contains(&reference.to_owned())
                    .then_some(())
            },
        )
        .await
    }

    async fn detail(&self, reference: &str) -> Value {
        let (status, body) = self
            .ops(Method::GET, &format!("/api/v1/inquiries/{reference}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn presence(&self, who: &str, presence: &str) {
        let path = format!("/api/v1/associates/{who}/presence");
        let (status, body) = api(
            &self.client,
            &self.daemon,
            Method::PUT,
            &path,
            &token(who),
            Some(json!({ "presence": presence })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

fn events<'a>(detail: &'a Value, kind: &str) -> Vec<&'a Value> {
    detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

const AVAILABLE: &str = "initial_presence = \"available\"";

#[tokio::test]
async fn offer_accept_resolve_backfill_and_who_may_do_what() {
    let desk = Desk::start(&roster(&[("anna", "", 1), ("ben", "", 1)], ""), AVAILABLE);
    let first = desk.inquiry("m1", "c1@example.org").await;
    desk.offered("anna", &first).await;

    // Ben may neither take nor look at Anna's offer.
    assert_eq!(desk.act("ben", &first, "accept", None).await.0, 403);
    let path = format!("/api/v1/inquiries/{first}");
    let (status, _) = api(
        &desk.client,
        &desk.daemon,
        Method::GET,
        &path,
        &token("ben"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = api(
        &desk.client,
        &desk.daemon,
        Method::GET,
        "/api/v1/associates/anna/offers",
        &token("ben"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = api(
        &desk.client,
        &desk.daemon,
        Method::GET,
        "/api/v1/queue",
        &token("ben"),
        None,
    )
    .await;
    assert_eq!(status, 403, "the queue is for ops");
    let (status, _) = api(
        &desk.client,
        &desk.daemon,
        Method::GET,
        &path,
        "no-such-token",
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Anna sees it with the explanation, and accepts.
    let (status, mine) = api(
        &desk.client,
        &desk.daemon,
        Method::GET,
        &path,
        &token("anna"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{mine}");
    let offered = events(&mine, "offered");
    assert_eq!(offered[0]["detail"]["winner"], "anna");
    assert!(offered[0]["detail"]["candidates"].as_array().unwrap().len() == 2);
    assert!(offered[0]["detail"]["weights"]["skill"].is_number());
    let (status, body) = desk.act("anna", &first, "accept", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(desk.detail(&first).await["status"], "assigned");

    let second = desk.inquiry("m2", "c2@example.org").await;
    desk.offered("ben", &second).await;
    let third = desk.inquiry("m3", "c3@example.org").await;
    eventually(Duration::from_secs(10), "third in the queue", || async {
        let (_, q) = desk.ops(Method::GET, "/api/v1/queue", None).await;
        (q["waiting"][0]["inquiry"] == third.as_str()).then_some(())
    })
    .await;

    // Resolving frees Anna's capacity: the waiting one is offered to her.
    let (status, _) = desk
        .act(
            "anna",
            &first,
            "resolve",
            Some(json!({"note": "card unblocked"})),
        )
        .await;
    assert_eq!(status, 200);
    desk.offered("anna", &third).await;
    let resolved = desk.detail(&first).await;
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(
        events(&resolved, "resolved")[0]["detail"]["note"],
        "card unblocked"
    );

    // Errors: resolved → 409, unknown → 404, acting for others → 403,
    // ops without a name → 400, bad JSON → 400, unknown associate → 404.
    assert_eq!(desk.act("anna", &first, "accept", None).await.0, 409);
    assert_eq!(desk.act("anna", "INQ-7K3F9Q", "accept", None).await.0, 404);
    assert_eq!(
        desk.act("anna", &second, "accept", Some(json!({"associate": "ben"})))
            .await
            .0,
        403
    );
    let (status, _) = desk
        .ops(
            Method::POST,
            &format!("/api/v1/inquiries/{second}/accept"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = desk
        .ops(
            Method::PUT,
            "/api/v1/associates/anna/presence",
            Some(json!({"presence": "snoozing"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = desk
        .ops(
            Method::PUT,
            "/api/v1/associates/zed/presence",
            Some(json!({"presence": "away"})),
        )
        .await;
    assert_eq!(status, 404);
    // Ops may act for Ben.
    let (status, body) = desk
        .ops(
            Method::POST,
            &format!("/api/v1/inquiries/{second}/accept"),
            Some(json!({"associate": "ben"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = desk.ops(Method::GET, "/api/v1/associates", None).await;
    let ben = list["associates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "ben")
        .unwrap();
    assert_eq!(ben["load"]["generic"], 1);
}

#[tokio::test]
async fn decline_and_timeout_pass_the_offer_on() {
    let desk = Desk::start(
        &roster(
            &[
                ("anna", "billing = 5", 2),
                ("ben", "billing = 4", 2),
                ("cem", "billing = 3", 2),
            ],
            "",
        ),
        &format!(
            "{AVAILABLE}\nweights = {{ sticky = 0.0, skill = 0.0, load = 0.0, idle = 0.0 }}\noffer_timeout = {{ normal = \"1s\" }}"
        ),
    );
    let r = desk.inquiry("m1", "c1@example.org").await;
    desk.offered("anna", &r).await;
    assert_eq!(desk.act("anna", &r, "decline", None).await.0, 200);
    desk.offered("ben", &r).await;
    // Ben lets it time out; it goes to Cem, and Ben's late accept is 409.
    desk.offered("cem", &r).await;
    assert_eq!(desk.act("ben", &r, "accept", None).await.0, 409);
    assert_eq!(desk.act("cem", &r, "accept", None).await.0, 200);
    let detail = desk.detail(&r).await;
    let kinds = event_kinds(&detail);
    for kind in ["offered", "declined", "offer_expired", "assigned"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    assert_eq!(detail["assignee"], "cem");
}

#[tokio::test]
async fn concurrent_accepts_never_exceed_capacity() {
    let desk = Desk::start(&roster(&[("anna", "", 2), ("ben", "", 1)], ""), AVAILABLE);
    let mut refs = Vec::new();
    for i in 0..6 {
        refs.push(
            desk.inquiry(&format!("m{i}"), &format!("c{i}@example.org"))
                .await,
        );
    }
    eventually(Duration::from_secs(10), "three offers out", || async {
        (desk.offers("anna").await.len() + desk.offers("ben").await.len() == 3).then_some(())
    })
    .await;
    // Everyone tries to accept everything at once.
    let mut attempts = Vec::new();
    for r in &refs {
        for who in ["anna", "ben"] {
            attempts.push(desk.act(who, r, "accept", None));
        }
    }
    let results = futures::future::join_all(attempts).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 3, "{results:?}");
    assert!(
        results.iter().all(|(s, _)| matches!(s, 200 | 403)),
        "{results:?}"
    );
    let (_, list) = desk.ops(Method::GET, "/api/v1/associates", None).await;
    for a in list["associates"].as_array().unwrap() {
        let load = a["load"]["generic"].as_u64().unwrap();
        let cap = a["capacity"]["generic"].as_u64().unwrap();
        assert_eq!(load, cap, "{a}");
    }
    let mut assignees = Vec::new();
    for r in &refs {
        let d = desk.detail(r).await;
        if d["status"] == "assigned" {
            assignees.push(d["assignee"].as_str().unwrap().to_owned());
        }
    }
    assignees.sort();
    assert_eq!(assignees, vec!["anna", "anna", "ben"]);
}

#[tokio::test]
async fn presence_gates_offers_and_offers_survive_a_restart() {
    let mut desk = Desk::start(&roster(&[("anna", "", 2)], ""), "");
    let r = desk.inquiry("m1", "c1@example.org").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(desk.offers("anna").await.is_empty(), "offline by default");
    let detail = desk.detail(&r).await;
    let queued = events(&detail, "queued");
    assert_eq!(queued[0]["detail"]["excluded"][0]["reason"], "offline");

    desk.presence("anna", "available").await;
    desk.offered("anna", &r).await;

    desk.daemon.signal("TERM");
    assert_eq!(desk.daemon.wait_exit(Duration::from_secs(10)), Some(0));
    desk.daemon = desk.setup.start();
    assert_eq!(
        desk.offers("anna").await,
        vec![r.clone()],
        "the open offer resumes"
    );
    assert_eq!(desk.act("anna", &r, "accept", None).await.0, 200);

    desk.presence("anna", "away").await;
    let second = desk.inquiry("m2", "c2@example.org").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(desk.offers("anna").await.is_empty(), "away gets no offers");
    desk.presence("anna", "available").await;
    desk.offered("anna", &second).await;
}

#[tokio::test]
async fn the_customers_previous_associate_comes_first() {
    let desk = Desk::start(
        &roster(&[("anna", "", 3), ("ben", "", 3)], ""),
        &format!(
            "{AVAILABLE}\nweights = {{ sticky = 1000.0, skill = 0.0, load = 0.0, idle = 0.0 }}"
        ),
    );
    let first = desk.inquiry("m1", "Loyal@Example.org").await;
    desk.offered("anna", &first).await;
    desk.act("anna", &first, "decline", None).await;
    desk.offered("ben", &first).await;
    desk.act("ben", &first, "accept", None).await;
    desk.act("ben", &first, "resolve", None).await;

    let again = desk.inquiry("m2", "loyal@example.org").await;
    desk.offered("ben", &again).await;
    let detail = desk.detail(&again).await;
    let why = &events(&detail, "offered")[0]["detail"];
    assert_eq!(why["candidates"][0]["associate"], "ben");
    assert_eq!(why["candidates"][0]["sticky"], true);
    assert_eq!(why["candidates"][1]["sticky"], false);
}

#[tokio::test]
async fn transfer_moves_work_and_notifies_by_webhook() {
    let hooks = ReplyServer::start(&[]).await;
    let roster_text = roster(&[("anna", "", 2)], "")
        + &format!(
            "\n[[associate]]\nid = \"ben\"\nname = \"Ben\"\nemail = \"ben@bank.example\"\n\
             capacity = {{ generic = 2 }}\nnotify_webhook = \"{}\"\ntoken_sha256 = \"{}\"\n",
            hooks.url,
            hex::encode(Sha256::digest(token("ben").as_bytes()))
        );
    let desk = Desk::start(&roster_text, AVAILABLE);
    desk.presence("ben", "away").await;
    let r = desk.inquiry("m1", "c1@example.org").await;
    desk.offered("anna", &r).await;
    desk.act("anna", &r, "accept", None).await;
    // Away people cannot receive transfers; unknown ones are 404.
    let (status, _) = desk
        .act("anna", &r, "transfer", Some(json!({"to": "ben"})))
        .await;
    assert_eq!(status, 409);
    let (status, _) = desk
        .act("anna", &r, "transfer", Some(json!({"to": "zed"})))
        .await;
    assert_eq!(status, 404);
    desk.presence("ben", "available").await;
    let (status, body) = desk
        .act(
            "anna",
            &r,
            "transfer",
            Some(json!({"to": "ben", "note": "fraud specialist"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let note = eventually(
        Duration::from_secs(10),
        "assignment notification",
        || async {
            hooks
                .received()
                .into_iter()
                .find(|d| d.body["what"] == "assignment")
        },
    )
    .await;
    assert_eq!(note.body["inquiry"], r.as_str());
    assert_eq!(note.body["associate"], "ben");
    assert!(note.body["text"].as_str().unwrap().contains(&r));
    let detail = desk.detail(&r).await;
    assert_eq!(detail["assignee"], "ben");
    assert_eq!(
        events(&detail, "transferred")[0]["detail"]["note"],
        "fraud specialist"
    );
    // The delivery is recorded once the webhook has answered: a moment
    // after the hook saw it.
    eventually(Duration::from_secs(10), "the notified event", || async {
        let detail = desk.detail(&r).await;
        event_kinds(&detail)
            .iter()
            .any(|k| k == "notified")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn rules_set_skills_sla_breaches_and_relaxation_widens_over_time() {
    let rules = r#"
[sla]
critical = "1s"

[relaxation]
default = [{ name = "one-level-lower", after = "2500ms", lower_skill_levels = 1 }]

[[rule]]
name = "fraud"
when.contains = ["fraud", "Betrug"]
urgency = "critical"
skills = ["billing>=4"]
"#;
    let setup_roster = roster(&[("anna", "billing = 3", 2), ("ben", "billing = 5", 2)], "");
    let desk = Desk::start(&setup_roster, AVAILABLE);
    std::fs::write(desk.setup.dir.path().join("rules.toml"), rules).unwrap();
    // The rules file sits beside the config: reload picks it up.
    desk.daemon.signal("HUP");
    eventually(Duration::from_secs(10), "reload", || async {
        desk.daemon
            .log_contains("configuration reloaded")
            .then_some(())
    })
    .await;
    desk.presence("ben", "away").await;

    let body =
        json!({"id": "f1", "from": {"email": "v@example.org"}, "text": "I think this is fraud"});
    let (status, answer) = post_webhook(&desk.client, &desk.daemon, "shop", &body).await;
    assert_eq!(status, 202, "{answer}");
    let r = answer["inquiry"].as_str().unwrap().to_owned();

    let detail = desk.detail(&r).await;
    assert_eq!(detail["urgency"], "critical");
    assert_eq!(detail["requirements"]["skills"]["billing"], 4);
    let classified = events(&detail, "classified");
    assert_eq!(classified[0]["detail"]["rules"][0]["rule"], "fraud");
    let queued = eventually(Duration::from_secs(10), "queued", || async {
        let d = desk.detail(&r).await;
        events(&d, "queued").first().map(|e| e["detail"].clone())
    })
    .await;
    let reasons: Vec<&str> = queued["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["billing 3 < 4", "away"]);

    // Nobody answers within the 1 s target: a breach, once.
    eventually(Duration::from_secs(10), "SLA breach", || async {
        let d = desk.detail(&r).await;
        (d["sla_breached"] == true && events(&d, "sla_breached").len() == 1).then_some(())
    })
    .await;
    assert!(
        metrics_text(&desk.client, &desk.daemon)
            .await
            .contains("switchboard_sla_breaches_total{urgency=\"critical\"} 1")
    );
    // After 2.5 s one level lower is enough: Anna gets it.
    desk.offered("anna", &r).await;
    let detail = desk.detail(&r).await;
    assert_eq!(
        events(&detail, "relaxed")[0]["detail"]["step"],
        "one-level-lower"
    );
    assert_eq!(
        events(&detail, "offered")[0]["detail"]["relaxation_step"],
        "one-level-lower"
    );
}

#[tokio::test]
async fn a_roster_with_problems_is_refused_at_reload_and_the_old_one_stays() {
    let desk = Desk::start(&roster(&[("anna", "", 1)], ""), AVAILABLE);
    std::fs::write(
        desk.setup.dir.path().join("roster.toml"),
        "[[associate]]\nid = \"anna\"\nname = \"A\"\nemail = \"a@x\"\nskills = { billing = 9 }\n",
    )
    .unwrap();
    desk.daemon.signal("HUP");
    eventually(Duration::from_secs(10), "rejection", || async {
        desk.daemon
            .log_contains("configuration rejected")
            .then_some(())
    })
    .await;
    assert!(
        desk.daemon.log_contains("outside 1..=5"),
        "{}",
        desk.daemon.log_text()
    );
    let r = desk.inquiry("m1", "c@example.org").await;
    desk.offered("anna", &r).await;
}

#[tokio::test]
async fn an_edited_roster_is_reloaded_without_a_signal_and_a_broken_one_refused() {
    let setup = Setup::new(None);
    let roster_file = setup.dir.path().join("roster.toml");
    std::fs::write(&roster_file, roster(&[("anna", "", 1)], "")).unwrap();
    setup.write_config(&setup.config_text(
        None,
        &format!("[roster]\npath = \"roster.toml\"\n\n[routing]\n{AVAILABLE}\n"),
    ));
    let daemon = Daemon::start(
        &setup.config_path(),
        &[("SWITCHBOARD__SERVER__WATCH_INTERVAL", "100ms")],
    );
    let desk = Desk {
        setup,
        daemon,
        client: http(),
    };
    let count = |needle: &str| {
        desk.daemon
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    };

    // Ben replaces Anna; no SIGHUP is sent.
    std::fs::write(&roster_file, roster(&[("ben", "", 1)], "")).unwrap();
    eventually(Duration::from_secs(10), "reload on change", || async {
        desk.daemon
            .log_contains("configuration reloaded")
            .then_some(())
    })
    .await;
    assert!(
        desk.daemon.log_contains("roster.toml"),
        "{}",
        desk.daemon.log_text()
    );
    let first = desk.inquiry("m1", "c1@example.org").await;
    desk.offered("ben", &first).await;

    // A broken roster is refused, once, and Ben's stays.
    std::fs::write(
        &roster_file,
        "[[associate]]\nid = \"ben\"\nname = \"B\"\nemail = \"b@x\"\nskills = { billing = 9 }\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), "rejection", || async {
        desk.daemon.log_contains("outside 1..=5").then_some(())
    })
    .await;
    let changes = count("configuration changed on disk");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        count("configuration changed on disk"),
        changes,
        "one reload per change:\n{}",
        desk.daemon.log_text()
    );
    assert_eq!(
        count("configuration reloaded"),
        1,
        "{}",
        desk.daemon.log_text()
    );
    assert_eq!(desk.act("ben", &first, "accept", None).await.0, 200);
    assert_eq!(desk.act("ben", &first, "resolve", None).await.0, 200);
    let second = desk.inquiry("m2", "c2@example.org").await;
    desk.offered("ben", &second).await;
}

#[tokio::test]
async fn working_hours_keep_offers_from_associates_off_duty() {
    // Anna's schedule is open every day, but today and tomorrow (UTC) are
    // holidays: she is off duty whenever this test runs. She comes first
    // on the roster, so she would win every tie if her hours were ignored.
    let today = chrono::Utc::now().date_naive();
    let tomorrow = today.succ_opt().unwrap();
    let anna = format!(
        "[hours.closed]\ntimezone = \"UTC\"\nopen = [\"daily 00:00-24:00\"]\n\
         holidays = [\"{today}\", \"{tomorrow}\"]\n\n\
         [[associate]]\nid = \"anna\"\nname = \"Anna\"\nemail = \"anna@bank.example\"\n\
         languages = [\"en\"]\nskills = {{ billing = 5 }}\ncapacity = {{ generic = 3 }}\n\
         hours = \"closed\"\nnotify = \"none\"\ntoken_sha256 = \"{}\"\n",
        hex::encode(Sha256::digest(token("anna").as_bytes()))
    );
    let desk = Desk::start(&roster(&[("ben", "billing = 3", 3)], &anna), AVAILABLE);

    let first = desk.inquiry("m1", "c1@example.org").await;
    desk.offered("ben", &first).await;
    assert!(desk.offers("anna").await.is_empty());
    let detail = desk.detail(&first).await;
    let why = &events(&detail, "offered")[0]["detail"];
    assert_eq!(why["winner"], "ben");
    assert_eq!(why["candidates"].as_array().unwrap().len(), 1, "{why}");
    assert_eq!(why["excluded"][0]["associate"], "anna", "{why}");
    assert_eq!(why["excluded"][0]["reason"], "outside working hours");
    assert_eq!(desk.act("ben", &first, "accept", None).await.0, 200);

    // With Ben away nobody is on duty: it waits, and says why.
    desk.presence("ben", "away").await;
    let second = desk.inquiry("m2", "c2@example.org").await;
    let queued = eventually(Duration::from_secs(10), "queued", || async {
        let d = desk.detail(&second).await;
        events(&d, "queued").first().map(|e| e["detail"].clone())
    })
    .await;
    assert_eq!(queued["winner"], Value::Null);
    let excluded: Vec<(&str, &str)> = queued["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["associate"].as_str().unwrap(),
                x["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        excluded,
        vec![("anna", "outside working hours"), ("ben", "away")]
    );
    assert!(desk.offers("anna").await.is_empty());
    let (_, q) = desk.ops(Method::GET, "/api/v1/queue", None).await;
    let waiting: Vec<&str> = q["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["inquiry"].as_str().unwrap())
        .collect();
    assert_eq!(waiting, vec![second.as_str()], "{q}");
}

/// How many acknowledgement decisions (queued or skipped) an inquiry has.
fn acks(detail: &Value) -> usize {
    event_kinds(detail)
        .iter()
        .filter(|k| k.as_str() == "ack_queued" || k.as_str() == "ack_skipped")
        .count()
}

/// Posts a generic message on thread `thread`; returns the webhook's answer.
async fn on_thread(desk: &Desk, id: &str, thread: &str) -> (u16, Value) {
    let body = json!({
        "id": id, "from": {"email": "c1@example.org"}, "subject": "Card",
        "text": format!("message {id}"), "thread": thread,
    });
    post_webhook(&desk.client, &desk.daemon, "shop", &body).await
}

/// A reply within `threading.reopen_window` to a resolved inquiry reopens
/// it (same reference, one acknowledgement) and the router offers it
/// again, to whoever held it before.
#[tokio::test]
async fn a_reply_to_a_resolved_inquiry_reopens_it_and_it_is_offered_again() {
    let routing = format!("{AVAILABLE}\n\n[threading]\nreopen_window = \"7d\"\n");
    let desk = Desk::start(&roster(&[("anna", "", 1), ("ben", "", 1)], ""), &routing);
    desk.presence("anna", "away").await;
    let (status, first) = on_thread(&desk, "r1", "order-1").await;
    assert_eq!(status, 202, "{first}");
    let reference = first["inquiry"].as_str().unwrap().to_owned();
    desk.offered("ben", &reference).await;
    assert_eq!(desk.act("ben", &reference, "accept", None).await.0, 200);
    assert_eq!(desk.act("ben", &reference, "resolve", None).await.0, 200);
    desk.presence("anna", "available").await;
    assert_eq!(desk.detail(&reference).await["status"], "resolved");

    let (status, reply) = on_thread(&desk, "r2", "order-1").await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["inquiry"], reference.as_str(), "the same inquiry");
    // Anna is free and has been idle longest, but Ben held it before.
    desk.offered("ben", &reference).await;
    assert!(desk.offers("anna").await.is_empty());
    let detail = desk.detail(&reference).await;
    assert_eq!(detail["status"], "offered");
    assert_eq!(detail["messages"].as_array().unwrap().len(), 2);
    let reopened = events(&detail, "reopened");
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened[0]["detail"]["provider_id"], "r2");
    assert_eq!(reopened[0]["detail"]["via"], "thread");
    assert_eq!(acks(&detail), 1, "not acknowledged again");
    let offered = events(&detail, "offered");
    assert_eq!(offered.len(), 2);
    assert_eq!(offered[1]["detail"]["candidates"][0]["sticky"], true);

    // The same provider message again is a duplicate and changes nothing.
    let (status, again) = on_thread(&desk, "r2", "order-1").await;
    assert_eq!((status, &again["duplicate"]), (200, &json!(true)));
    assert_eq!(events(&desk.detail(&reference).await, "reopened").len(), 1);

    // It runs its course again.
    assert_eq!(desk.act("ben", &reference, "accept", None).await.0, 200);
    assert_eq!(desk.act("ben", &reference, "resolve", None).await.0, 200);
    assert_eq!(desk.detail(&reference).await["status"], "resolved");
}

/// With the window passed (`0s`: always), a reply to a resolved inquiry
/// opens a new inquiry linked to it; later replies on the thread join that.
#[tokio::test]
async fn a_reply_after_the_reopen_window_opens_a_linked_inquiry() {
    let routing = format!("{AVAILABLE}\n\n[threading]\nreopen_window = \"0s\"\n");
    let desk = Desk::start(&roster(&[("anna", "", 2)], ""), &routing);
    let (_, first) = on_thread(&desk, "l1", "order-2").await;
    let old = first["inquiry"].as_str().unwrap().to_owned();
    desk.offered("anna", &old).await;
    let (status, body) = desk
        .ops(
            Method::POST,
            &format!("/api/v1/inquiries/{old}/resolve"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, reply) = on_thread(&desk, "l2", "order-2").await;
    assert_eq!(status, 202, "{reply}");
    let new = reply["inquiry"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    desk.offered("anna", &new).await;
    let detail = desk.detail(&new).await;
    assert_eq!(detail["linked_to"], old.as_str());
    assert_eq!(
        events(&detail, "linked")[0]["detail"]["linked_to"],
        old.as_str()
    );
    assert_eq!(
        acks(&detail),
        1,
        "acknowledged (or its skip recorded) as a new inquiry"
    );
    let was = desk.detail(&old).await;
    assert_eq!(was["status"], "resolved");
    assert_eq!(was["linked_from"], json!([new]));
    assert_eq!(
        events(&was, "linked")[0]["detail"]["linked_from"],
        new.as_str()
    );
    assert!(events(&was, "reopened").is_empty());

    let (_, next) = on_thread(&desk, "l3", "order-2").await;
    assert_eq!(next["inquiry"], new.as_str());
    assert_eq!(
        desk.detail(&new).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
