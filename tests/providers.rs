//! Phone, SMS and chat providers against the real binary: signed intake of
//! the providers' documented sample payloads, idempotency under retries
//! (also concurrent), acknowledgements through a local stand-in of each
//! provider's API that checks requests like the provider and can throttle
//! or fail, delivery statuses, edits, and one customer across channels.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::providers::*;
use common::*;
use serde_json::json;
use switchboard::channels::signature::hmac_sha256_hex;
use switchboard::channels::{slack, twilio};

const PUBLIC: &str = "https://support.example.com";

struct Env {
    fake: FakeProviders,
    daemon: Daemon,
    client: reqwest::Client,
    setup: Setup,
}

async fn start() -> Env {
    let fake = FakeProviders::start().await;
    let setup = Setup::new(None);
    std::fs::write(
        setup
            .dir
            .path()
            .join("templates")
            .join("voice_greeting.en.txt"),
        "Thank you for calling. Your reference is {{ reference }}. Please speak after the tone.",
    )
    .unwrap();
    setup.write_config(&setup.config_text(None, &fake.config()));
    let daemon = setup.start();
    Env {
        fake,
        daemon,
        client: http(),
        setup,
    }
}

impl Env {
    /// Stops the daemon with SIGTERM and starts it again on the same store.
    /// Blocks its thread: use it from a multi-thread test runtime, so the
    /// fake providers keep answering the deliveries the daemon drains.
    fn restart(&mut self) {
        self.daemon.signal("TERM");
        assert_eq!(self.daemon.wait_exit(Duration::from_secs(15)), Some(0));
        self.daemon = self.setup.start();
    }

    async fn detail(&self, reference: &str) -> serde_json::Value {
        let (status, detail) = api_get(
            &self.client,
            &self.daemon,
            &format!("/api/v1/inquiries/{reference}"),
        )
        .await;
        assert_eq!(status, 200, "{detail}");
        detail
    }

    async fn detail_when(&self, reference: &str, kind: &str) -> serde_json::Value {
        eventually(Duration::from_secs(15), kind, || async {
            let d = self.detail(reference).await;
            event_kinds(&d).iter().any(|k| k == kind).then_some(d)
        })
        .await
    }

    async fn inquiries(&self, channel: &str) -> Vec<serde_json::Value> {
        let (_, list) = api_get(
            &self.client,
            &self.daemon,
            &format!("/api/v1/inquiries?channel={channel}"),
        )
        .await;
        list["inquiries"].as_array().cloned().unwrap_or_default()
    }

    /// POSTs a form to a Twilio action, signed for the public URL.
    async fn twilio(&self, action: &str, form: &[(&str, &str)]) -> (u16, String) {
        self.twilio_signed(action, form, None).await
    }

