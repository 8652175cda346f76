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
//! drain before a measurement), `SWITCHBOARD_BENCH_BIN` (another daemon
//! binary, for before/after runs), `INTAKE_STORE` (1; 0 skips the last
//! phase, which commits the same intakes through `Store::intake` in this
//! process, without HTTP, rules, routing or acknowledgements, to show how
//! much of the daemon's time its store takes).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use axum::http::StatusCode;

use support::{
    DaemonMetrics, LoadStats, OPS_TOKEN, cpu_seconds, disk_write_bytes, env_var, free_port,
    http_get, log_tail, median, percentile_ms, run_load, settle, sink_count, spawn_daemon,
    spawn_helper, wait_ready, write_daemon_config,
};

fn main() -> anyhow::Result<()> {
    if let Some(result) = support::helper_main() {
        return result;
    }
    bench(Knobs::from_env())
}

// ---------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------

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
    /// Also measure the store alone, in this process (`INTAKE_STORE`, 1).
    store_phase: bool,
}

impl Knobs {
    fn from_env() -> Self {
        Knobs {
            rounds: env_var("INTAKE_ROUNDS", 3usize).max(1),
            duration: Duration::from_secs_f64(env_var("INTAKE_SECS", 5.0)),
            connections: env_var("INTAKE_CONNECTIONS", 64usize).max(1),
            warmup: Duration::from_secs_f64(env_var("INTAKE_WARMUP_SECS", 1.0)),
            settle_limit: Duration::from_secs_f64(env_var("INTAKE_SETTLE_SECS", 60.0)),
            store_phase: env_var("INTAKE_STORE", 1u8) != 0,
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
            &[self.addr(target)],
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
        let disk_before = disk_write_bytes(&self.daemon_pid);
        let cpu_before = self.cpu(target);
        let (mut stats, wall) = self.load(target, knobs.duration, &format!("r{round}"));
        let cpu_after = self.cpu(target);
        let disk_after = disk_write_bytes(&self.daemon_pid);

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
            let disk = match (disk_before, disk_after) {
                (Some(b), Some(a)) => format!(
                    "{:.1} KiB",
                    a.saturating_sub(b) as f64 / 1024.0 / ok.max(1) as f64
                ),
                _ => "?".into(),
            };
            println!(
                "                store: {:.0} group commits/s, avg {avg_batch:.1} jobs each, {disk} written to disk per request; \
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
    let store_url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let config = write_daemon_config(dir.path(), daemon_port, sink_port, &store_url, "")?;
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
        support::daemon_binary().display(),
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
    if knobs.store_phase {
        store_alone(&knobs, dir.path(), &results)?;
    }

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
    // Steadier than a round's CPU per request, which leaves out the
    // acknowledgements still queued when the round ends: by now every
    // inquiry has been committed, routed and acknowledged.
    if let Some(cpu) = cpu_seconds(&rig.daemon_pid) {
        println!(
            "daemon CPU over the whole run, everything included (intake, routing, acknowledgements): \
             {:.0} µs per inquiry",
            cpu * 1e6 / rig.daemon_accepted.max(1) as f64
        );
    }

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
    let median =
        |f: &dyn Fn(&(Measurement, Measurement)) -> f64| median(results.iter().map(f).collect());
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

// ---------------------------------------------------------------------------
// The store alone
// ---------------------------------------------------------------------------

/// Where the daemon's time goes, coarsely: the same intakes committed
/// through `Store::intake` in this process (its own store, two runtime
/// workers like the daemon's), with no HTTP, rules, routing or
/// acknowledgement delivery. Closed loop, `connections` tasks.
fn store_alone(
    knobs: &Knobs,
    dir: &Path,
    results: &[(Measurement, Measurement)],
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("store-alone")
        .enable_all()
        .build()?;
    let config = switchboard::config::StoreConfig {
        url: format!("sqlite://{}", dir.join("alone.sqlite").display()),
        ..switchboard::config::StoreConfig::default()
    };
    let store = runtime.block_on(switchboard::store::Store::open(&config))?;
    println!();
    println!(
        "store alone: Store::intake in this process from {} tasks (inquiry, message, events, outbox entry; \
         no HTTP, rules, routing or acknowledgements)",
        knobs.connections
    );
    let mut rates = Vec::new();
    for round in 1..=knobs.rounds {
        let before = thread_cpu();
        let (mut latencies_us, wall) =
            runtime.block_on(store_load(&store, knobs.connections, knobs.duration, round));
        let after = thread_cpu();
        latencies_us.sort_unstable();
        let n = latencies_us.len().max(1) as f64;
        let per = |name: &str| {
            let used =
                after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
            used * 1e6 / n
        };
        let rate = n / wall.as_secs_f64();
        rates.push(rate);
        println!(
            "round {round}  store   {rate:>8.0} intakes/s  p50 {:>6.2} ms  p99 {:>6.2} ms; \
             CPU per intake: writer {:.0} µs, syncer {:.0} µs, runtime {:.0} µs",
            percentile_ms(&latencies_us, 0.50),
            percentile_ms(&latencies_us, 0.99),
            per("switchboard-wri"),
            per("switchboard-syn"),
            per("store-alone"),
        );
    }
    let store_median = median(rates);
    println!(
        "  store alone {store_median:.0} intakes/s (median); the daemon reached {:.0} % of it",
        100.0 * median(results.iter().map(|r| r.1.rps).collect()) / store_median
    );
    runtime.block_on(store.close());
    Ok(())
}

async fn store_load(
    store: &std::sync::Arc<switchboard::store::Store>,
    tasks: usize,
    duration: Duration,
    round: usize,
) -> (Vec<u32>, Duration) {
    let start = std::time::Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..tasks {
        let store = store.clone();
        set.spawn(async move {
            let mut latencies = Vec::new();
            for seq in 0u64.. {
                let t = std::time::Instant::now();
                if t >= deadline {
                    break;
                }
                store
                    .intake(bench_intake(round, c, seq))
                    .await
                    .expect("the store commits");
                latencies.push(t.elapsed().as_micros() as u32);
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(done) = set.join_next().await {
        all.extend(done.expect("a load task finishes"));
    }
    (all, start.elapsed())
}

/// What the generic channel makes of the load generator's webhook.
fn bench_intake(round: usize, connection: usize, seq: u64) -> switchboard::store::Intake {
    use switchboard::inquiry::{Adapter, ChannelId, Customer, Medium, NewMessage, ThreadHints};
    switchboard::store::Intake {
        message: NewMessage {
            channel: ChannelId::new(Adapter::Generic, "bench"),
            medium: Medium::Generic,
            provider_id: format!("alone-{round}-{connection}-{seq}"),
            customer: Customer {
                name: Some(format!("Bench Customer {connection}")),
                ..Customer::default()
            },
            customer_key: None,
            subject: None,
            text: support::message_text(seq),
            language: None,
            thread: ThreadHints::default(),
            attachments: Vec::new(),
            metadata: serde_json::json!({}),
            reply_context: serde_json::Value::Null,
            no_ack_reason: None,
            received_at: chrono::Utc::now(),
        },
        ack: switchboard::store::AckPlan::Send {
            template: "ack".into(),
            language: "en".into(),
        },
        classification: switchboard::store::Classified::default(),
        reopen_window: Duration::ZERO,
    }
}

/// CPU seconds of this process's threads, summed by thread name.
fn thread_cpu() -> std::collections::HashMap<String, f64> {
    let mut by_name = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Some(cpu)) = (
            std::fs::read_to_string(path.join("comm")),
            path.file_name()
                .and_then(|tid| cpu_seconds(&format!("self/task/{}", tid.to_string_lossy()))),
        ) else {
            continue;
        };
        *by_name.entry(comm.trim().to_owned()).or_insert(0.0) += cpu;
    }
    by_name
}
