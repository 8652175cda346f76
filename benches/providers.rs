//! Mixed-provider intake benchmark: signed Twilio SMS, Slack events,
//! WhatsApp notifications and Telegram updates, one after the other on each
//! connection, against the real daemon — beside the generic webhook in the
//! same run and the same daemon, in interleaved rounds.
//!
//! Run with `cargo bench --bench providers`. Everything is on loopback:
//!
//! - the release `switchboard` binary with a fresh SQLite store, one
//!   generic channel and one channel of each provider; every outbound URL
//!   (`reply_url`, `api_base`) points at a sink in this process (its own
//!   thread and runtime) that answers the way each provider's API does, so
//!   acknowledgements are really sent while intake runs;
//! - a closed-loop load generator: `PROVIDERS_CONNECTIONS` keep-alive
//!   HTTP/1.1 connections, each sending its next request when the previous
//!   answer arrived. Each request is unique (new customer, new provider
//!   message id), so every one opens an inquiry and queues an
//!   acknowledgement, on both targets. Signatures are computed before the
//!   latency clock starts.
//!
//! Targets per round: **generic** (every request a generic webhook) and
//! **mixed** (requests cycle Twilio → Slack → WhatsApp → Telegram). Only 2xx
//! answers count; their latency is recorded. After the run, the number of
//! 2xx answers must equal the number of inquiries in the store.
//!
//! Knobs: `PROVIDERS_ROUNDS` (3), `PROVIDERS_SECS` (5),
//! `PROVIDERS_CONNECTIONS` (64), `PROVIDERS_WARMUP_SECS` (1),
//! `PROVIDERS_SETTLE_SECS` (60), `PROVIDERS_MIX` (`twilio,slack,whatsapp,telegram`:
//! which providers the mixed target cycles through).

mod support;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use switchboard::channels::signature::hmac_sha256_hex;
use switchboard::channels::{slack, twilio};

use support::{
    OPS_TOKEN, Requests, cpu_seconds, http_get, percentile_ms, run_load_with, settle, spawn_daemon,
    wait_ready,
};

const GENERIC_SECRET: &str = support::SECRET;
const TWILIO_SID: &str = "AC00000000000000000000000000000000";
const TWILIO_TOKEN: &str = "bench-twilio-token";
const TWILIO_PUBLIC: &str = "https://bench.example.com";
const SLACK_SECRET: &str = "bench-slack-secret";
const WA_SECRET: &str = "bench-wa-secret";
const WA_PHONE_ID: &str = "106540352242922";
const TG_SECRET: &str = "bench-tg-secret";

fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_env();
    let dir = tempfile::tempdir()?;
    let (sink_port, sink_count) = start_sink()?;
    let port = StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = write_config(dir.path(), port, sink_port)?;
    let log = dir.path().join("daemon.log");
    let mut daemon = spawn_daemon(&config, &log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let daemon_pid = daemon.id().to_string();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(wait_ready(addr, &mut daemon, Some(&log)))?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "providers bench: {} round(s) × {:?} per target, {} keep-alive connections, {cores} core(s)",
        knobs.rounds, knobs.duration, knobs.connections
    );
    println!("  generic = POST /webhooks/generic/bench (HMAC-SHA256)");
    println!(
        "  mixed   = cycling through {:?} (0 Twilio SMS, HMAC-SHA1 form; 1 Slack event, v0; 2 WhatsApp, X-Hub-Signature-256; 3 Telegram, secret token)",
        knobs.mix
    );
    let mut accepted = 0u64;
    let run = std::process::id();
    if !knobs.warmup.is_zero() {
        for target in [Target::Generic, Target::Mixed] {
            let (stats, _) =
                runtime.block_on(load(addr, &knobs, target, knobs.warmup, &format!("{run}w")));
            accepted += stats.latencies_us.len() as u64;
        }
    }
    let mut results = Vec::new();
    for round in 1..=knobs.rounds {
        let order = if round % 2 == 1 {
            [Target::Generic, Target::Mixed]
        } else {
            [Target::Mixed, Target::Generic]
        };
        let mut pair = [None, None];
        for target in order {
            let (waited, _, drained) = runtime.block_on(settle(addr, knobs.settle))?;
            if !drained {
                println!("  (outbox NOT drained after {:.1} s)", waited.as_secs_f64());
            }
            let acks_before = sink_count.load(Ordering::Relaxed);
            let cpu = |pid: &str| cpu_seconds(pid).unwrap_or(f64::NAN);
            let cpu_before = (cpu(&daemon_pid), cpu("self"));
            let (mut stats, wall) = runtime.block_on(load(
                addr,
                &knobs,
                target,
                knobs.duration,
                &format!("{run}r{round}"),
            ));
            let cpu_after = (cpu(&daemon_pid), cpu("self"));
            accepted += stats.latencies_us.len() as u64;
            stats.latencies_us.sort_unstable();
            let m = Measurement {
                rps: stats.latencies_us.len() as f64 / wall.as_secs_f64(),
                p50: percentile_ms(&stats.latencies_us, 0.5),
                p99: percentile_ms(&stats.latencies_us, 0.99),
            };
            println!(
                "round {round}  {:<7}  {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  2xx {:>7}  errors {}  acks during {}",
                target.name(),
                m.rps,
                m.p50,
                m.p99,
                stats.latencies_us.len(),
                stats.describe_errors(),
                sink_count.load(Ordering::Relaxed) - acks_before,
            );
            let ok = stats.latencies_us.len().max(1) as f64;
            println!(
                "                  cpu: daemon {:.0} µs/request, load generator + sink {:.0} µs/request",
                (cpu_after.0 - cpu_before.0) * 1e6 / ok,
                (cpu_after.1 - cpu_before.1) * 1e6 / ok,
            );
            pair[target as usize] = Some(m);
        }
        let [Some(g), Some(x)] = pair else {
            unreachable!("both targets measured")
        };
        println!("round {round}  ratio mixed/generic {:.3}\n", x.rps / g.rps);
        results.push((g, x));
    }
    summary(&results);

    let (waited, _, drained) = runtime.block_on(settle(addr, knobs.settle))?;
    println!(
        "outbox after the run: {} in {:.1} s; acknowledgements received by the sink: {}",
        if drained { "drained" } else { "NOT drained" },
        waited.as_secs_f64(),
        sink_count.load(Ordering::Relaxed)
    );
    let inquiries = runtime.block_on(async {
        let (_, body) = http_get(addr, "/api/v1/inquiries?limit=1", Some(OPS_TOKEN)).await?;
        let page: serde_json::Value = serde_json::from_str(&body)?;
        let newest = page["inquiries"][0]["reference"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        anyhow::Ok(newest)
    })?;
    let expected = switchboard::inquiry::Reference::from_id(accepted as i64);
    println!(
        "durability: {accepted} 2xx answers (warm-up included); newest inquiry {inquiries} (expected {expected}) -> {}",
        if inquiries == expected.as_str() {
            "OK"
        } else {
            "MISMATCH"
        }
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    if !logged.trim().is_empty() {
        let lines: Vec<&str> = logged.lines().collect();
        println!(
            "daemon log (RUST_LOG=warn): {} line(s); last: {}",
            lines.len(),
            lines.last().unwrap_or(&"")
        );
    }
    Ok(())
}

struct Knobs {
    /// Request kinds of the mixed target (0 Twilio, 1 Slack, 2 WhatsApp, 3 Telegram).
    mix: Vec<usize>,
    rounds: usize,
    duration: Duration,
    connections: usize,
    warmup: Duration,
    settle: Duration,
}

impl Knobs {
    fn from_env() -> Knobs {
        fn var<T: FromStr>(name: &str, default: T) -> T {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v:?} is not valid"))
                })
                .unwrap_or(default)
        }
        let mix_names = var("PROVIDERS_MIX", "twilio,slack,whatsapp,telegram".to_owned());
        let mix: Vec<usize> = mix_names
            .split(',')
            .map(|n| match n.trim() {
                "twilio" => 0,
                "slack" => 1,
                "whatsapp" => 2,
                "telegram" => 3,
                other => panic!("PROVIDERS_MIX: unknown provider {other:?}"),
            })
            .collect();
        Knobs {
            mix,
            rounds: var("PROVIDERS_ROUNDS", 3usize).max(1),
            duration: Duration::from_secs_f64(var("PROVIDERS_SECS", 5.0)),
            connections: var("PROVIDERS_CONNECTIONS", 64usize).max(1),
            warmup: Duration::from_secs_f64(var("PROVIDERS_WARMUP_SECS", 1.0)),
            settle: Duration::from_secs_f64(var("PROVIDERS_SETTLE_SECS", 60.0)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Generic = 0,
    Mixed = 1,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Generic => "generic",
            Target::Mixed => "mixed",
        }
    }
}