    async fn twilio_signed(
        &self,
        action: &str,
        form: &[(&str, &str)],
        token: Option<&str>,
    ) -> (u16, String) {
        let path = format!("/webhooks/twilio/main/{action}");
        let params: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let signature = twilio::twilio_signature(
            token.unwrap_or(TWILIO_TOKEN),
            &format!("{PUBLIC}{path}"),
            &params,
        );
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self
            .client
            .post(self.daemon.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn slack(&self, body: &serde_json::Value, at: i64, retry: Option<u32>) -> (u16, String) {
        let raw = serde_json::to_vec(body).unwrap();
        let mut req = self
            .client
            .post(self.daemon.url("/webhooks/slack/team"))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", at.to_string())
            .header("x-slack-signature", slack::sign(SLACK_SECRET, at, &raw))
            .body(raw);
        if let Some(n) = retry {
            req = req
                .header("x-slack-retry-num", n.to_string())
                .header("x-slack-retry-reason", "http_timeout");
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn whatsapp(&self, body: &serde_json::Value, secret: &str) -> u16 {
        let raw = serde_json::to_vec(body).unwrap();
        let sig = format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), &raw));
        self.client
            .post(self.daemon.url("/webhooks/whatsapp/biz"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(raw)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn telegram(&self, body: &serde_json::Value, secret: Option<&str>) -> u16 {
        let mut req = self
            .client
            .post(self.daemon.url("/webhooks/telegram/bot"))
            .header("content-type", "application/json")
            .json(body);
        if let Some(s) = secret {
            req = req.header("x-telegram-bot-api-secret-token", s);
        }
        req.send().await.unwrap().status().as_u16()
    }

    async fn metrics(&self) -> String {
        metrics_text(&self.client, &self.daemon).await
    }

    /// Gives a wrongly repeated acknowledgement time to show up.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The parameters Twilio posts for an inbound SMS (from its webhook docs).
fn sms(
    sid: &'static str,
    from: &'static str,
    body: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", sid),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", "+14155550100"),
        ("MessagingServiceSid", "MG0123456789abcdef0123456789abcdef"),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", TWILIO_SID),
        ("From", from),
        ("ApiVersion", "2010-04-01"),
    ]
}

#[tokio::test]
async fn twilio_sms_retried_concurrently_is_one_inquiry_and_one_sms() {
    let env = start().await;
    // The Messages API fails once, then throttles, then takes it.
    env.fake.script("twilio", &[Reply::Fail, Reply::Throttle]);
    let form = sms(
        "SM1f0e8ae6ade43cb3c0ce4525424e404f",
        "+14155550123",
        "My card was blocked",
    );
    let answers = futures::future::join_all((0..8).map(|_| env.twilio("sms", &form))).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>"
        );
    }
    let list = env.inquiries("twilio/main").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let reference = list[0]["reference"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["medium"], "sms");
    assert_eq!(list[0]["customer_key"], "tel:+14155550123");

    let detail = env.detail_when(&reference, "acknowledged").await;
    assert_eq!(detail["messages"].as_array().unwrap().len(), 1);
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
    env.settle().await;
    let sent = env.fake.seen("twilio");
    assert_eq!(sent.len(), 3, "one SMS, tried three times: {sent:?}");
    for s in &sent {
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.body["To"], "+14155550123");
        assert_eq!(
            s.body["From"], "+14155550100",
            "answered from the number texted"
        );
        assert!(s.body["Body"].as_str().unwrap().contains(&reference));
        assert_eq!(
            s.body["StatusCallback"],
            format!("{PUBLIC}/webhooks/twilio/main/status")
        );
    }
    // Twilio reports the SMS delivered: the outbox entry shows it.
    let provider_id = detail["outbox"][0]["provider_message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(provider_id.starts_with("SMout"), "{provider_id}");
    let (status, _) = env
        .twilio(
            "status",
            &[
                ("MessageSid", &provider_id),
                ("MessageStatus", "delivered"),
                ("AccountSid", TWILIO_SID),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let detail = env.detail(&reference).await;
    assert_eq!(detail["outbox"][0]["provider_status"], "delivered");
    assert_eq!(env.inquiries("twilio/main").await.len(), 1);
}

#[tokio::test]
async fn twilio_refusals_are_401_without_detail_and_counted() {
    let env = start().await;
    let form = sms("SM2", "+14155550123", "hi");
    let (status, body) = env.twilio_signed("sms", &form, Some("wrong-token")).await;
    assert_eq!(status, 401);
    assert!(
        !body.contains(TWILIO_TOKEN) && !body.contains("expected"),
        "{body}"
    );
    // Signed for another URL (a proxy rewriting paths): refused too.
    let r = env
        .client
        .post(env.daemon.url("/webhooks/twilio/main/sms"))
        .header(
            "x-twilio-signature",
            twilio::twilio_signature(TWILIO_TOKEN, "https://elsewhere.example/sms", &[]),
        )
        .body("MessageSid=SM3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, body) = env.twilio("sms", &[("From", "+1415"), ("Body", "x")]).await;
    assert_eq!(status, 400);
    assert!(body.contains("MessageSid"), "{body}");
    let (status, _) = env.twilio("nonsense", &form).await;
    assert_eq!(status, 404);
    assert!(env.inquiries("twilio/main").await.is_empty());
    let metrics = env.metrics().await;
    for kind in ["bad_signature", "malformed", "not_found"] {
        assert!(
            metrics.contains(&format!(
                "switchboard_intake_errors_total{{channel=\"twilio/main\",kind=\"{kind}\"}}"
            )),
            "{kind}: {metrics}"
        );
    }
    assert!(!env.daemon.log_text().contains(TWILIO_TOKEN));
}

#[tokio::test]
async fn twilio_call_greets_records_and_gathers_its_callbacks() {
    let env = start().await;
    let call = [
        ("AccountSid", TWILIO_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", "CA5f1b4b0e7f6a3b6b3e3c3a1e2e0c9d8a"),
        ("CallStatus", "ringing"),
        ("Called", "+14155550100"),
        ("Caller", "+49 30 1234567"),
        ("Direction", "inbound"),
        ("From", "+49 30 1234567"),
        ("To", "+14155550100"),
    ];
    // Twilio retries the voice webhook on a slow answer: same TwiML, one inquiry.
    let (s1, twiml) = env.twilio("voice", &call).await;
    let (s2, again) = env.twilio("voice", &call).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(twiml, again);
    let list = env.inquiries("twilio/main").await;
    assert_eq!(list.len(), 1);
    let reference = list[0]["reference"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["medium"], "voice");
    assert_eq!(list[0]["customer_key"], "tel:+49301234567");
    let code = reference.trim_start_matches("INQ-");
    let spelled: Vec<String> = code.chars().map(|c| c.to_string()).collect();
    assert!(
        twiml.contains(&format!(
            "<Say language=\"en-GB\">Thank you for calling. Your reference is I N Q, {}.",
            spelled.join(" ")
        )),
        "{twiml}"
    );
    assert!(
        twiml.contains(&format!(
            "recordingStatusCallback=\"{PUBLIC}/webhooks/twilio/main/voice/recording\""
        )),
        "{twiml}"
    );
    assert!(twiml.contains("transcribe=\"true\""), "{twiml}");

    // The caller hung up without speaking: Twilio's `<Record action>` and the
    // `absent` recording status; later the transcription callback.
    let (s, hangup) = env
        .twilio(
            "voice/recording",
            &[
                ("CallSid", call[2].1),
                ("RecordingDuration", "0"),
                ("AccountSid", TWILIO_SID),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert!(hangup.contains("<Hangup/>"), "{hangup}");
    let absent = [
        ("AccountSid", TWILIO_SID),
        ("CallSid", call[2].1),
        ("RecordingSid", "RE557ce644e5ab84fa21cc21112e22c485"),
        ("RecordingStatus", "absent"),
    ];
    for _ in 0..3 {
        assert_eq!(env.twilio("voice/recording", &absent).await.0, 200);
    }
    let transcription = [
        ("AccountSid", TWILIO_SID),
        ("CallSid", call[2].1),
        ("RecordingSid", "RE557ce644e5ab84fa21cc21112e22c485"),
        ("TranscriptionSid", "TR8c61027b709ffb038236612dc5af8723"),
        ("TranscriptionStatus", "failed"),
    ];
    assert_eq!(
        env.twilio("voice/transcription", &transcription).await.0,
        200
    );

    let detail = env.detail_when(&reference, "acknowledged").await;
    let messages = detail["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[1]["metadata"]["callback_requested"], true);
    assert_eq!(
        env.inquiries("twilio/main").await.len(),
        1,
        "callbacks join the call's inquiry"
    );
    // The caller gets the acknowledgement by SMS, once.
    env.settle().await;
    let sent = env.fake.seen("twilio");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].problems.is_empty(), "{:?}", sent[0].problems);
    assert_eq!(sent[0].body["To"], "+49301234567");
    assert_eq!(sent[0].body["From"], "+14155550100");

    // A text from the same number soon after is the same customer, and
    // gathers on the open inquiry of this channel.
    let (s, _) = env
        .twilio("sms", &sms("SM77", "+4930 1234567", "Did you get my call?"))
        .await;
    assert_eq!(s, 200);
    let detail = env.detail(&reference).await;
    assert_eq!(detail["messages"].as_array().unwrap().len(), 4);
}

fn slack_message(
    event_id: &str,
    kind: &str,
    ts: &str,
    thread_ts: Option<&str>,
) -> serde_json::Value {
    let mut event = json!({
        "type": kind,
        "channel": "C2147483705",
        "user": "U2147483697",
        "text": "<@U0LAN0Z89> is the card service down?",
        "ts": ts,
        "channel_type": "channel",
        "event_ts": ts
    });
    if let Some(t) = thread_ts {
        event["thread_ts"] = t.into();
    }
    json!({
        "token": "XXYYZZ",
        "team_id": "T123ABC456",
        "api_app_id": "A123ABC456",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1700000000,
        "authed_users": ["U0LAN0Z89"]
    })
}

#[tokio::test]
async fn slack_events_dedupe_thread_and_answer_in_the_thread() {
    let env = start().await;
    env.fake.script("slack", &[Reply::Throttle]);
    let challenge = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"});
    let (s, body) = env.slack(&challenge, now(), None).await;
    assert_eq!(s, 200);
    assert!(body.contains("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"));

    // The event, its retries (concurrently), and the app_mention twin Slack
    // sends for the same message under another event_id.
    let ts = "1700000001.000100";
    let first = slack_message("Ev0001", "message", ts, None);
    let mention = slack_message("Ev0002", "app_mention", ts, None);
    let mut sends = Vec::new();
    for retry in 0..6u32 {
        sends.push(env.slack(&first, now(), (retry > 0).then_some(retry)));
    }
    sends.push(env.slack(&mention, now(), None));
    for (status, body) in futures::future::join_all(sends).await {
        assert_eq!(status, 200, "{body}");
    }
    let list = env.inquiries("slack/team").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let reference = list[0]["reference"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["customer_key"], "slack:T123ABC456:U2147483697");

    // A reply in the thread joins; the bot's own post does not count.
    let reply = slack_message("Ev0003", "message", "1700000002.000200", Some(ts));
    assert_eq!(env.slack(&reply, now(), None).await.0, 200);
    let mut bot = slack_message("Ev0004", "message", "1700000003.000300", Some(ts));
    bot["event"]["bot_id"] = "B0123".into();
    bot["event"]["subtype"] = "bot_message".into();
    assert_eq!(env.slack(&bot, now(), None).await.0, 200);

    let detail = env.detail_when(&reference, "acknowledged").await;
    assert_eq!(detail["messages"].as_array().unwrap().len(), 2);
    // The reply may land before or after the throttled first attempt.
    let kinds = ack_event_kinds(&detail);
    assert_eq!(kinds[..2], ["received", "ack_queued"], "{kinds:?}");
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    assert_eq!(
        (
            count("message_added"),
            count("delivery_retry"),
            count("acknowledged")
        ),
        (1, 1, 1),
        "{kinds:?}"
    );
    let retry = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "delivery_retry")
        .expect("the 429 was retried");
    assert!(
        retry["detail"]["error"].as_str().unwrap().contains("429"),
        "{retry}"
    );
    env.settle().await;
    let posts = env.fake.seen("slack");
    assert_eq!(posts.len(), 2, "throttled once, then posted: {posts:?}");
    for p in &posts {
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.body["channel"], "C2147483705");
        assert_eq!(p.body["thread_ts"], ts);
    }

    // Replays outside five minutes, and forgeries, are refused.
    let late = slack_message("Ev0005", "message", "1700000009.000900", None);
    assert_eq!(env.slack(&late, now() - 301, None).await.0, 401);
    let r = env
        .client
        .post(env.daemon.url("/webhooks/slack/team"))
        .header("x-slack-request-timestamp", now().to_string())
        .header(
            "x-slack-signature",
            slack::sign("not-the-secret", now(), b"{}"),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(env.inquiries("slack/team").await.len(), 1);
    let metrics = env.metrics().await;
    for kind in ["stale_timestamp", "bad_signature"] {
        assert!(
            metrics.contains(&format!(
                "switchboard_intake_errors_total{{channel=\"slack/team\",kind=\"{kind}\"}} 1"
            )),
            "{kind}: {metrics}"
        );
    }
}

#[tokio::test]
async fn slack_answers_not_ok_are_final() {
    let env = start().await;
    env.fake.script("slack", &[Reply::NotOk]);
    let (s, _) = env
        .slack(
            &slack_message("Ev1", "message", "1700000100.000001", None),
            now(),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let reference = env.inquiries("slack/team").await[0]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let detail = env.detail_when(&reference, "delivery_failed").await;
    let error = detail["outbox"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("channel_not_found"), "{error}");
    env.settle().await;
    assert_eq!(
        env.fake.seen("slack").len(),
        1,
        "HTTP 200 with ok=false is not retried"
    );
}

/// Meta's documented text-message notification.
fn wa_message(wamid: &str, from: &str, text: &str) -> serde_json::Value {
    json!({
      "object": "whatsapp_business_account",
      "entry": [{
        "id": "102290129340398",
        "changes": [{
          "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": WA_PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid, "timestamp": "1749416383", "type": "text", "text": {"body": text}}]
          },
          "field": "messages"
        }]
      }]
    })
}

fn wa_status(wamid: &str, status: &str) -> serde_json::Value {
    json!({
      "object": "whatsapp_business_account",
      "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": WA_PHONE_NUMBER_ID},
        "statuses": [{"id": wamid, "status": status, "timestamp": "1750263773", "recipient_id": "16505551234",
                      "pricing": {"billable": true, "pricing_model": "PMP", "category": "service"}}]
      }}]}]
    })
}

