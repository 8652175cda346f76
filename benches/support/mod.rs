//! What the HTTP intake benches share (`benches/intake.rs`,
//! `benches/scaleout.rs`, `benches/providers.rs`; `benches/email.rs` only
//! for [`daemon_binary`]): helper servers (bare
//! axum, acknowledgement sink) as child processes of the bench binary, the
//! daemon as a child process, a keep-alive HTTP/1.1 load generator (signed
//! generic webhooks, or whatever a bench's [`Requests`] builds), daemon
//! metrics and CPU accounting from `/proc`.
//!
//! Not every bench uses every item.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;

pub const CHANNEL: &str = "bench";
pub const SECRET: &str = "bench-webhook-secret";
pub const OPS_TOKEN: &str = "bench-ops-token";
pub const WEBHOOK_PATH: &str = "/webhooks/generic/bench";

/// If this executable was started as a helper server (`--serve-bare
/// <port>` or `--serve-sink <port>`), serves until stdin closes and returns
/// its result; otherwise `None`.
pub fn helper_main() -> Option<anyhow::Result<()>> {
    let args: Vec<String> = std::env::args().collect();
    for (flag, role) in [
        ("--serve-bare", Helper::Bare),
        ("--serve-sink", Helper::Sink),
    ] {
        if let Some(i) = args.iter().position(|a| a == flag) {
            let port = args
                .get(i + 1)
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("usage: {flag} <port>"));
            return Some(port.and_then(|port| serve_helper(role, port)));
        }
    }
    None
}

/// A knob from the environment, or its default.
pub fn env_var<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------
// Helper servers (child processes)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
pub enum Helper {
    Bare,
    Sink,
}

/// Serves on `127.0.0.1:<port>` (0: any free port) and prints
/// `listening <port>` once bound. Exits when stdin closes, i.e. when the
/// parent is gone, even if it could not kill us.
pub fn serve_helper(role: Helper, port: u16) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    // The same runtime the daemon's main() builds: one worker per core.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening {}", listener.local_addr()?.port());
        let app = match role {
            // Reads the body (so the connection stays reusable) and answers.
            Helper::Bare => Router::new()
                .route(
                    "/webhooks/generic/{name}",
                    post(|_body: Bytes| async { StatusCode::ACCEPTED }),
                )
                .route("/readyz", get(|| async { "ready\n" })),
            // Counts acknowledgements; GET /count tells how many arrived.
            Helper::Sink => {
                let received = Arc::new(AtomicU64::new(0));
                Router::new()
                    .route(
                        "/replies",
                        post(|State(n): State<Arc<AtomicU64>>, _body: Bytes| async move {
                            n.fetch_add(1, Ordering::Relaxed);
                            StatusCode::OK
                        }),
                    )
                    .route(
                        "/count",
                        get(|State(n): State<Arc<AtomicU64>>| async move {
                            n.load(Ordering::Relaxed).to_string()
                        }),
                    )
                    .route("/readyz", get(|| async { "ready\n" }))
                    .with_state(received)
            }
        };
        axum::serve(listener, app).await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Owns a child process and kills it when dropped (also while unwinding
/// from a panic), unless it was already stopped.
pub struct ChildGuard {
    pub name: &'static str,
    pub child: Child,
}

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then wait up to `grace` for a clean exit.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("child pid out of range")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {grace:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts this executable as a helper server and returns it with its port.
pub fn spawn_helper(name: &'static str, flag: &str) -> anyhow::Result<(ChildGuard, u16)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([flag, "0"])
        .stdin(Stdio::piped()) // held open by the guard: see serve_helper
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start the {name} server"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let guard = ChildGuard { name, child };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the {name} server did not report its port: {line:?}"))?;
    Ok((guard, port))
}

/// A port that was free a moment ago (the daemon needs one in its config).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes a daemon's config folder: config file and templates. `extra` is
/// appended (e.g. a `[cluster]` section).
pub fn write_daemon_config(
    dir: &Path,
    port: u16,
    sink_port: u16,
    store_url: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates)?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
    for entry in
        std::fs::read_dir(&source).with_context(|| format!("cannot read {}", source.display()))?
    {
        let entry = entry?;
        std::fs::copy(entry.path(), templates.join(entry.file_name()))?;
    }
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
drain_timeout = "10s"

[store]
url = "{store_url}"

[api]
ops_token = "{OPS_TOKEN}"

[templates]
path = "templates"
default_language = "en"

[channels.generic.{CHANNEL}]
secret = "{SECRET}"
reply_url = "http://127.0.0.1:{sink_port}/replies"
{extra}"#
    );
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// The daemon binary under test: the release build beside this bench, or
/// `SWITCHBOARD_BENCH_BIN` (e.g. an older build kept for a before/after
/// comparison run in alternation with the current one).
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("SWITCHBOARD_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_switchboard")))
}

