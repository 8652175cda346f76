//! The generic webhook contract and the inquiry API, against the real binary.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn accepted_message_becomes_an_inquiry_visible_in_the_api() {
    let setup = Setup::new(None);
    let daemon = setup.start();
    let client = http();
    let body = json!({
        "id": "msg-1",
        "from": {"name": "Ada Lovelace", "email": "ada@example.org"},
        "subject": "Card blocked",
        "text": "My card was blocked this morning.",
        "language": "en",
        "metadata": {"crm_id": "C-17"}
    });
    let (status, answer) = post_webhook(&client, &daemon, "shop", &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["duplicate"], false);
    let reference = answer["inquiry"].as_str().unwrap().to_owned();
    assert!(
        reference.starts_with("INQ-") && reference.len() == 10,
        "{reference}"
    );

    let (status, detail) =
        api_get(&client, &daemon, &format!("/api/v1/inquiries/{reference}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["reference"], reference.as_str());
    assert_eq!(detail["status"], "open");
    assert_eq!(detail["urgency"], "normal");
    assert_eq!(detail["channel"], "generic/shop");
    assert_eq!(detail["customer"]["email"], "ada@example.org");
    assert_eq!(detail["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        detail["messages"][0]["text"],
        "My card was blocked this morning."
    );
    assert_eq!(detail["messages"][0]["metadata"]["crm_id"], "C-17");
    // No reply_url: the acknowledgement is skipped, and the log says why.
    assert_eq!(ack_event_kinds(&detail), ["received", "ack_skipped"]);

    // References are case-insensitive in the API.
    let (status, _) = api_get(
        &client,
        &daemon,
        &format!("/api/v1/inquiries/{}", reference.to_lowercase()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, err) = api_get(&client, &daemon, "/api/v1/inquiries/INQ-000000").await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("INQ-000000"));
}

#[tokio::test]
async fn same_id_ten_times_concurrently_is_one_inquiry() {
    let setup = Setup::new(None);
    let daemon = setup.start();
    let client = http();
    let body = json!({"id": "dup-1", "text": "hello"});
    let answers =
        futures::future::join_all((0..10).map(|_| post_webhook(&client, &daemon, "shop", &body)))
            .await;
    let created = answers.iter().filter(|(s, _)| *s == 202).count();
    let duplicates = answers
        .iter()
        .filter(|(s, a)| *s == 200 && a["duplicate"] == true)
        .count();
    assert_eq!((created, duplicates), (1, 9), "{answers:?}");
    let refs: std::collections::HashSet<_> =
        answers.iter().map(|(_, a)| a["inquiry"].clone()).collect();
    assert_eq!(refs.len(), 1, "all answers name the same inquiry");

    let (_, list) = api_get(&client, &daemon, "/api/v1/inquiries").await;
    assert_eq!(list["inquiries"].as_array().unwrap().len(), 1);
    let reference = answers[0].1["inquiry"].as_str().unwrap().to_owned();
    let (_, detail) = api_get(&client, &daemon, &format!("/api/v1/inquiries/{reference}")).await;
    assert_eq!(detail["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn thread_attaches_to_the_open_inquiry() {
    let setup = Setup::new(None);
    let daemon = setup.start();
    let client = http();
    let (s1, first) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "a1", "text": "first", "thread": "T-1"}),
    )
    .await;
    let (s2, second) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "a2", "text": "second", "thread": "T-1"}),
    )
    .await;
    let (s3, other) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "a3", "text": "other", "thread": "T-2"}),
    )
    .await;
    let (s4, plain) = post_webhook(
        &client,
        &daemon,
        "shop",
        &json!({"id": "a4", "text": "no thread"}),
    )
    .await;
    assert_eq!((s1, s2, s3, s4), (202, 202, 202, 202));
    assert_eq!(first["inquiry"], second["inquiry"]);
    assert_ne!(first["inquiry"], other["inquiry"]);
    assert_ne!(first["inquiry"], plain["inquiry"]);

    let reference = first["inquiry"].as_str().unwrap();
    let (_, detail) = api_get(&client, &daemon, &format!("/api/v1/inquiries/{reference}")).await;
    let texts: Vec<_> = detail["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("first"), json!("second")]);
    assert_eq!(
        ack_event_kinds(&detail),
        ["received", "ack_skipped", "message_added"]
    );
    let (_, list) = api_get(&client, &daemon, "/api/v1/inquiries").await;
    assert_eq!(list["inquiries"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn every_refusal_has_its_status_and_a_reason() {
    let setup = Setup::new(None);
    let daemon = setup.start();
    let client = http();
    let url = daemon.url("/webhooks/generic/shop");
    let good = br#"{"id":"e1","text":"hi"}"#.to_vec();

    let send = |url: String, body: Vec<u8>, signature: Option<String>| {
        let client = client.clone();
        async move {
            let mut req = client.post(url).body(body);
            if let Some(s) = signature {
                req = req.header("x-switchboard-signature", s);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };

    // 401: missing, malformed and wrong signatures.
    let (s, e) = send(url.clone(), good.clone(), None).await;
    assert_eq!(s, 401);
    assert!(e["error"].as_str().unwrap().contains("missing"), "{e}");
    let (s, _) = send(url.clone(), good.clone(), Some("md5=abc".into())).await;
    assert_eq!(s, 401);
    let forged = format!(
        "sha256={}",
        switchboard::channels::signature::hmac_sha256_hex(b"wrong", &good)
    );
    let (s, e) = send(url.clone(), good.clone(), Some(forged)).await;
    assert_eq!(s, 401);
    assert!(
        e["error"].as_str().unwrap().contains("does not match"),
        "{e}"
    );

    // 404: unknown channel.
    let (s, e) = send(
        daemon.url("/webhooks/generic/nosuch"),
        good.clone(),
        Some(sign(&good)),
    )
    .await;
    assert_eq!(s, 404);
    assert!(e["error"].as_str().unwrap().contains("nosuch"), "{e}");

    // 400: malformed JSON, missing fields, wrong types; each says what.
    for (body, reason) in [
        (&b"{\"id\": \"x\", \"text\": "[..], "invalid JSON"),
        (br#"{"text":"no id"}"#, "missing field `id`"),
        (br#"{"id":"x"}"#, "missing field `text`"),
        (br#"{"id":"","text":"x"}"#, "`id` must not be empty"),
        (br#"{"id":"x","text":"x","metadata":"nope"}"#, "metadata"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
    ] {
        let (s, e) = send(url.clone(), body.to_vec(), Some(sign(body))).await;
        assert_eq!(s, 400, "{}", String::from_utf8_lossy(body));
        assert!(
            e["error"].as_str().unwrap().contains(reason),
            "{e} lacks {reason}"
        );
    }

    // 413: over limits.max_body_bytes (4096 here), declared or streamed.
    let huge = serde_json::to_vec(&json!({"id": "big", "text": "x".repeat(10_000)})).unwrap();
    let (s, e) = send(url.clone(), huge.clone(), Some(sign(&huge))).await;
    assert_eq!(s, 413);
    assert!(e["error"].as_str().unwrap().contains("4096"), "{e}");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        huge.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let streamed = client
        .post(url.clone())
        .header("x-switchboard-signature", sign(&huge))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status().as_u16(), 413);

    // Nothing of the above was stored; the daemon still serves.
    let (_, list) = api_get(&client, &daemon, "/api/v1/inquiries").await;
    assert_eq!(list["inquiries"].as_array().unwrap().len(), 0);
    let (s, _) = send(url.clone(), good.clone(), Some(sign(&good))).await;
    assert_eq!(s, 202);

    // The errors are counted by kind.
    let metrics = metrics_text(&client, &daemon).await;
    for kind in ["bad_signature", "unknown_channel", "malformed", "too_large"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("switchboard_intake_errors_total") && l.contains(kind)),
            "metrics lack {kind}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn api_requires_the_ops_token_and_filters_and_pages() {
    let setup = Setup::new(None);
    let daemon = setup.start();
    let client = http();
    for i in 0..5 {
        let (s, _) = post_webhook(
            &client,
            &daemon,
            "shop",
            &json!({"id": format!("p{i}"), "text": "x"}),
        )
        .await;
        assert_eq!(s, 202);
    }
    let r = client
        .get(daemon.url("/api/v1/inquiries"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(daemon.url("/api/v1/inquiries"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Newest first, two per page, following the cursor to the end.
    let mut seen = Vec::new();
    let mut path = "/api/v1/inquiries?limit=2".to_owned();
    loop {
        let (s, page) = api_get(&client, &daemon, &path).await;
        assert_eq!(s, 200, "{page}");
        for i in page["inquiries"].as_array().unwrap() {
            seen.push(
                i["created_at"].as_str().unwrap().to_owned() + i["reference"].as_str().unwrap(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/inquiries?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");

    let (_, open) = api_get(
        &client,
        &daemon,
        "/api/v1/inquiries?status=open&channel=generic/shop",
    )
    .await;
    assert_eq!(open["inquiries"].as_array().unwrap().len(), 5);
    let (_, resolved) = api_get(&client, &daemon, "/api/v1/inquiries?status=resolved").await;
    assert_eq!(resolved["inquiries"].as_array().unwrap().len(), 0);
    let (s, e) = api_get(&client, &daemon, "/api/v1/inquiries?status=bogus").await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("status"));
    let (s, _) = api_get(&client, &daemon, "/api/v1/inquiries?limit=0").await;
    assert_eq!(s, 400);
    let (s, _) = api_get(&client, &daemon, "/api/v1/inquiries?colour=red").await;
    assert_eq!(s, 400);

    let (s, channels) = api_get(&client, &daemon, "/api/v1/channels").await;
    assert_eq!(s, 200);
    assert_eq!(channels["channels"][0]["channel"], "generic/shop");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let setup = Setup::new(None);
    let daemon = setup.start();
    let client = http();
    let (s, _) = post_webhook(&client, &daemon, "shop", &json!({"id": "m1", "text": "x"})).await;
    assert_eq!(s, 202);
    let (s, _) = post_webhook(&client, &daemon, "shop", &json!({"id": "m1", "text": "x"})).await;
    assert_eq!(s, 200);
    for path in ["/healthz", "/readyz"] {
        let r = client.get(daemon.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let metrics = metrics_text(&client, &daemon).await;
    for needle in [
        "switchboard_inquiries_received_total{channel=\"generic/shop\"} 1",
        "switchboard_intake_duplicates_total{channel=\"generic/shop\"} 1",
        "switchboard_outbox_entries{status=\"pending\"}",
        "switchboard_http_request_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
}