struct Measurement {
    rps: f64,
    p50: f64,
    p99: f64,
}

fn summary(results: &[(Measurement, Measurement)]) {
    let median = |f: &dyn Fn(&(Measurement, Measurement)) -> f64| {
        support::median(results.iter().map(f).collect())
    };
    println!("summary (median of {} rounds)", results.len());
    println!(
        "  generic {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        median(&|r| r.0.rps),
        median(&|r| r.0.p50),
        median(&|r| r.0.p99)
    );
    println!(
        "  mixed   {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        median(&|r| r.1.rps),
        median(&|r| r.1.p50),
        median(&|r| r.1.p99)
    );
    println!(
        "  ratio mixed/generic {:.3} (target: at least {:.3}, i.e. within 1.5×)",
        median(&|r| r.1.rps / r.0.rps),
        1.0 / 1.5
    );
}

fn write_config(dir: &Path, port: u16, sink: u16) -> anyhow::Result<std::path::PathBuf> {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates)?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
    for entry in std::fs::read_dir(&source)? {
        let entry = entry?;
        std::fs::copy(entry.path(), templates.join(entry.file_name()))?;
    }
    let base = format!("http://127.0.0.1:{sink}");
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"

[store]
url = "sqlite://{db}"

[api]
ops_token = "{OPS_TOKEN}"

[channels.generic.bench]
secret = "{GENERIC_SECRET}"
reply_url = "{base}/replies"

[channels.twilio.bench]
account_sid = "{TWILIO_SID}"
auth_token = "{TWILIO_TOKEN}"
public_url = "{TWILIO_PUBLIC}"
api_base = "{base}/twilio"

[channels.slack.bench]
signing_secret = "{SLACK_SECRET}"
bot_token = "xoxb-bench"
api_base = "{base}/slack"

[channels.whatsapp.bench]
verify_token = "v"
app_secret = "{WA_SECRET}"
access_token = "bench-access"
phone_number_id = "{WA_PHONE_ID}"
api_base = "{base}/graph"