/// Starts the daemon binary ([`daemon_binary`]) on `config`, its stderr to `log`.
pub fn spawn_daemon(config: &Path, log: &Path) -> anyhow::Result<ChildGuard> {
    let mut command = Command::new(daemon_binary());
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    // Overrides from the caller's environment would change what we measure.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD__") {
            command.env_remove(key);
        }
    }
    let child = command
        .spawn()
        .context("cannot start the switchboard binary")?;
    Ok(ChildGuard {
        name: "switchboard",
        child,
    })
}

pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A one-off GET on its own connection (control traffic, not measured).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(StatusCode, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let mut request = Request::get(path).header(HOST, addr.to_string());
    if let Some(token) = bearer {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `GET /readyz` until 200; fails early if the process died.
pub async fn wait_ready(
    addr: SocketAddr,
    child: &mut ChildGuard,
    log: Option<&Path>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.exited() {
            let tail = log.map(|l| log_tail(l, 20)).unwrap_or_default();
            bail!(
                "{} exited before it was ready ({status}):\n{tail}",
                child.name
            );
        }
        if let Ok((StatusCode::OK, _)) = http_get(addr, "/readyz", None).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} was not ready within 30 s", child.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a load connection sends. Requests are built before the latency
/// clock starts.
pub trait Requests: Send + Sync + 'static {
    /// The request for turn `seq` (from 1) of connection `connection`.
    fn build(&self, host: &HeaderValue, connection: usize, seq: u64) -> Request<Full<Bytes>>;

    /// Whether an answer counts as taken in (its latency is recorded).
    fn accepted(&self, status: StatusCode) -> bool {
        status == StatusCode::ACCEPTED
    }
}

/// Builds signed generic webhooks with the provider message id
/// `<prefix>-<connection>-<seq>`. Signing costs about a microsecond: the
/// HMAC is keyed once and cloned per request.
pub struct RequestFactory {
    mac: Hmac<Sha256>,
    id_prefix: String,
}

impl RequestFactory {
    pub fn new(id_prefix: &str) -> Self {
        RequestFactory {
            mac: Hmac::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key length"),
            id_prefix: id_prefix.to_owned(),
        }
    }
}

impl Requests for RequestFactory {
    fn build(&self, host: &HeaderValue, connection: usize, seq: u64) -> Request<Full<Bytes>> {
        let id = format!("{}-{connection}-{seq}", self.id_prefix);
        let text = message_text(seq);
        let body = format!(
            r#"{{"id":"{id}","from":{{"name":"Bench Customer {connection}"}},"text":"{text}"}}"#
        );
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        Request::post(WEBHOOK_PATH)
            .header(HOST, host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("x-switchboard-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .expect("static request parts are valid")
    }
}

// ---------------------------------------------------------------------------
// Load generation
// ---------------------------------------------------------------------------

/// What one connection (or, merged, one measurement) saw.
#[derive(Default)]
pub struct LoadStats {
    /// Latency of each accepted request, in microseconds.
    pub latencies_us: Vec<u32>,
    /// The (connection, sequence number) of each accepted request (for the
    /// generic webhook they make up the provider message id
    /// `<prefix>-<connection>-<seq>`).
    pub accepted: Vec<(u32, u64)>,
    /// Answers not accepted, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Failed connects, broken connections, unreadable responses.
    pub transport_errors: u64,
}

impl LoadStats {
    pub fn merge(&mut self, other: LoadStats) {
        self.latencies_us.extend(other.latencies_us);
        self.accepted.extend(other.accepted);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
    }

    pub fn errors(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport_errors
    }

    pub fn describe_errors(&self) -> String {
        if self.errors() == 0 {
            return "0".into();
        }
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{n}×{s}"))
            .collect();
        if self.transport_errors > 0 {
            parts.push(format!("{}×transport", self.transport_errors));
        }
        parts.join(", ")
    }
}

/// One closed-loop keep-alive connection: send, wait for the answer, repeat
/// until `deadline`. A broken connection is counted and replaced.
pub async fn drive_connection(
    addr: SocketAddr,
    requests: Arc<dyn Requests>,
    connection: usize,
    deadline: Instant,
) -> LoadStats {
    let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header");
    let mut stats = LoadStats::default();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                stats.transport_errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            stats.transport_errors += 1;
            continue;
        };
        let driver = tokio::spawn(conn);
        while Instant::now() < deadline {
            seq += 1;
            let request = requests.build(&host, connection, seq);
            let start = Instant::now();
            let answer = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    response.into_body().collect().await.map(|_| status)
                }
                Err(e) => Err(e),
            };
            let elapsed = start.elapsed();
            match answer {
                Ok(status) if requests.accepted(status) => {
                    stats
                        .latencies_us
                        .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                    stats.accepted.push((connection as u32, seq));
                }
                Ok(status) => *stats.statuses.entry(status.as_u16()).or_default() += 1,
                Err(_) => {
                    stats.transport_errors += 1;
                    break;
                }
            }
        }
        driver.abort();
    }
    stats
}