#[tokio::test]
async fn whatsapp_handshake_dedupe_context_reply_and_statuses() {
    let env = start().await;
    let get = |query: String| {
        let client = env.client.clone();
        let url = env.daemon.url(&format!("/webhooks/whatsapp/biz?{query}"));
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        get(format!(
            "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={WA_VERIFY_TOKEN}"
        ))
        .await,
        (200, "1158201444".to_owned())
    );
    assert_eq!(
        get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=guess".into())
            .await
            .0,
        403
    );

    env.fake.script("whatsapp", &[Reply::Fail]);
    let wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=";
    let body = wa_message(wamid, "16505551234", "Does it come in another color?");
    let statuses =
        futures::future::join_all((0..8).map(|_| env.whatsapp(&body, WA_APP_SECRET))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(env.whatsapp(&body, "forged").await, 401);
    let list = env.inquiries("whatsapp/biz").await;
    assert_eq!(list.len(), 1);
    let reference = list[0]["reference"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["customer_key"], "tel:+16505551234");
    assert_eq!(list[0]["customer"]["name"], "Sheena Nelson");

    let detail = env.detail_when(&reference, "acknowledged").await;
    env.settle().await;
    let sent = env.fake.seen("whatsapp");
    assert_eq!(sent.len(), 2, "one failure, one success: {sent:?}");
    for s in &sent {
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.body["to"], "16505551234");
        assert_eq!(s.body["context"]["message_id"], wamid);
        assert!(
            s.body["text"]["body"]
                .as_str()
                .unwrap()
                .contains(&reference)
        );
    }
    let ours = detail["outbox"][0]["provider_message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ours.starts_with("wamid.OUT"), "{ours}");
    // Status notifications update our message and never become inquiries.
    for status in ["sent", "delivered", "read"] {
        assert_eq!(
            env.whatsapp(&wa_status(&ours, status), WA_APP_SECRET).await,
            200
        );
    }
    assert_eq!(
        env.whatsapp(&wa_status("wamid.unknown", "read"), WA_APP_SECRET)
            .await,
        200
    );
    let detail = env.detail(&reference).await;
    assert_eq!(detail["outbox"][0]["provider_status"], "read");
    assert_eq!(env.inquiries("whatsapp/biz").await.len(), 1);
}

fn tg_update(update_id: i64, kind: &str, message_id: i64, text: &str) -> serde_json::Value {
    json!({
        "update_id": update_id,
        kind: {
            "message_id": message_id,
            "from": {"id": 1111111, "is_bot": false, "first_name": "Test", "last_name": "Lastname",
                     "username": "Testusername", "language_code": "de"},
            "chat": {"id": 1111111, "first_name": "Test", "last_name": "Lastname",
                     "username": "Testusername", "type": "private"},
            "date": 1441645532,
            "text": text
        }
    })
}

#[tokio::test]
async fn telegram_dedupes_updates_applies_edits_and_replies_to_the_message() {
    let env = start().await;
    env.fake.script("telegram", &[Reply::Throttle]);
    let update = tg_update(10000, "message", 1365, "Meine Karte ist gesperrt");
    let statuses =
        futures::future::join_all((0..8).map(|_| env.telegram(&update, Some(TG_SECRET)))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(env.telegram(&update, Some("guess")).await, 401);
    assert_eq!(env.telegram(&update, None).await, 401);
    let list = env.inquiries("telegram/bot").await;
    assert_eq!(list.len(), 1);
    let reference = list[0]["reference"].as_str().unwrap().to_owned();

    let edit = tg_update(
        10001,
        "edited_message",
        1365,
        "Meine Karte ist seit heute gesperrt",
    );
    assert_eq!(env.telegram(&edit, Some(TG_SECRET)).await, 200);
    let detail = env.detail_when(&reference, "acknowledged").await;
    let messages = detail["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["text"], "Meine Karte ist seit heute gesperrt");
    assert_eq!(env.inquiries("telegram/bot").await.len(), 1);

    env.settle().await;
    let sent = env.fake.seen("telegram");
    assert_eq!(
        sent.len(),
        2,
        "throttled once (retry_after), then sent: {sent:?}"
    );
    for s in &sent {
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.body["chat_id"], 1111111);
        assert_eq!(s.body["reply_parameters"]["message_id"], 1365);
        // language_code `de` picks the German template.
        assert!(
            s.body["text"]
                .as_str()
                .unwrap()
                .starts_with("Hallo Test Lastname"),
            "{}",
            s.body
        );
    }
    let kinds = ack_event_kinds(&detail);
    assert!(kinds.contains(&"message_edited".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn one_phone_number_is_one_customer_across_sms_and_whatsapp() {
    let env = start().await;
    let (s, _) = env
        .twilio("sms", &sms("SM900", "+1 650 555 1234", "hello by SMS"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        env.whatsapp(
            &wa_message("wamid.X900", "16505551234", "hello on WhatsApp"),
            WA_APP_SECRET
        )
        .await,
        200
    );
    let (s, _) = env
        .twilio(
            "sms",
            &sms(
                "SM901",
                "whatsapp:+16505551234",
                "hello via Twilio WhatsApp",
            ),
        )
        .await;
    assert_eq!(s, 200);
    let mut keys = HashSet::new();
    for channel in ["twilio/main", "whatsapp/biz"] {
        for i in env.inquiries(channel).await {
            keys.insert(i["customer_key"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(keys, HashSet::from(["tel:+16505551234".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_retry_after_a_restart_is_still_a_duplicate() {
    let mut env = start().await;
    let wamid = "wamid.RESTART1";
    let body = wa_message(wamid, "16505550000", "Hello before the restart");
    assert_eq!(env.whatsapp(&body, WA_APP_SECRET).await, 200);
    let reference = env.inquiries("whatsapp/biz").await[0]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    env.detail_when(&reference, "acknowledged").await;
    env.restart();
    // Meta did not see our 200 and delivers the notification again.
    assert_eq!(env.whatsapp(&body, WA_APP_SECRET).await, 200);
    let update = tg_update(20000, "message", 7, "Hallo");
    assert_eq!(env.telegram(&update, Some(TG_SECRET)).await, 200);
    env.restart();
    assert_eq!(env.telegram(&update, Some(TG_SECRET)).await, 200);
    env.settle().await;
    assert_eq!(env.inquiries("whatsapp/biz").await.len(), 1);
    assert_eq!(env.inquiries("telegram/bot").await.len(), 1);
    let detail = env.detail(&reference).await;
    assert_eq!(detail["messages"].as_array().unwrap().len(), 1);
    assert_eq!(env.fake.seen("whatsapp").len(), 1, "one acknowledgement");
    let tg = env.inquiries("telegram/bot").await[0]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    env.detail_when(&tg, "acknowledged").await;
    env.settle().await;
    assert_eq!(env.fake.seen("telegram").len(), 1, "one acknowledgement");
}
