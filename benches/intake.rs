//! Intake benchmark: how many signed generic webhooks per second the real
//! daemon commits durably, next to a bare axum handler on the same machine.
//!
//! Run with `cargo bench --bench intake`. Everything runs on loopback:
//!
//! - **bare**: this executable re-run as `--serve-bare <port>`, an axum
//!   server that answers every webhook POST with 202 and does nothing else.
//!   It is a separate process so it does not share the load generator's
//!   runtime, just like the daemon.
//! - **daemon**: the release `switchboard` binary with a fresh SQLite store
//!   in a temporary folder and one generic channel, `bench`, whose
//!   `reply_url` points at a sink (this executable as `--serve-sink <port>`,
//!   answering 200), so acknowledgements are really dispatched while intake
//!   runs.
//!
//! The load generator in this process holds `INTAKE_CONNECTIONS` keep-alive
//! HTTP/1.1 connections, each sending one request after the other (a closed
//! loop, like wrk). Both targets get the same requests: a unique JSON body
//! signed with HMAC-SHA256. Targets are measured in interleaved rounds so
//! that drift of a shared machine hits both alike. Only 202 answers count as
//! successes and only their latency is recorded; everything else is
//! reported as an error.
//!
//! Knobs (environment): `INTAKE_ROUNDS` (3), `INTAKE_SECS` per target and
//! round (5), `INTAKE_CONNECTIONS` (64), `INTAKE_WARMUP_SECS` (1),
//! `INTAKE_SETTLE_SECS` (60: the longest wait for the daemon's outbox to
//! drain before a measurement).

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

const CHANNEL: &str = "bench";
const SECRET: &str = "bench-webhook-secret";
const OPS_TOKEN: &str = "bench-ops-token";
const WEBHOOK_PATH: &str = "/webhooks/generic/bench";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    for (flag, role) in [
        ("--serve-bare", Helper::Bare),
        ("--serve-sink", Helper::Sink),
    ] {
        if let Some(i) = args.iter().position(|a| a == flag) {
            let port = args
                .get(i + 1)
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("usage: {flag} <port>"))?;
            return serve_helper(role, port);
        }
    }
    bench(Knobs::from_env())
}

// ---------------------------------------------------------------------------
// Helper servers (child processes)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Helper {
    Bare,
    Sink,
}

