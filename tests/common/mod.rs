//! Test harness: runs the real `switchboard` binary on 127.0.0.1 with a
//! config in a temp folder, signs webhooks like a sender would, and plays
//! the reply endpoint that receives acknowledgements.
#![allow(dead_code)]

pub mod pg;
pub mod providers;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use switchboard::channels::signature::{hmac_sha256_hex, verify_hmac_sha256_hex};

pub const SECRET: &str = "test-secret";
pub const TOKEN: &str = "test-ops-token";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A config folder: `switchboard.toml`, templates, and the database.
pub struct Setup {
    pub dir: tempfile::TempDir,
    /// `store.url`: SQLite in `dir`, or a fresh PostgreSQL database when the
    /// suite runs against PostgreSQL (see [`pg::suite_server`]).
    pub store_url: String,
    /// A `[cluster]` table for the PostgreSQL pass, else empty.
    pub cluster: String,
}

impl Setup {
    /// A config with one generic channel `shop` answering to `reply_url`.
    pub fn new(reply_url: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let templates = dir.path().join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        std::fs::write(
            templates.join("ack.en.txt"),
            "Hello {{ customer_name or 'there' }}, your reference is {{ reference }}.",
        )
        .unwrap();
        std::fs::write(
            templates.join("ack.de.txt"),
            "Hallo {{ customer_name or '' }}, Ihre Referenz ist {{ reference }}.",
        )
        .unwrap();
        let (store_url, cluster) = match pg::suite_server() {
            Some(admin) => {
                let url = pg::create_database(&admin);
                // A stable name: a restarted daemon resumes its own leases
                // at once instead of waiting for them to expire.
                let name = url.rsplit('/').next().unwrap_or("test").to_owned();
                (url, format!("[cluster]\ninstance = \"{name}\"\n"))
            }
            None => (
                format!(
                    "sqlite://{}",
                    dir.path().join("data").join("switchboard.sqlite").display()
                ),
                String::new(),
            ),
        };
        let setup = Setup {
            dir,
            store_url,
            cluster,
        };
        setup.write_config(&setup.config_text(reply_url, ""));
        setup
    }

    pub fn config_text(&self, reply_url: Option<&str>, extra: &str) -> String {
        let reply = reply_url
            .map(|u| format!("reply_url = \"{u}\"\n"))
            .unwrap_or_default();
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
drain_timeout = "5s"

[store]
url = "{db}"

[api]
ops_token = "{TOKEN}"

[limits]
max_body_bytes = 4096

[outbox]
initial_backoff = "50ms"
max_backoff = "200ms"
max_attempts = 5
request_timeout = "2s"
poll_interval = "50ms"

{cluster}
[channels.generic.shop]
secret = "{SECRET}"
{reply}
{extra}
"#,
            db = self.store_url,
            cluster = self.cluster,
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchboard.toml")
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(&self.config_path(), &[])
    }
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Copies the daemon's stderr into `log`; ends at its end.
    reader: std::thread::JoinHandle<()>,
}

impl Daemon {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = started_on(&line) {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "switchboard did not start:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Daemon {
            child,
            addr,
            log,
            reader,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader may still be behind the exit: let it take the
                // last lines (bounded), so the log is whole.
                let read_by = Instant::now() + Duration::from_secs(5);
                while !self.reader.is_finished() && Instant::now() < read_by {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("switchboard did not exit within {within:?}");
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn started_on(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "switchboard started" {
        return None;
    }
    fields.get("listen")?.as_str()?.parse().ok()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn sign(body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), body))
}

/// POSTs a signed generic webhook; returns status and JSON body.
pub async fn post_webhook(
    client: &reqwest::Client,
    daemon: &Daemon,
    channel: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let response = client
        .post(daemon.url(&format!("/webhooks/generic/{channel}")))
        .header("content-type", "application/json")
        .header("x-switchboard-signature", sign(&raw))
        .body(raw)
        .send()
        .await
        .expect("webhook request");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

pub async fn api_get(
    client: &reqwest::Client,
    daemon: &Daemon,
    path: &str,
) -> (u16, serde_json::Value) {
    let response = client
        .get(daemon.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("api request");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The daemon's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, daemon: &Daemon) -> String {
    let response = client
        .get(daemon.url("/metrics"))
        .send()
        .await
        .expect("metrics request");
    response.text().await.expect("metrics body")
}

/// Polls `f` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One acknowledgement as the reply endpoint received it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery_id: String,
    pub body: serde_json::Value,
    pub signature_ok: bool,
    /// The sender's address: one per TCP connection.
    pub peer: SocketAddr,
}

#[derive(Default)]
struct ReplyState {
    /// Statuses to answer, in order; 200 once exhausted.
    script: VecDeque<u16>,
    received: Vec<Delivery>,
    /// Bytes of filler in each answer's JSON body.
    padding: usize,
}

/// A local reply endpoint that checks each acknowledgement's signature, as
/// a receiving system would, and answers from a script.
#[derive(Clone)]
pub struct ReplyServer {
    pub url: String,
    state: Arc<Mutex<ReplyState>>,
}

impl ReplyServer {
    pub async fn start(script: &[u16]) -> ReplyServer {
        Self::start_padded(script, 0).await
    }

    /// Like [`ReplyServer::start`], with `padding` bytes of filler in every
    /// answer's body (more than one read of the sender's buffer).
    pub async fn start_padded(script: &[u16], padding: usize) -> ReplyServer {
        let state = Arc::new(Mutex::new(ReplyState {
            script: script.iter().copied().collect(),
            received: Vec::new(),
            padding,
        }));
        let app = axum::Router::new()
            .route("/replies", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/replies", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        ReplyServer { url, state }
    }

    pub fn received(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().received.clone()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReplyState>>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let signature_ok = headers
        .get("x-switchboard-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .is_some_and(|hex| verify_hmac_sha256_hex(SECRET.as_bytes(), &body, hex));
    let delivery_id = headers
        .get("x-switchboard-delivery")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut state = state.lock().unwrap();
    state.received.push(Delivery {
        delivery_id,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        signature_ok,
        peer,
    });
    use axum::response::IntoResponse;
    let status = StatusCode::from_u16(state.script.pop_front().unwrap_or(200)).unwrap();
    // A redirect names this same endpoint: a client that follows it comes back here.
    if status.is_redirection() {
        return (status, [(axum::http::header::LOCATION, "/replies")]).into_response();
    }
    // With a body, as real endpoints answer: the sender must read it to
    // keep the connection.
    let padding = "x".repeat(state.padding);
    (
        status,
        axum::Json(serde_json::json!({ "received": true, "padding": padding })),
    )
        .into_response()
}

/// Event kinds of an inquiry, in order.
pub fn event_kinds(detail: &serde_json::Value) -> Vec<String> {
    detail["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Any API call with a bearer token and an optional JSON body.
pub async fn api(
    client: &reqwest::Client,
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = client.request(method, daemon.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("api request");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Event kinds without those of rules and routing, which run beside the
/// acknowledgement and may land in any order relative to it.
pub fn ack_event_kinds(detail: &serde_json::Value) -> Vec<String> {
    const ROUTING: [&str; 6] = [
        "classified",
        "queued",
        "offered",
        "relaxed",
        "offer_expired",
        "sla_breached",
    ];
    event_kinds(detail)
        .into_iter()
        .filter(|k| !ROUTING.contains(&k.as_str()))
        .collect()
}