/// Drives `connections` connections sending signed generic webhooks for
/// `duration`, connection `c` to `addrs[c % addrs.len()]` (round-robin over
/// the instances of a target). Returns what they saw and the wall time
/// from the first request to the last answer.
pub async fn run_load(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    id_prefix: &str,
) -> (LoadStats, Duration) {
    let requests = Arc::new(RequestFactory::new(id_prefix));
    run_load_with(addrs, connections, duration, requests).await
}

/// [`run_load`] with the requests `requests` builds.
pub async fn run_load_with(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    requests: Arc<dyn Requests>,
) -> (LoadStats, Duration) {
    assert!(!addrs.is_empty(), "no address to load");
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            tokio::spawn(drive_connection(
                addrs[c % addrs.len()],
                requests.clone(),
                c,
                deadline,
            ))
        })
        .collect();
    let mut total = LoadStats::default();
    for task in tasks {
        total.merge(task.await.expect("a load task panicked"));
    }
    (total, start.elapsed())
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

// ---------------------------------------------------------------------------
// Daemon metrics
// ---------------------------------------------------------------------------

/// The few daemon metrics the report uses, from `GET /metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DaemonMetrics {
    pub batch_sum: f64,
    pub batch_count: f64,
    pub outbox_pending: f64,
    pub outbox_sent: f64,
    pub outbox_failed: f64,
}

impl DaemonMetrics {
    pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Self> {
        let (status, text) = http_get(addr, "/metrics", None).await?;
        if status != StatusCode::OK {
            bail!("GET /metrics answered {status}");
        }
        // Prometheus text: `name{labels} value`; absent series are zero.
        let value = |series: &str| {
            text.lines()
                .filter_map(|l| l.rsplit_once(' '))
                .find(|(k, _)| *k == series)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0.0)
        };
        Ok(DaemonMetrics {
            batch_sum: value("switchboard_store_batch_size_sum"),
            batch_count: value("switchboard_store_batch_size_count"),
            outbox_pending: value("switchboard_outbox_entries{status=\"pending\"}"),
            outbox_sent: value("switchboard_outbox_entries{status=\"sent\"}"),
            outbox_failed: value("switchboard_outbox_entries{status=\"failed\"}"),
        })
    }

    /// Average jobs per group commit between `earlier` and `self`, and the
    /// number of commits.
    pub fn batches_since(&self, earlier: &DaemonMetrics) -> (f64, f64) {
        let commits = self.batch_count - earlier.batch_count;
        let jobs = self.batch_sum - earlier.batch_sum;
        (
            if commits > 0.0 {
                jobs / commits
            } else {
                f64::NAN
            },
            commits,
        )
    }
}

pub async fn sink_count(addr: SocketAddr) -> anyhow::Result<u64> {
    let (_, body) = http_get(addr, "/count", None).await?;
    Ok(body.trim().parse()?)
}

/// Waits until the daemon's outbox has nothing pending (at most `limit`),
/// so that acknowledgement delivery left over from a daemon round does not
/// run during the next measurement. Returns how long it took and the
/// backlog found at the start.
pub async fn settle(addr: SocketAddr, limit: Duration) -> anyhow::Result<(Duration, f64, bool)> {
    let start = Instant::now();
    let backlog = DaemonMetrics::fetch(addr).await?.outbox_pending;
    loop {
        let pending = DaemonMetrics::fetch(addr).await?.outbox_pending;
        if pending == 0.0 {
            return Ok((start.elapsed(), backlog, true));
        }
        if start.elapsed() > limit {
            return Ok((start.elapsed(), backlog, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------

/// CPU time (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat`. `None` off Linux or once the process is gone.
/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The customer's text of the `n`-th bench message (plain: no JSON escaping needed).
pub fn message_text(n: u64) -> String {
    format!("Hello, my order {n} has not arrived yet. Could you check where it is?")
}

/// Bytes `pid` has caused to be written to storage (`write_bytes` in
/// `/proc/<pid>/io`: page-cache writeback, so the WAL and checkpoints).
pub fn disk_write_bytes(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, so
    // utime (14) and stime (15) are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // /proc reports clock ticks of USER_HZ, which Linux fixes at 100.
    Some((utime + stime) / 100.0)
}