/// Serves on `127.0.0.1:<port>` (0: any free port) and prints
/// `listening <port>` once bound. Exits when stdin closes, i.e. when the
/// parent is gone, even if it could not kill us.
fn serve_helper(role: Helper, port: u16) -> anyhow::Result<()> {
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
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then wait up to `grace` for a clean exit.
    fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
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
fn spawn_helper(name: &'static str, flag: &str) -> anyhow::Result<(ChildGuard, u16)> {
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
fn free_port() -> anyhow::Result<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes the daemon's config folder: config file and templates.
fn write_daemon_config(dir: &Path, port: u16, sink_port: u16) -> anyhow::Result<PathBuf> {
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
url = "sqlite://{db}"

[api]
ops_token = "{OPS_TOKEN}"

[templates]
path = "templates"
default_language = "en"

[channels.generic.{CHANNEL}]
secret = "{SECRET}"
reply_url = "http://127.0.0.1:{sink_port}/replies"
"#,
        db = dir.join("db.sqlite").display(),
    );
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

fn spawn_daemon(config: &Path, log: &Path) -> anyhow::Result<ChildGuard> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
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

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A one-off GET on its own connection (control traffic, not measured).
async fn http_get(
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
async fn wait_ready(
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

/// Builds signed webhook requests. Signing costs about a microsecond: the
/// HMAC is keyed once and cloned per request, and it happens before the
/// latency clock starts.
struct RequestFactory {
    mac: Hmac<Sha256>,
    host: HeaderValue,
}

impl RequestFactory {
    fn new(addr: SocketAddr) -> Self {
        RequestFactory {
            mac: Hmac::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key length"),
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header"),
        }
    }

    fn build(&self, id: &str, connection: usize, seq: u64) -> Request<Full<Bytes>> {
        let body = format!(
            r#"{{"id":"{id}","from":{{"name":"Bench Customer {connection}"}},"text":"Hello, my order {seq} has not arrived yet. Could you check where it is?"}}"#
        );
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        Request::post(WEBHOOK_PATH)
            .header(HOST, self.host.clone())
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
struct LoadStats {
    /// Latency of each 202, in microseconds.
    latencies_us: Vec<u32>,
    /// Non-202 answers by status.
    statuses: BTreeMap<u16, u64>,
    /// Failed connects, broken connections, unreadable responses.
    transport_errors: u64,
}

impl LoadStats {
    fn merge(&mut self, other: LoadStats) {
        self.latencies_us.extend(other.latencies_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
    }

    fn errors(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport_errors
    }

    fn describe_errors(&self) -> String {
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
async fn drive_connection(
    addr: SocketAddr,
    factory: Arc<RequestFactory>,
    id_prefix: Arc<str>,
    connection: usize,
    deadline: Instant,
) -> LoadStats {
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
            let request =
                factory.build(&format!("{id_prefix}-{connection}-{seq}"), connection, seq);
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
                Ok(StatusCode::ACCEPTED) => stats
                    .latencies_us
                    .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)),
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

/// Drives `connections` connections for `duration`. Returns what they saw
/// and the wall time from the first request to the last answer.
async fn run_load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    id_prefix: &str,
) -> (LoadStats, Duration) {
    let factory = Arc::new(RequestFactory::new(addr));
    let id_prefix: Arc<str> = id_prefix.into();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            tokio::spawn(drive_connection(
                addr,
                factory.clone(),
                id_prefix.clone(),
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
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
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
struct DaemonMetrics {
    batch_sum: f64,
    batch_count: f64,
    outbox_pending: f64,
    outbox_sent: f64,
    outbox_failed: f64,
}

impl DaemonMetrics {
    async fn fetch(addr: SocketAddr) -> anyhow::Result<Self> {
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
    fn batches_since(&self, earlier: &DaemonMetrics) -> (f64, f64) {
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

async fn sink_count(addr: SocketAddr) -> anyhow::Result<u64> {
    let (_, body) = http_get(addr, "/count", None).await?;
    Ok(body.trim().parse()?)
}

/// Waits until the daemon's outbox has nothing pending (at most `limit`),
/// so that acknowledgement delivery left over from a daemon round does not
/// run during the next measurement. Returns how long it took and the
/// backlog found at the start.
async fn settle(addr: SocketAddr, limit: Duration) -> anyhow::Result<(Duration, f64, bool)> {
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
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, so
    // utime (14) and stime (15) are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // /proc reports clock ticks of USER_HZ, which Linux fixes at 100.
    Some((utime + stime) / 100.0)
}

/// CPU seconds of the server under test, the load generator (this
/// process) and the acknowledgement sink at one instant.
#[derive(Clone, Copy)]
struct CpuSample {
    server: f64,
    loadgen: f64,
    sink: f64,
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

struct Knobs {
    rounds: usize,
    duration: Duration,
    connections: usize,
    warmup: Duration,
    settle_limit: Duration,
}

impl Knobs {
    fn from_env() -> Self {
        fn var<T: FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
                Err(_) => default,
            }
        }
        Knobs {
            rounds: var("INTAKE_ROUNDS", 3usize).max(1),
            duration: Duration::from_secs_f64(var("INTAKE_SECS", 5.0)),
            connections: var("INTAKE_CONNECTIONS", 64usize).max(1),
            warmup: Duration::from_secs_f64(var("INTAKE_WARMUP_SECS", 1.0)),
            settle_limit: Duration::from_secs_f64(var("INTAKE_SETTLE_SECS", 60.0)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Bare,
    Daemon,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Bare => "bare",
            Target::Daemon => "daemon",
        }
    }
}

/// One target in one round.
struct Measurement {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The processes under test and how to reach them.
struct Rig {
    runtime: tokio::runtime::Runtime,
    connections: usize,
    bare: SocketAddr,
    daemon: SocketAddr,
    sink: SocketAddr,
    bare_pid: String,
    daemon_pid: String,
    sink_pid: String,
    /// 202s the daemon gave so far: each must be one committed inquiry.
    daemon_accepted: u64,
    run_id: u32,
}

impl Rig {
    fn addr(&self, target: Target) -> SocketAddr {
        match target {
            Target::Bare => self.bare,
            Target::Daemon => self.daemon,
        }
    }

    fn cpu(&self, target: Target) -> CpuSample {
        let server = match target {
            Target::Bare => &self.bare_pid,
            Target::Daemon => &self.daemon_pid,
        };
        CpuSample {
            server: cpu_seconds(server).unwrap_or(f64::NAN),
            loadgen: cpu_seconds("self").unwrap_or(f64::NAN),
            sink: cpu_seconds(&self.sink_pid).unwrap_or(f64::NAN),
        }
    }

    fn daemon_state(&self) -> anyhow::Result<(DaemonMetrics, u64)> {
        self.runtime.block_on(async {
            anyhow::Ok((
                DaemonMetrics::fetch(self.daemon).await?,
                sink_count(self.sink).await?,
            ))
        })
    }

    /// Loads `target` for `duration`; ids carry `label` so that no two
    /// requests of a run share one.
    fn load(&mut self, target: Target, duration: Duration, label: &str) -> (LoadStats, Duration) {
        let prefix = format!("{}-{label}-{}", self.run_id, target.name());
        let (stats, wall) = self.runtime.block_on(run_load(
            self.addr(target),
            self.connections,
            duration,
            &prefix,
        ));
        if target == Target::Daemon {
            self.daemon_accepted += stats.latencies_us.len() as u64;
        }
        (stats, wall)
    }

    /// One timed measurement of `target`, printed as it completes.
    fn measure(
        &mut self,
        target: Target,
        round: usize,
        knobs: &Knobs,
    ) -> anyhow::Result<Measurement> {
        // Acknowledgements left over from a daemon round would otherwise be
        // delivered during this measurement, competing for the CPU.
        let (waited, backlog, drained) = self
            .runtime
            .block_on(settle(self.daemon, knobs.settle_limit))?;
        if backlog > 0.0 {
            println!(
                "  (outbox: {backlog} pending acknowledgement(s) {} in {:.1} s before this measurement)",
                if drained { "drained" } else { "NOT drained" },
                waited.as_secs_f64()
            );
        }
        let (metrics_before, acks_before) = self.daemon_state()?;
        let cpu_before = self.cpu(target);
        let (mut stats, wall) = self.load(target, knobs.duration, &format!("r{round}"));
        let cpu_after = self.cpu(target);

        stats.latencies_us.sort_unstable();
        let ok = stats.latencies_us.len() as u64;
        let secs = wall.as_secs_f64();
        let m = Measurement {
            rps: ok as f64 / secs,
            p50_ms: percentile_ms(&stats.latencies_us, 0.50),
            p99_ms: percentile_ms(&stats.latencies_us, 0.99),
        };
        let server_cpu = cpu_after.server - cpu_before.server;
        println!(
            "round {round}  {:<6}  {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  202s {ok:>7}  errors {}",
            target.name(),
            m.rps,
            m.p50_ms,
            m.p99_ms,
            percentile_ms(&stats.latencies_us, 1.0),
            stats.describe_errors(),
        );
        println!(
            "                cpu: server {:.2} cores ({:.0} µs/request), load generator {:.2} cores",
            server_cpu / secs,
            server_cpu * 1e6 / ok.max(1) as f64,
            (cpu_after.loadgen - cpu_before.loadgen) / secs,
        );
        if target == Target::Daemon {
            let (metrics_after, acks_after) = self.daemon_state()?;
            let (avg_batch, commits) = metrics_after.batches_since(&metrics_before);
            let acks = acks_after - acks_before;
            println!(
                "                store: {:.0} group commits/s, avg {avg_batch:.1} jobs each; \
                 outbox: {acks} acks delivered ({:.0}/s, sink {:.2} cores), {} pending at the end",
                commits / secs,
                acks as f64 / secs,
                (cpu_after.sink - cpu_before.sink) / secs,
                metrics_after.outbox_pending,
            );
        }
        Ok(m)
    }
}

fn bench(knobs: Knobs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut sink, sink_port) = spawn_helper("sink", "--serve-sink")?;
    let (mut bare, bare_port) = spawn_helper("bare", "--serve-bare")?;
    let daemon_port = free_port()?;
    let config = write_daemon_config(dir.path(), daemon_port, sink_port)?;
    let log = dir.path().join("daemon.log");
    let mut daemon = spawn_daemon(&config, &log)?;

    let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut rig = Rig {
        // The load generator's own runtime: one worker per core, like
        // wrk's default of one thread per core.
        runtime: tokio::runtime::Runtime::new()?,
        connections: knobs.connections,
        bare: localhost(bare_port),
        daemon: localhost(daemon_port),
        sink: localhost(sink_port),
        bare_pid: bare.child.id().to_string(),
        daemon_pid: daemon.child.id().to_string(),
        sink_pid: sink.child.id().to_string(),
        daemon_accepted: 0,
        run_id: std::process::id(),
    };
    rig.runtime.block_on(async {
        wait_ready(rig.sink, &mut sink, None).await?;
        wait_ready(rig.bare, &mut bare, None).await?;
        wait_ready(rig.daemon, &mut daemon, Some(&log)).await
    })?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "intake bench: {} round(s) × {:?} per target, {} keep-alive connections, {cores} core(s), warm-up {:?}",
        knobs.rounds, knobs.duration, knobs.connections, knobs.warmup
    );
    println!("  bare   = axum answering 202 (separate process, port {bare_port})");
    println!(
        "  daemon = {} (port {daemon_port}, store {})",
        env!("CARGO_BIN_EXE_switchboard"),
        dir.path().join("db.sqlite").display()
    );

    if !knobs.warmup.is_zero() {
        for target in [Target::Bare, Target::Daemon] {
            rig.load(target, knobs.warmup, "warmup");
        }
    }

    let mut results: Vec<(Measurement, Measurement)> = Vec::new();
    println!();
    for round in 1..=knobs.rounds {
        // Alternate which target goes first, so neither always follows the other.
        let (bare_m, daemon_m) = if round % 2 == 1 {
            let b = rig.measure(Target::Bare, round, &knobs)?;
            (b, rig.measure(Target::Daemon, round, &knobs)?)
        } else {
            let d = rig.measure(Target::Daemon, round, &knobs)?;
            (rig.measure(Target::Bare, round, &knobs)?, d)
        };
        println!(
            "round {round}  ratio daemon/bare {:.3}\n",
            daemon_m.rps / bare_m.rps
        );
        results.push((bare_m, daemon_m));
    }
    print_summary(&results);

    // After the load: does the outbox catch up, and what did the store do?
    let (waited, backlog, drained) = rig
        .runtime
        .block_on(settle(rig.daemon, knobs.settle_limit))?;
    let (metrics, acks) = rig.daemon_state()?;
    println!();
    println!(
        "outbox after the run: {backlog} pending when the load stopped, {} in {:.1} s; \
         entries sent {} / failed {} / pending {}; acks received by the sink {acks}",
        if drained { "drained" } else { "NOT drained" },
        waited.as_secs_f64(),
        metrics.outbox_sent,
        metrics.outbox_failed,
        metrics.outbox_pending,
    );
    println!(
        "store over the whole run: {} group commits, avg {:.1} jobs each (intakes, claims and delivery records)",
        metrics.batch_count,
        metrics.batch_sum / metrics.batch_count
    );

    // Durability check, part 1: ids are dense from 1, so the newest
    // inquiry must be the one whose id is the number of 202s.
    let accepted = rig.daemon_accepted;
    let expected = switchboard::inquiry::Reference::from_id(accepted as i64);
    let newest = rig.runtime.block_on(async {
        let (status, body) =
            http_get(rig.daemon, "/api/v1/inquiries?limit=1", Some(OPS_TOKEN)).await?;
        if status != StatusCode::OK {
            bail!("GET /api/v1/inquiries answered {status}: {body}");
        }
        let page: serde_json::Value = serde_json::from_str(&body)?;
        anyhow::Ok(
            page["inquiries"][0]["reference"]
                .as_str()
                .unwrap_or("none")
                .to_owned(),
        )
    })?;

    // Part 2: stop the daemon cleanly, then count the rows in the file it left.
    let stop = daemon.terminate(Duration::from_secs(20));
    let (inquiries, messages) = rig
        .runtime
        .block_on(count_rows(&dir.path().join("db.sqlite")))?;
    let consistent = newest == expected.as_str()
        && u64::try_from(inquiries) == Ok(accepted)
        && messages == inquiries;
    println!(
        "durability: the daemon answered 202 {accepted} time(s) (warm-up included); newest inquiry via the API \
         {newest} (expected {expected}); after shutdown the store holds {inquiries} inquiries / {messages} messages -> {}",
        if consistent { "OK" } else { "MISMATCH" }
    );
    match stop {
        Ok(status) if status.success() => println!("daemon exited cleanly on SIGTERM"),
        Ok(status) => println!("daemon exited with {status} on SIGTERM"),
        Err(e) => println!("daemon: {e:#}"),
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    if !logged.trim().is_empty() {
        println!(
            "daemon log (RUST_LOG=warn) has {} line(s); the last ones:\n{}",
            logged.lines().count(),
            log_tail(&log, 10)
        );
    }
    // `bare` and `sink` are killed by their guards from here on.
    Ok(())
}

fn print_summary(results: &[(Measurement, Measurement)]) {
    let median = |f: &dyn Fn(&(Measurement, Measurement)) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    println!("summary (median of {} rounds)", results.len());
    println!(
        "  bare    {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        median(&|r| r.0.rps),
        median(&|r| r.0.p50_ms),
        median(&|r| r.0.p99_ms)
    );
    println!(
        "  daemon  {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        median(&|r| r.1.rps),
        median(&|r| r.1.p50_ms),
        median(&|r| r.1.p99_ms)
    );
    println!("  ratio daemon/bare {:.3}", median(&|r| r.1.rps / r.0.rps));
}

async fn count_rows(db: &Path) -> anyhow::Result<(i64, i64)> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await?;
    let inquiries = sqlx::query_scalar("SELECT COUNT(*) FROM inquiries")
        .fetch_one(&mut conn)
        .await?;
    let messages = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(&mut conn)
        .await?;
    Ok((inquiries, messages))
}
