//! Acknowledgements through the outbox: rendering, signing, retries with
//! backoff, no retry on 4xx, and the event log that explains each step.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn detail_when(
    client: &reqwest::Client,
    daemon: &Daemon,
    reference: &str,
    kind: &str,
) -> serde_json::Value {
    eventually(Duration::from_secs(10), kind, || async {
        let (_, detail) = api_get(client, daemon, &format!("/api/v1/inquiries/{reference}")).await;
        ack_event_kinds(&detail)
            .iter()
            .any(|k| k == kind)
            .then_some(detail)
    })
    .await
}

#[tokio::test]
async fn acknowledgement_is_rendered_signed_and_logged() {
    let replies = ReplyServer::start(&[]).await;
    let setup = Setup::new(Some(&replies.url));
    let daemon = setup.start();
    let client = http();
    let (s, answer) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "q1", "from": {"name": "Jonas"}, "text": "Hallo", "language": "de-AT"}),
    )
    .await;
    assert_eq!(s, 202);
    let reference = answer["inquiry"].as_str().unwrap();
    let detail = detail_when(&client, &daemon, reference, "acknowledged").await;
    assert_eq!(
        ack_event_kinds(&detail),
        ["received", "ack_queued", "acknowledged"]
    );
    assert_eq!(detail["outbox"][0]["status"], "sent");

    let got = replies.received();
    assert_eq!(got.len(), 1);
    let ack = &got[0];
    assert!(
        ack.signature_ok,
        "acknowledgement must be signed with the channel secret"
    );
    assert_eq!(ack.body["inquiry"], reference);
    assert_eq!(ack.body["in_reply_to"], "q1");
    // de-AT falls back to the German template.
    assert_eq!(
        ack.body["text"],
        format!("Hallo Jonas, Ihre Referenz ist {reference}.")
    );
    assert!(!ack.delivery_id.is_empty());
}

/// Acknowledgements one after the other share one keep-alive connection to
/// the endpoint, even when it answers with a body larger than one read:
/// the body is read, so the connection goes back to the pool instead of
/// being closed (with https, each new one would cost a TLS handshake).
#[tokio::test]
async fn acknowledgements_reuse_the_connection() {
    const COUNT: usize = 12;
    let replies = ReplyServer::start_padded(&[], 100_000).await;
    let setup = Setup::new(Some(&replies.url));
    let daemon = setup.start();
    let client = http();
    for i in 0..COUNT {
        let (s, _) = post_webhook(
            &client,
            &daemon,
            "shop",
            &json!({"id": format!("reuse-{i}"), "text": "Hi"}),
        )
        .await;
        assert_eq!(s, 202);
        eventually(Duration::from_secs(10), "the acknowledgement", || async {
            (replies.received().len() == i + 1).then_some(())
        })
        .await;
    }
    let peers: std::collections::HashSet<_> = replies.received().iter().map(|d| d.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "{COUNT} acknowledgements in turn came over {} connections",
        peers.len()
    );
}

#[tokio::test]
async fn transient_failures_are_retried_until_success() {
    let replies = ReplyServer::start(&[503, 500]).await;
    let setup = Setup::new(Some(&replies.url));
    let daemon = setup.start();
    let client = http();
    let (_, answer) =
        post_webhook(&client, &daemon, "shop", &json!({"id": "r1", "text": "x"})).await;
    let reference = answer["inquiry"].as_str().unwrap();
    let detail = detail_when(&client, &daemon, reference, "acknowledged").await;
    assert_eq!(
        ack_event_kinds(&detail),
        [
            "received",
            "ack_queued",
            "delivery_retry",
            "delivery_retry",
            "acknowledged"
        ]
    );
    assert_eq!(detail["outbox"][0]["attempts"], 3);
    let got = replies.received();
    assert_eq!(got.len(), 3);
    // Every attempt carries the same delivery id, so the receiver can dedupe.
    assert!(got.iter().all(|d| d.delivery_id == got[0].delivery_id));
    let retry = &detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "delivery_retry")
        .unwrap()["detail"];
    assert!(retry["error"].as_str().unwrap().contains("503"), "{retry}");
}

/// Sends one message to a reply endpoint that answers `status`, waits for
/// the acknowledgement to fail for good, checks it was tried exactly once,
/// and returns the recorded error.
async fn fails_for_good(status: u16, id: &str) -> String {
    let replies = ReplyServer::start(&[status]).await;
    let setup = Setup::new(Some(&replies.url));
    let daemon = setup.start();
    let client = http();
    let (_, answer) = post_webhook(&client, &daemon, "shop", &json!({"id": id, "text": "x"})).await;
    let reference = answer["inquiry"].as_str().unwrap();
    let detail = detail_when(&client, &daemon, reference, "delivery_failed").await;
    assert_eq!(detail["outbox"][0]["status"], "failed");
    // Give a wrongly scheduled retry (or a followed redirect) the time to
    // happen, then check it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replies.received().len(), 1);
    detail["outbox"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let error = fails_for_good(422, "f1").await;
    assert!(error.contains("422"), "{error}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    // 307 keeps the method and body: a client following it would POST the
    // signed acknowledgement again, to wherever Location points (here, the
    // same endpoint, which would then accept it).
    let error = fails_for_good(307, "d1").await;
    assert!(
        error.contains("307") && error.contains("redirects are not followed"),
        "{error}"
    );
}

#[tokio::test]
async fn gives_up_after_max_attempts_when_the_endpoint_is_down() {
    // Nothing listens on this port: connection refused every time.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let setup = Setup::new(Some(&format!("http://127.0.0.1:{port}/replies")));
    let daemon = setup.start();
    let client = http();
    let (_, answer) =
        post_webhook(&client, &daemon, "shop", &json!({"id": "d1", "text": "x"})).await;
    let reference = answer["inquiry"].as_str().unwrap();
    let detail = detail_when(&client, &daemon, reference, "delivery_failed").await;
    let kinds = ack_event_kinds(&detail);
    // max_attempts = 5: four retries scheduled, the fifth gives up.
    assert_eq!(
        kinds.iter().filter(|k| *k == "delivery_retry").count(),
        4,
        "{kinds:?}"
    );
    assert_eq!(detail["outbox"][0]["attempts"], 5);
    let error = detail["outbox"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("gave up after 5 attempts"), "{error}");
    let metrics = metrics_text(&client, &daemon).await;
    assert!(
        metrics.contains("switchboard_outbox_entries{status=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn replies_on_an_open_thread_are_not_acknowledged_again() {
    let replies = ReplyServer::start(&[]).await;
    let setup = Setup::new(Some(&replies.url));
    let daemon = setup.start();
    let client = http();
    let (_, first) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "t1", "text": "a", "thread": "x"}),
    )
    .await;
    let (_, second) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "t2", "text": "b", "thread": "x"}),
    )
    .await;
    assert_eq!(first["inquiry"], second["inquiry"]);
    detail_when(
        &client,
        &daemon,
        first["inquiry"].as_str().unwrap(),
        "acknowledged",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(replies.received().len(), 1);
}
