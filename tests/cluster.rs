//! Scale-out: three instances of the real binary on one real PostgreSQL
//! (started by `scripts/postgres.sh` on a loopback port in a temp folder).
//! Duplicate webhooks across instances make one inquiry; concurrent accepts
//! across instances make one assignee within capacity; `kill -9` of the
//! routing leader during load loses and doubles nothing and another
//! instance takes routing (and the outbox) over; a PostgreSQL restart
//! during load answers 503 meanwhile and loses nothing.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::pg::{PgServer, create_database};
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const LEASE_TTL: &str = "3s";

fn token(id: &str) -> String {
    format!("tok-{id}")
}

fn roster(people: &[(&str, u16)]) -> String {
    let mut text = String::new();
    for (id, cap) in people {
        let hash = hex::encode(Sha256::digest(token(id).as_bytes()));
        text.push_str(&format!(
            "\n[[associate]]\nid = \"{id}\"\nname = \"{id}\"\nemail = \"{id}@bank.example\"\n\
             languages = [\"en\"]\nskills = {{ billing = 3 }}\ncapacity = {{ generic = {cap} }}\n\
             notify = \"none\"\ntoken_sha256 = \"{hash}\"\n"
        ));
    }
    text
}

/// Three daemons sharing one database (each with its own config folder,
/// the same roster and reply endpoint).
struct Cluster {
    _pg: PgServer,
    /// The instances' config folders, kept for their lifetime.
    _setups: Vec<Setup>,
    daemons: Vec<Option<Daemon>>,
    client: reqwest::Client,
}

impl Cluster {
    fn start(n: usize, reply_url: &str, people: &[(&str, u16)]) -> Cluster {
        let pg = PgServer::start();
        let url = create_database(&pg.admin_url);
        let mut setups = Vec::new();
        for i in 0..n {
            let mut setup = Setup::new(Some(reply_url));
            setup.store_url = url.clone();
            setup.cluster = format!(
                "[cluster]\ninstance = \"node-{i}\"\nlease_ttl = \"{LEASE_TTL}\"\ninbox_interval = \"50ms\"\n"
            );
            std::fs::write(setup.dir.path().join("roster.toml"), roster(people)).unwrap();
            let extra = "[roster]\npath = \"roster.toml\"\n\n[routing]\ninitial_presence = \"available\"\noffer_timeout = { critical = \"60s\", high = \"60s\", normal = \"60s\", low = \"60s\" }\n";
            let text = setup
                .config_text(Some(reply_url), extra)
                .replace("[store]\n", "[store]\nclaim_lease = \"3s\"\n");
            setup.write_config(&text);
            setups.push(setup);
        }
        let daemons = setups.iter().map(|s| Some(s.start())).collect();
        Cluster {
            _pg: pg,
            _setups: setups,
            daemons,
            client: http(),
        }
    }

