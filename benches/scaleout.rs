//! Scale-out benchmark: signed-webhook intake throughput of the real daemon
//! on SQLite (one instance, the embedded default) and on one local
//! PostgreSQL with 1, 2 and 3 instances sharing a database, in one run.
//!
//! Run with `cargo bench --bench scaleout`. Everything runs on loopback:
//!
//! - **sqlite-1**: one release `switchboard` with a fresh SQLite file.
//! - **pg-1**, **pg-2**, **pg-3**: 1, 2 or 3 instances (each with its own
//!   `[cluster] instance` name and port) on a fresh database of one
//!   PostgreSQL server, started by `scripts/postgres.sh` in a temp folder
//!   (`fsync = on`, `synchronous_commit = on`).
//!
//! All targets run for the whole bench and get the same channel, `bench`,
//! whose `reply_url` is one shared sink (this executable as `--serve-sink
//! <port>`), so acknowledgements are really dispatched. The load generator
//! (this process, see `benches/support`) holds `SCALEOUT_CONNECTIONS`
//! keep-alive connections per measurement, spread round-robin over the
//! target's instances (connection `c` goes to instance `c % n`), each
//! sending unique signed webhooks in a closed loop. Targets are measured in
//! interleaved rounds (the order rotates by one each round). Only 202s
//! count as successes and only their latency is recorded. Before each
//! measurement the bench waits until no target has pending outbox entries.
//!
//! After the rounds each target is checked: every 202 must be exactly one
//! message and one inquiry in its database, with no message the bench did
//! not get a 202 for and no duplicate.
//!
//! Knobs (environment): `SCALEOUT_ROUNDS` (3), `SCALEOUT_SECS` per target
//! and round (5), `SCALEOUT_CONNECTIONS` (64, in total per measurement),
//! `SCALEOUT_WARMUP_SECS` (1), `SCALEOUT_SETTLE_SECS` (60).

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use support::{
    ChildGuard, DaemonMetrics, LoadStats, cpu_seconds, env_var, free_port, log_tail, median,
    percentile_ms, run_load, settle, sink_count, spawn_daemon, spawn_helper, wait_ready,
    write_daemon_config,
};

fn main() -> anyhow::Result<()> {
    if let Some(result) = support::helper_main() {
        return result;
    }
    bench(Knobs::from_env())
}

struct Knobs {
    rounds: usize,
    duration: Duration,
    connections: usize,
    warmup: Duration,
    settle_limit: Duration,
}