[channels.telegram.bench]
secret_token = "{TG_SECRET}"
bot_token = "1:bench"
api_base = "{base}/telegram"
"#,
        db = dir.join("db.sqlite").display(),
    );
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// The providers' APIs in one: every POST gets an answer each adapter
/// takes as success (Twilio `sid`, Slack `ok`+`ts`, WhatsApp
/// `messages[0].id`, Telegram `ok`+`result`). Counts them.
fn start_sink() -> anyhow::Result<(u16, Arc<AtomicU64>)> {
    let count = Arc::new(AtomicU64::new(0));
    let listener = StdTcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let n = count.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("sink runtime");
        runtime.block_on(async move {
            let app = axum::Router::new().fallback(move |_body: Bytes| {
                let id = n.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    axum::Json(serde_json::json!({
                        "ok": true, "sid": format!("SM{id}"), "ts": format!("1.{id}"),
                        "messages": [{"id": format!("wamid.{id}")}],
                        "result": {"message_id": id}
                    }))
                }
            });
            let listener = tokio::net::TcpListener::from_std(listener).expect("sink listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    Ok((port, count))
}

/// Builds one signed request of the given kind. `unique` makes the
/// provider id and the customer unique in the run.
fn build(host: &HeaderValue, kind: usize, prefix: &str, unique: u64) -> Request<Full<Bytes>> {
    let text = support::message_text(unique);
    // A unique 10-digit subscriber number per request: a new customer each time.
    let phone = format!("1{:010}", unique % 10_000_000_000);
    let (path, content_type, body, headers): (&str, &str, String, Vec<(&str, String)>) = match kind
    {
        0 => {
            let form: Vec<(String, String)> = [
                ("MessageSid", format!("SM{prefix}x{unique}")),
                ("AccountSid", TWILIO_SID.to_owned()),
                ("From", format!("+{phone}")),
                ("To", "+14155550100".to_owned()),
                ("Body", text),
                ("NumMedia", "0".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let path = "/webhooks/twilio/bench/sms";
            let sig =
                twilio::twilio_signature(TWILIO_TOKEN, &format!("{TWILIO_PUBLIC}{path}"), &form);
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&form)
                .finish();
            (
                path,
                "application/x-www-form-urlencoded",
                body,
                vec![("x-twilio-signature", sig)],
            )
        }
        1 => {
            let body = serde_json::json!({
                "type": "event_callback", "team_id": "TBENCH", "event_id": format!("Ev{prefix}x{unique}"),
                "event": {"type": "message", "channel": "CBENCH", "user": format!("U{unique}"),
                          "text": text, "ts": format!("{unique}.{prefix}"), "channel_type": "im"}
            })
            .to_string();
            let now = chrono::Utc::now().timestamp();
            let sig = slack::sign(SLACK_SECRET, now, body.as_bytes());
            (
                "/webhooks/slack/bench",
                "application/json",
                body,
                vec![
                    ("x-slack-request-timestamp", now.to_string()),
                    ("x-slack-signature", sig),
                ],
            )
        }
        2 => {
            let body = serde_json::json!({
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550783881", "phone_number_id": WA_PHONE_ID},
                    "contacts": [{"profile": {"name": "Bench"}, "wa_id": phone}],
                    "messages": [{"from": phone, "id": format!("wamid.{prefix}x{unique}"),
                                  "timestamp": "1749416383", "type": "text", "text": {"body": text}}]
                }}]}]
            })
            .to_string();
            let sig = format!(
                "sha256={}",
                hmac_sha256_hex(WA_SECRET.as_bytes(), body.as_bytes())
            );
            (
                "/webhooks/whatsapp/bench",
                "application/json",
                body,
                vec![("x-hub-signature-256", sig)],
            )
        }
        3 => {
            let body = serde_json::json!({
                "update_id": unique,
                "message": {"message_id": unique, "date": 1441645532, "text": text,
                            "from": {"id": unique, "is_bot": false, "first_name": "Bench"},
                            "chat": {"id": unique, "type": "private"}}
            })
            .to_string();
            (
                "/webhooks/telegram/bench",
                "application/json",
                body,
                vec![("x-telegram-bot-api-secret-token", TG_SECRET.to_owned())],
            )
        }
        _ => {
            let body = format!(
                r#"{{"id":"{prefix}x{unique}","from":{{"name":"Bench Customer"}},"text":"{text}"}}"#
            );
            let sig = format!(
                "sha256={}",
                hmac_sha256_hex(GENERIC_SECRET.as_bytes(), body.as_bytes())
            );
            (
                "/webhooks/generic/bench",
                "application/json",
                body,
                vec![("x-switchboard-signature", sig)],
            )
        }
    };
    let mut request = Request::post(path)
        .header(HOST, host.clone())
        .header(CONTENT_TYPE, content_type);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    request
        .body(Full::new(Bytes::from(body)))
        .expect("static request parts are valid")
}

/// The requests of one target: every connection cycles through `kinds`
/// (4 is the generic webhook), starting at its own offset.
struct Mix {
    kinds: Vec<usize>,
    prefix: String,
}

/// Unique numbers across connections and rounds of one run.
static NEXT: AtomicU64 = AtomicU64::new(1);

impl Requests for Mix {
    fn build(&self, host: &HeaderValue, connection: usize, seq: u64) -> Request<Full<Bytes>> {
        let kind = self.kinds[(connection + seq as usize) % self.kinds.len()];
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        build(host, kind, &self.prefix, unique)
    }

    /// Providers answer 200 (TwiML, JSON), the generic webhook 202.
    fn accepted(&self, status: StatusCode) -> bool {
        status.is_success()
    }
}

async fn load(
    addr: SocketAddr,
    knobs: &Knobs,
    target: Target,
    duration: Duration,
    prefix: &str,
) -> (support::LoadStats, Duration) {
    let kinds = match target {
        Target::Generic => vec![4],
        Target::Mixed => knobs.mix.clone(),
    };
    let requests = Arc::new(Mix {
        kinds,
        prefix: prefix.to_owned(),
    });
    run_load_with(&[addr], knobs.connections, duration, requests).await
}