    fn daemon(&self, i: usize) -> &Daemon {
        self.daemons[i].as_ref().expect("instance running")
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.daemons.len())
            .filter(|i| self.daemons[*i].is_some())
            .collect()
    }

    /// The instance that says (in its log) it leads routing, if one does.
    fn leader(&self) -> Option<usize> {
        self.alive().into_iter().find(|i| {
            let log = self.daemon(*i).log_text();
            let became = log.rfind("this instance is the routing leader");
            let left = log.rfind("stepped down as routing leader");
            became.is_some() && became > left
        })
    }

    async fn post(&self, i: usize, body: &Value) -> (u16, Value) {
        post_webhook(&self.client, self.daemon(i), "shop", body).await
    }

    async fn as_associate(
        &self,
        i: usize,
        who: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        api(
            &self.client,
            self.daemon(i),
            method,
            path,
            &token(who),
            body,
        )
        .await
    }

    async fn ops_get(&self, i: usize, path: &str) -> Value {
        let (status, body) = api_get(&self.client, self.daemon(i), path).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Every inquiry reference in the store, through instance `i`'s API.
    async fn references(&self, i: usize) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/inquiries?limit=500&cursor={c}"),
                None => "/api/v1/inquiries?limit=500".to_owned(),
            };
            let page = self.ops_get(i, &path).await;
            for inq in page["inquiries"].as_array().unwrap() {
                assert!(out.insert(inq["reference"].as_str().unwrap().to_owned()));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

fn message(id: &str) -> Value {
    json!({"id": id, "from": {"email": format!("{id}@customer.example")}, "text": "Please help with my invoice"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_inquiry_per_message_and_one_assignee_within_capacity() {
    let replies = ReplyServer::start(&[]).await;
    let cluster = Cluster::start(3, &replies.url, &[("anna", 1), ("ben", 1)]);

    // The same message posted to all three instances at once, ten times
    // each: one inquiry, and every answer names it.
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..10 {
        for i in 0..3 {
            let (client, daemon_url) = (cluster.client.clone(), cluster.daemon(i).url(""));
            tasks.spawn(async move {
                let body = serde_json::to_vec(&message("dup-1")).unwrap();
                let r = client
                    .post(format!("{daemon_url}/webhooks/generic/shop"))
                    .header("x-switchboard-signature", sign(&body))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (round, status, v)
            });
        }
    }
    let answers = tasks.join_all().await;
    let refs: HashSet<&str> = answers
        .iter()
        .map(|(_, _, v)| v["inquiry"].as_str().unwrap())
        .collect();
    assert_eq!(refs.len(), 1, "one inquiry: {answers:?}");
    let created = answers.iter().filter(|(_, s, _)| *s == 202).count();
    assert_eq!(created, 1, "exactly one 202, the rest are duplicates");
    let reference = refs.into_iter().next().unwrap().to_owned();
    assert_eq!(cluster.references(2).await.len(), 1);

    // Someone (capacity 1) gets the offer, whichever instance took the message.
    let (holder, other) = eventually(Duration::from_secs(15), "an offer", || async {
        for (who, other) in [("anna", "ben"), ("ben", "anna")] {
            let path = format!("/api/v1/associates/{who}/offers");
            let (status, body) = cluster.as_associate(1, who, Method::GET, &path, None).await;
            if status == 200 && body.to_string().contains(&reference) {
                return Some((who, other));
            }
        }
        None
    })
    .await;

    // Accepts through all three instances at once, by the holder (an
    // accept is idempotent for its holder) and by the other associate
    // (not offered): one assignment.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3 {
        for who in [holder, other] {
            let (client, base, reference) = (
                cluster.client.clone(),
                cluster.daemon(i).url(""),
                reference.clone(),
            );
            tasks.spawn(async move {
                let r = client
                    .post(format!("{base}/api/v1/inquiries/{reference}/accept"))
                    .bearer_auth(token(who))
                    .send()
                    .await
                    .unwrap();
                (who, r.status().as_u16())
            });
        }
    }
    let statuses = tasks.join_all().await;
    for (who, status) in &statuses {
        if *who == holder {
            assert_eq!(*status, 200, "{statuses:?}");
        } else {
            assert!(*status == 403 || *status == 409, "{statuses:?}");
        }
    }
    let detail = cluster
        .ops_get(0, &format!("/api/v1/inquiries/{reference}"))
        .await;
    assert_eq!(detail["assignee"], holder);
    assert_eq!(detail["status"], "assigned");
    let assigned = event_kinds(&detail)
        .iter()
        .filter(|k| *k == "assigned")
        .count();
    assert_eq!(assigned, 1, "one assignment: {:?}", event_kinds(&detail));

    // A second inquiry goes to the other associate: the holder is at
    // capacity.
    let (status, second) = cluster.post(0, &message("second")).await;
    assert_eq!(status, 202);
    let second = second["inquiry"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(15), "second offer", || async {
        let path = format!("/api/v1/associates/{other}/offers");
        let (_, body) = cluster
            .as_associate(2, other, Method::GET, &path, None)
            .await;
        body.to_string().contains(&second).then_some(())
    })
    .await;
    let path = format!("/api/v1/associates/{holder}/assignments");
    let (_, assignments) = cluster
        .as_associate(2, holder, Method::GET, &path, None)
        .await;
    assert_eq!(assignments["assignments"].as_array().unwrap().len(), 1);
    let path = format!("/api/v1/associates/{holder}/offers");
    let (_, offers) = cluster
        .as_associate(2, holder, Method::GET, &path, None)
        .await;
    assert!(
        offers["offers"].as_array().unwrap().is_empty(),
        "capacity 1 is never exceeded: {offers}"
    );
    // Presence set through one instance is what the leader routes by.
    let path = format!("/api/v1/associates/{holder}/presence");
    let (status, body) = cluster
        .as_associate(
            1,
            holder,
            Method::PUT,
            &path,
            Some(json!({"presence": "away"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, list) = api(
        &cluster.client,
        cluster.daemon(0),
        Method::GET,
        "/api/v1/associates",
        TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let me = list
        .as_array()
        .or_else(|| list["associates"].as_array())
        .unwrap()
        .iter()
        .find(|a| a["id"] == holder)
        .cloned()
        .unwrap();
    assert_eq!(me["presence"], "away", "{me}");
}

/// Sends `ids` spread over the live instances, retrying 503s and broken
/// connections (as a provider would) until each got a 2xx; returns
/// id → inquiry.
async fn deliver(cluster: &Cluster, ids: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let alive = cluster.alive();
    for (k, id) in ids.iter().enumerate() {
        let body = serde_json::to_vec(&message(id)).unwrap();
        let mut attempt = 0;
        loop {
            let i = alive[(k + attempt) % alive.len()];
            let r = cluster
                .client
                .post(cluster.daemon(i).url("/webhooks/generic/shop"))
                .header("x-switchboard-signature", sign(&body))
                .body(body.clone())
                .send()
                .await;
            if let Ok(r) = r
                && r.status().is_success()
            {
                let v: Value = r.json().await.unwrap();
                out.insert(id.clone(), v["inquiry"].as_str().unwrap().to_owned());
                break;
            }
            attempt += 1;
            assert!(attempt < 200, "message {id} was never accepted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

/// Waits until every inquiry of the run is acknowledged, then checks that
/// each was acknowledged once: one delivery id per inquiry (an entry an
/// instance had in flight when it died may arrive again with the same id,
/// after its claim ran out).
async fn acknowledged_once(replies: &ReplyServer, count: usize) {
    eventually(Duration::from_secs(30), "every acknowledgement", || async {
        let inquiries: HashSet<String> = replies
            .received()
            .iter()
            .map(|d| d.body["inquiry"].as_str().unwrap().to_owned())
            .collect();
        (inquiries.len() == count).then_some(())
    })
    .await;
    let mut per_inquiry: HashMap<String, HashSet<String>> = HashMap::new();
    for d in replies.received() {
        assert!(d.signature_ok);
        per_inquiry
            .entry(d.body["inquiry"].as_str().unwrap().to_owned())
            .or_default()
            .insert(d.delivery_id.clone());
    }
    assert!(
        per_inquiry.values().all(|ids| ids.len() == 1),
        "one acknowledgement (delivery id) per inquiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_during_load_loses_and_doubles_nothing() {
    let replies = ReplyServer::start(&[]).await;
    let mut cluster = Cluster::start(3, &replies.url, &[("anna", 500), ("ben", 500)]);
    let leader = cluster.leader().expect("one instance leads");

    // Load through every instance; midway, kill -9 the routing leader.
    let ids: Vec<String> = (0..300).map(|i| format!("load-{i}")).collect();
    let mut got = deliver(&cluster, &ids[..150]).await;
    cluster.daemons[leader].as_mut().unwrap().kill9();
    cluster.daemons[leader] = None;
    got.extend(deliver(&cluster, &ids[150..]).await);

    // Another instance takes routing over within about a lease's lifetime.
    let next = eventually(Duration::from_secs(20), "a new routing leader", || async {
        cluster.leader()
    })
    .await;
    assert_ne!(next, leader);

    // Nothing lost, nothing doubled: every message once, one inquiry each.
    let survivor = cluster.alive()[0];
    let stored = cluster.references(survivor).await;
    assert_eq!(stored.len(), ids.len(), "exactly one inquiry per message");
    let answered: HashSet<&String> = got.values().collect();
    assert_eq!(answered.len(), ids.len());
    assert!(answered.iter().all(|r| stored.contains(*r)));

    // Routing resumed on the new leader: every inquiry is offered, once.
    eventually(Duration::from_secs(30), "every inquiry offered", || async {
        let mut offered = Vec::new();
        for who in ["anna", "ben"] {
            let path = format!("/api/v1/associates/{who}/offers");
            let (_, body) = cluster
                .as_associate(survivor, who, Method::GET, &path, None)
                .await;
            for o in body["offers"].as_array().into_iter().flatten() {
                offered.push(o["inquiry"].as_str().unwrap_or_default().to_owned());
            }
        }
        let distinct: HashSet<&String> = offered.iter().collect();
        assert_eq!(distinct.len(), offered.len(), "one live offer per inquiry");
        (offered.len() == ids.len()).then_some(())
    })
    .await;
    acknowledged_once(&replies, ids.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_during_load_answers_503_and_loses_nothing() {
    let replies = ReplyServer::start(&[]).await;
    let cluster = Cluster::start(2, &replies.url, &[("anna", 500)]);
    let ids: Vec<String> = (0..120).map(|i| format!("pg-{i}")).collect();
    let mut got = deliver(&cluster, &ids[..40]).await;

    cluster._pg.stop();
    // While the database is down, intake refuses (providers retry) and
    // readiness fails, instead of accepting what it cannot commit.
    let (status, _) = cluster.post(0, &message("while-down")).await;
    assert_eq!(status, 503);
    let ready = cluster
        .client
        .get(cluster.daemon(1).url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(ready, 503);
    // The database comes back while the sender is retrying.
    let dir = cluster._pg.dir();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        common::pg::start_again_at(&dir);
    });
    got.extend(deliver(&cluster, &ids[40..]).await);
    restarter.join().unwrap();

    // Every message exactly once, every one acknowledged once.
    let stored = cluster.references(0).await;
    assert_eq!(stored.len(), ids.len(), "nothing lost, nothing doubled");
    let answered: HashSet<&String> = got.values().collect();
    assert!(answered.iter().all(|r| stored.contains(*r)));
    acknowledged_once(&replies, ids.len()).await;
    // Readiness is back without restarting the instances.
    for i in 0..2 {
        let ready = cluster
            .client
            .get(cluster.daemon(i).url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(ready, 200);
    }
}
