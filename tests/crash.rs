//! The crash test: 2,000 signed webhooks sent concurrently, `kill -9` of the
//! daemon midway, restart, all 2,000 sent again. Every message that got a
//! 2xx before the crash exists exactly once, there are exactly 2,000
//! inquiries, and each got exactly one acknowledgement (by delivery id; a
//! delivery in flight at the crash may arrive twice with the same id).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::sync::Semaphore;

const TOTAL: usize = 2_000;
const CONCURRENCY: usize = 64;
const KILL_AFTER: usize = 700;

/// Sends every message once; returns id → (status, inquiry) for the answers
/// that arrived. With `kill`, kills the daemon after `KILL_AFTER` answers.
async fn send_all(daemon: &mut Daemon, kill: bool) -> HashMap<usize, (u16, String)> {
    let client = http();
    let url = daemon.url("/webhooks/generic/shop");
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let answered = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TOTAL {
        let (client, url, gate, answered, killed) = (
            client.clone(),
            url.clone(),
            gate.clone(),
            answered.clone(),
            killed.clone(),
        );
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let body = serde_json::to_vec(&json!({
                "id": format!("crash-{i}"),
                "from": {"name": format!("Customer {i}")},
                "text": format!("message number {i}"),
            }))
            .unwrap();
            let response = client
                .post(url)
                .header("x-switchboard-signature", sign(&body))
                .body(body)
                .send()
                .await;
            let result = match response {
                Ok(r) if r.status().is_success() => {
                    let status = r.status().as_u16();
                    match r.json::<serde_json::Value>().await {
                        Ok(v) => Some((i, (status, v["inquiry"].as_str().unwrap().to_owned()))),
                        Err(_) => None,
                    }
                }
                Ok(r) => panic!("unexpected status {}", r.status()),
                Err(_) => None,
            };
            if answered.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                killed.notify_one();
            }
            result
        });
    }
    if kill {
        killed.notified().await;
        daemon.kill9();
    }
    let mut answers = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        if let Some((i, a)) = r.unwrap() {
            answers.insert(i, a);
        }
    }
    answers
}

async fn outbox_counts(client: &reqwest::Client, daemon: &Daemon) -> (u64, u64, u64) {
    let text = metrics_text(client, daemon).await;
    let get = |status: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "switchboard_outbox_entries{{status=\"{status}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    (get("pending"), get("sent"), get("failed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_midway_loses_and_doubles_nothing() {
    let replies = ReplyServer::start(&[]).await;
    let setup = Setup::new(Some(&replies.url));
    let mut daemon = setup.start();
    let before = send_all(&mut daemon, true).await;
    assert!(
        !before.is_empty() && before.len() < TOTAL,
        "the kill must land midway ({} answered)",
        before.len()
    );

    let mut daemon = setup.start();
    let after = send_all(&mut daemon, false).await;
    assert_eq!(
        after.len(),
        TOTAL,
        "every message is answered after the restart"
    );
    for (i, (status, inquiry)) in &before {
        let (status_after, inquiry_after) = &after[i];
        assert_eq!(
            *status_after, 200,
            "message {i} got {status} before the crash: must be a duplicate now"
        );
        assert_eq!(inquiry_after, inquiry, "message {i} keeps its inquiry");
    }
    let references: HashSet<&String> = after.values().map(|(_, r)| r).collect();
    assert_eq!(references.len(), TOTAL, "one inquiry per message");

    // The store agrees: exactly TOTAL inquiries.
    let client = http();
    let mut stored = 0;
    let mut path = "/api/v1/inquiries?limit=500".to_owned();
    loop {
        let (s, page) = api_get(&client, &daemon, &path).await;
        assert_eq!(s, 200);
        stored += page["inquiries"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/inquiries?limit=500&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(stored, TOTAL);

    // Every acknowledgement is delivered, once per inquiry.
    eventually(
        Duration::from_secs(60),
        "all acknowledgements sent",
        || async {
            let (pending, sent, failed) = outbox_counts(&client, &daemon).await;
            assert_eq!(failed, 0);
            (pending == 0 && sent == TOTAL as u64).then_some(())
        },
    )
    .await;
    let received = replies.received();
    let mut ids_per_inquiry: HashMap<String, HashSet<String>> = HashMap::new();
    for d in &received {
        assert!(d.signature_ok);
        ids_per_inquiry
            .entry(d.body["inquiry"].as_str().unwrap().to_owned())
            .or_default()
            .insert(d.delivery_id.clone());
    }
    assert_eq!(ids_per_inquiry.len(), TOTAL, "every inquiry acknowledged");
    assert!(
        ids_per_inquiry.values().all(|ids| ids.len() == 1),
        "one acknowledgement (delivery id) per inquiry"
    );
    let repeats = received.len() - TOTAL;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for d in &received {
        *counts.entry(d.delivery_id.as_str()).or_default() += 1;
    }
    let mut repeated: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.parse::<i64>().unwrap_or(0), *n))
        .collect();
    repeated.sort();
    eprintln!("repeated delivery ids: {repeated:?}");
    // Only deliveries in flight at the crash may repeat: at most the
    // entries the dispatcher holds, claimed ahead or sent and not yet
    // recorded (`outbox.concurrency` × CLAIM_AHEAD).
    let bound = 16 * switchboard::outbox::CLAIM_AHEAD;
    assert!(
        repeats <= bound,
        "{repeats} repeated deliveries (bound {bound})"
    );
    eprintln!(
        "crash test: {} answered before kill -9, {} repeated deliveries after restart",
        before.len(),
        repeats
    );
}