impl Knobs {
    fn from_env() -> Self {
        Knobs {
            rounds: env_var("SCALEOUT_ROUNDS", 3usize).max(1),
            duration: Duration::from_secs_f64(env_var("SCALEOUT_SECS", 5.0)),
            connections: env_var("SCALEOUT_CONNECTIONS", 64usize).max(1),
            warmup: Duration::from_secs_f64(env_var("SCALEOUT_WARMUP_SECS", 1.0)),
            settle_limit: Duration::from_secs_f64(env_var("SCALEOUT_SETTLE_SECS", 60.0)),
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A PostgreSQL server of its own (`scripts/postgres.sh`), stopped on drop.
struct PgServer {
    dir: PathBuf,
    admin_url: String,
}

impl PgServer {
    /// `dir` must not exist yet; its parent must be traversable by the
    /// `postgres` user when we are root.
    fn start(dir: &Path) -> anyhow::Result<PgServer> {
        let port = free_port()?;
        let out = postgres_script(&["start", &dir.display().to_string(), &port.to_string()])?;
        Ok(PgServer {
            dir: dir.to_path_buf(),
            admin_url: String::from_utf8(out)?.trim().to_owned(),
        })
    }

    /// Creates an empty database; returns its URL.
    fn create_database(&self, name: &str) -> anyhow::Result<String> {
        psql(&self.admin_url, &format!("CREATE DATABASE {name}"))?;
        let base = self
            .admin_url
            .rsplit_once('/')
            .context("admin URL without a database")?
            .0;
        // Plain text, as in the results before the test server offered TLS
        // (session 7), so the figures stay comparable.
        Ok(format!("{base}/{name}?sslmode=disable"))
    }

    /// CPU seconds used so far by each process of the server (postmaster
    /// and its children: backends, WAL writer, checkpointer, …).
    fn cpu_by_pid(&self) -> HashMap<u32, f64> {
        let mut out = HashMap::new();
        let Some(postmaster) = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return out;
        };
        if let Some(cpu) = cpu_seconds(&postmaster.to_string()) {
            out.insert(postmaster, cpu);
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if parent_pid(pid) == Some(postmaster)
                && let Some(cpu) = cpu_seconds(&pid.to_string())
            {
                out.insert(pid, cpu);
            }
        }
        out
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = postgres_script(&["stop", &self.dir.display().to_string()]);
    }
}

fn postgres_script(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
    let out = Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .context("cannot run scripts/postgres.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/postgres.sh {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Runs one SQL statement with `psql`; returns its unaligned output.
fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql])
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state, then ppid.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds between two snapshots of a process group; a process that
/// appeared in between counts from zero, one that exited is lost.
fn cpu_delta(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

enum Store {
    Sqlite(PathBuf),
    Postgres(String),
}

struct Instance {
    guard: ChildGuard,
    addr: SocketAddr,
    pid: String,
    log: PathBuf,
}

struct Target {
    name: String,
    store: Store,
    instances: Vec<Instance>,
    addrs: Vec<SocketAddr>,
    /// Provider message ids that were answered 202.
    accepted: HashSet<String>,
    /// Every 202 (a duplicate id would make this exceed `accepted.len()`).
    accepted_total: u64,
}

impl Target {
    fn start(
        name: &str,
        store: Store,
        instances: usize,
        base: &Path,
        sink_port: u16,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Target> {
        let (url, cluster) = match &store {
            Store::Sqlite(path) => (format!("sqlite://{}", path.display()), false),
            Store::Postgres(url) => (url.clone(), true),
        };
        let mut target = Target {
            name: name.to_owned(),
            store,
            instances: Vec::new(),
            addrs: Vec::new(),
            accepted: HashSet::new(),
            accepted_total: 0,
        };
        // One after the other: the first one migrates the fresh database.
        for i in 0..instances {
            let dir = base.join(format!("{name}-{i}"));
            std::fs::create_dir_all(&dir)?;
            let port = free_port()?;
            let extra = if cluster {
                format!("\n[cluster]\ninstance = \"{name}-{i}\"\n")
            } else {
                String::new()
            };
            let config = write_daemon_config(&dir, port, sink_port, &url, &extra)?;
            let log = dir.join("daemon.log");
            let mut guard = spawn_daemon(&config, &log)?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            runtime.block_on(wait_ready(addr, &mut guard, Some(&log)))?;
            target.instances.push(Instance {
                pid: guard.child.id().to_string(),
                guard,
                addr,
                log,
            });
            target.addrs.push(addr);
        }
        Ok(target)
    }

    fn cpu(&self) -> f64 {
        self.instances
            .iter()
            .map(|i| cpu_seconds(&i.pid).unwrap_or(f64::NAN))
            .sum()
    }

    async fn metrics(&self) -> anyhow::Result<Vec<DaemonMetrics>> {
        let mut out = Vec::new();
        for i in &self.instances {
            out.push(DaemonMetrics::fetch(i.addr).await?);
        }
        Ok(out)
    }

    /// Loads the target for `duration` with ids `<prefix>-<connection>-<seq>`.
    fn load(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        connections: usize,
        duration: Duration,
        prefix: &str,
    ) -> (LoadStats, Duration) {
        let (stats, wall) = runtime.block_on(run_load(&self.addrs, connections, duration, prefix));
        for (connection, seq) in &stats.accepted {
            self.accepted.insert(format!("{prefix}-{connection}-{seq}"));
        }
        self.accepted_total += stats.accepted.len() as u64;
        (stats, wall)
    }

    /// Counts what the store holds after the instances have stopped.
    fn durability(&self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<StoreCounts> {
        match &self.store {
            Store::Sqlite(path) => runtime.block_on(sqlite_counts(path)),
            Store::Postgres(url) => {
                let line = psql(
                    url,
                    "SELECT (SELECT COUNT(*) FROM inquiries), \
                            (SELECT COUNT(DISTINCT reference) FROM inquiries), \
                            (SELECT COUNT(*) FROM messages), \
                            (SELECT COUNT(DISTINCT inquiry_id) FROM messages)",
                )?;
                let n: Vec<i64> = line
                    .trim()
                    .split('|')
                    .map(|v| v.parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("unexpected psql output {line:?}"))?;
                let ids = psql(url, "SELECT provider_id FROM messages")?
                    .lines()
                    .map(str::to_owned)
                    .collect();
                Ok(StoreCounts {
                    inquiries: n[0],
                    references: n[1],
                    messages: n[2],
                    inquiries_with_messages: n[3],
                    provider_ids: ids,
                })
            }
        }
    }
}

struct StoreCounts {
    inquiries: i64,
    references: i64,
    messages: i64,
    inquiries_with_messages: i64,
    provider_ids: Vec<String>,
}

async fn sqlite_counts(db: &Path) -> anyhow::Result<StoreCounts> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await?;
    let (inquiries, references): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT reference) FROM inquiries")
            .fetch_one(&mut conn)
            .await?;
    let (messages, inquiries_with_messages): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT inquiry_id) FROM messages")
            .fetch_one(&mut conn)
            .await?;
    let provider_ids = sqlx::query_scalar("SELECT provider_id FROM messages")
        .fetch_all(&mut conn)
        .await?;
    Ok(StoreCounts {
        inquiries,
        references,
        messages,
        inquiries_with_messages,
        provider_ids,
    })
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Measurement {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

struct Rig {
    runtime: tokio::runtime::Runtime,
    pg: PgServer,
    sink: SocketAddr,
    sink_pid: String,
    targets: Vec<Target>,
    run_id: u32,
}

impl Rig {
    /// Waits until no target has pending acknowledgements, so delivery
    /// left over from one measurement does not run during the next.
    fn settle_all(&self, limit: Duration) -> anyhow::Result<()> {
        for t in &self.targets {
            let (waited, backlog, drained) =
                self.runtime.block_on(settle(t.instances[0].addr, limit))?;
            if backlog > 0.0 {
                println!(
                    "  ({}: {backlog} pending acknowledgement(s) {} in {:.1} s before this measurement)",
                    t.name,
                    if drained { "drained" } else { "NOT drained" },
                    waited.as_secs_f64()
                );
            }
        }
        Ok(())
    }

    fn measure(&mut self, t: usize, round: usize, knobs: &Knobs) -> anyhow::Result<Measurement> {
        self.settle_all(knobs.settle_limit)?;
        let target = &self.targets[t];
        let metrics_before = self.runtime.block_on(target.metrics())?;
        let acks_before = self.runtime.block_on(sink_count(self.sink))?;
        let others_cpu = |rig: &Rig| -> f64 {
            rig.targets
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != t)
                .map(|(_, o)| o.cpu())
                .sum()
        };
        let cpu_before = (
            target.cpu(),
            self.pg.cpu_by_pid(),
            cpu_seconds("self").unwrap_or(f64::NAN),
            cpu_seconds(&self.sink_pid).unwrap_or(f64::NAN),
            others_cpu(self),
        );

        let prefix = format!("{}-r{round}-{}", self.run_id, self.targets[t].name);
        let runtime = &self.runtime;
        let (mut stats, wall) =
            self.targets[t].load(runtime, knobs.connections, knobs.duration, &prefix);

        let target = &self.targets[t];
        let cpu_after = (
            target.cpu(),
            self.pg.cpu_by_pid(),
            cpu_seconds("self").unwrap_or(f64::NAN),
            cpu_seconds(&self.sink_pid).unwrap_or(f64::NAN),
            others_cpu(self),
        );
        let metrics_after = self.runtime.block_on(target.metrics())?;
        let acks_after = self.runtime.block_on(sink_count(self.sink))?;

        stats.latencies_us.sort_unstable();
        let ok = stats.latencies_us.len() as u64;
        let secs = wall.as_secs_f64();
        let m = Measurement {
            rps: ok as f64 / secs,
            p50_ms: percentile_ms(&stats.latencies_us, 0.50),
            p99_ms: percentile_ms(&stats.latencies_us, 0.99),
        };
        let n = target.instances.len();
        let mut per_instance = vec![0u64; n];
        for (connection, _) in &stats.accepted {
            per_instance[*connection as usize % n] += 1;
        }
        println!(
            "round {round}  {:<8}  {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  202s {ok:>6}  errors {}",
            target.name,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            percentile_ms(&stats.latencies_us, 1.0),
            stats.describe_errors(),
        );
        if n > 1 {
            let split: Vec<String> = per_instance
                .iter()
                .map(|k| format!("{:.0}", *k as f64 / secs))
                .collect();
            println!(
                "                  per instance req/s: {}",
                split.join(" / ")
            );
        }
        let server_cpu = cpu_after.0 - cpu_before.0;
        let pg_cpu = cpu_delta(&cpu_before.1, &cpu_after.1);
        println!(
            "                  cpu (cores): instances {:.2} ({:.0} µs/request), postgres {:.2}, load generator {:.2}, sink {:.2}, idle targets {:.2}",
            server_cpu / secs,
            server_cpu * 1e6 / ok.max(1) as f64,
            pg_cpu / secs,
            (cpu_after.2 - cpu_before.2) / secs,
            (cpu_after.3 - cpu_before.3) / secs,
            (cpu_after.4 - cpu_before.4) / secs,
        );
        let (mut commits, mut jobs, mut pending) = (0.0, 0.0, 0.0);
        for (a, b) in metrics_after.iter().zip(&metrics_before) {
            commits += a.batch_count - b.batch_count;
            jobs += a.batch_sum - b.batch_sum;
            pending = a.outbox_pending;
        }
        println!(
            "                  store: {:.0} group commits/s, avg {:.1} jobs each; outbox: {} acks delivered, {pending} pending at the end",
            commits / secs,
            jobs / commits.max(1.0),
            acks_after - acks_before,
        );
        Ok(m)
    }
}

fn bench(knobs: Knobs) -> anyhow::Result<()> {
    let base = tempfile::Builder::new().prefix("scaleout-").tempdir()?;
    // The PostgreSQL server runs as `postgres` when we are root: it must
    // be able to reach its folder inside ours.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let (mut sink, sink_port) = spawn_helper("sink", "--serve-sink")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let sink_addr = SocketAddr::from(([127, 0, 0, 1], sink_port));
    runtime.block_on(wait_ready(sink_addr, &mut sink, None))?;
    let pg = PgServer::start(&base.path().join("pg"))?;
    let pg_version = psql(&pg.admin_url, "SHOW server_version")?;

    let mut targets = Vec::new();
    targets.push(Target::start(
        "sqlite-1",
        Store::Sqlite(base.path().join("sqlite-1.sqlite")),
        1,
        base.path(),
        sink_port,
        &runtime,
    )?);
    for n in 1..=3 {
        let name = format!("pg-{n}");
        let url = pg.create_database(&format!("scaleout_pg{n}"))?;
        targets.push(Target::start(
            &name,
            Store::Postgres(url),
            n,
            base.path(),
            sink_port,
            &runtime,
        )?);
    }
    let mut rig = Rig {
        runtime,
        pg,
        sink: sink_addr,
        sink_pid: sink.child.id().to_string(),
        targets,
        run_id: std::process::id(),
    };

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "scale-out bench: {} round(s) × {:?} per target, {} keep-alive connections per measurement \
         (round-robin over the target's instances), {cores} core(s), warm-up {:?}",
        knobs.rounds, knobs.duration, knobs.connections, knobs.warmup
    );
    println!("  daemon   = {}", env!("CARGO_BIN_EXE_switchboard"));
    println!(
        "  postgres = PostgreSQL {} at {} (one server, one fresh database per target)",
        pg_version.trim(),
        rig.pg.admin_url
    );
    for t in &rig.targets {
        let ports: Vec<String> = t.addrs.iter().map(|a| a.port().to_string()).collect();
        println!(
            "  {:<8} = {} instance(s), port(s) {}",
            t.name,
            t.instances.len(),
            ports.join(", ")
        );
    }

    if !knobs.warmup.is_zero() {
        for t in 0..rig.targets.len() {
            let prefix = format!("{}-warmup-{}", rig.run_id, rig.targets[t].name);
            let runtime = &rig.runtime;
            rig.targets[t].load(runtime, knobs.connections, knobs.warmup, &prefix);
        }
    }

    let count = rig.targets.len();
    let mut results: Vec<Vec<Measurement>> = Vec::new();
    println!();
    for round in 1..=knobs.rounds {
        let mut row = vec![None; count];
        // Rotate the order by one each round.
        for k in 0..count {
            let t = (k + round - 1) % count;
            row[t] = Some(rig.measure(t, round, &knobs)?);
        }
        let row: Vec<Measurement> = row.into_iter().map(|m| m.expect("measured")).collect();
        let ratios: Vec<String> = rig
            .targets
            .iter()
            .zip(&row)
            .skip(1)
            .map(|(t, m)| {
                format!(
                    "{} {:.2}× sqlite / {:.2}× pg-1",
                    t.name,
                    m.rps / row[0].rps,
                    m.rps / row[1].rps
                )
            })
            .collect();
        println!("round {round}  ratios: {}\n", ratios.join(", "));
        results.push(row);
    }

    print_table(&rig.targets, &results);

    // Durability, per target: settle the outbox, stop the instances
    // cleanly, then compare the store with the 202s.
    rig.settle_all(knobs.settle_limit)?;
    let mut all_ok = true;
    println!();
    for t in &mut rig.targets {
        // Which instance holds the routing-leader lease (`acquired_at`:
        // its last takeover, in ms since the epoch).
        if let Store::Postgres(url) = &t.store {
            let holder = psql(
                url,
                "SELECT holder || ' (since ' || acquired_at || ')' FROM leases WHERE name = 'router'",
            )?;
            println!("routing leader of {}: {}", t.name, holder.trim());
        }
        let mut stops = Vec::new();
        for i in &mut t.instances {
            stops.push(i.guard.terminate(Duration::from_secs(20)));
        }
        let counts = t.durability(&rig.runtime)?;
        let in_store: HashSet<&str> = counts.provider_ids.iter().map(String::as_str).collect();
        let lost = t
            .accepted
            .iter()
            .filter(|id| !in_store.contains(id.as_str()))
            .count();
        let unexpected = in_store
            .iter()
            .filter(|id| !t.accepted.contains(**id))
            .count();
        let ok = lost == 0
            && unexpected == 0
            && t.accepted_total == t.accepted.len() as u64
            && counts.provider_ids.len() == in_store.len()
            && u64::try_from(counts.inquiries) == Ok(t.accepted_total)
            && counts.messages == counts.inquiries
            && counts.references == counts.inquiries
            && counts.inquiries_with_messages == counts.inquiries;
        all_ok &= ok;
        println!(
            "durability {:<8}: {} × 202 ({} distinct ids); store: {} inquiries ({} distinct references), \
             {} messages ({} distinct provider ids, on {} inquiries); 202s missing from the store {lost}, \
             messages without a 202 {unexpected} -> {}",
            t.name,
            t.accepted_total,
            t.accepted.len(),
            counts.inquiries,
            counts.references,
            counts.messages,
            in_store.len(),
            counts.inquiries_with_messages,
            if ok { "OK" } else { "MISMATCH" }
        );
        for (i, stop) in stops.into_iter().enumerate() {
            match stop {
                Ok(status) if status.success() => {}
                Ok(status) => println!("  {}-{i} exited with {status} on SIGTERM", t.name),
                Err(e) => println!("  {}-{i}: {e:#}", t.name),
            }
        }
        for (i, instance) in t.instances.iter().enumerate() {
            let logged = std::fs::read_to_string(&instance.log).unwrap_or_default();
            if !logged.trim().is_empty() {
                println!(
                    "  {}-{i} log (RUST_LOG=warn) has {} line(s); the last ones:\n{}",
                    t.name,
                    logged.lines().count(),
                    log_tail(&instance.log, 5)
                );
            }
        }
    }
    if !all_ok {
        bail!("durability check failed");
    }
    Ok(())
}

/// Per-round and median figures as a Markdown table (for BENCHMARKS.md).
fn print_table(targets: &[Target], results: &[Vec<Measurement>]) {
    println!(
        "| round | target | instances | req/s | p50 | p99 | vs sqlite-1 | vs pg-1 |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for (r, row) in results.iter().enumerate() {
        for (t, m) in targets.iter().zip(row) {
            println!(
                "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.2} |",
                r + 1,
                t.name,
                t.instances.len(),
                m.rps,
                m.p50_ms,
                m.p99_ms,
                m.rps / row[0].rps,
                m.rps / row[1].rps
            );
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let col = |f: &dyn Fn(&Vec<Measurement>) -> f64| median(results.iter().map(f).collect());
        println!(
            "| **median** | **{}** | {} | **{:.0}** | **{:.2} ms** | **{:.2} ms** | **{:.2}** | **{:.2}** |",
            t.name,
            t.instances.len(),
            col(&|row| row[i].rps),
            col(&|row| row[i].p50_ms),
            col(&|row| row[i].p99_ms),
            col(&|row| row[i].rps / row[0].rps),
            col(&|row| row[i].rps / row[1].rps),
        );
    }
}
