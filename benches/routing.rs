//! Routing benchmark: decision time with a large roster, beside a naive
//! linear scan measured in the same run, accept/resolve with backfill, and
//! the daemon's memory with a large roster and many open inquiries.
//!
//! Run with `cargo bench --bench routing`.
//!
//! 1. **Decisions**: 10,000 associates with 50 skills (each has 3–6 of them
//!    at levels 1–5), 10 teams, two languages, 80 % available; 1,000
//!    inquiries wait in the queue (they need rare skill combinations), and
//!    a further 5,000 hold offers. Each measured decision routes a typical
//!    new inquiry (1–2 skills at level 2–4, a team half of the time, a
//!    language half of the time) with the engine's bitset path (which also
//!    builds the explanation) and with the naive scan that checks every
//!    associate one by one; the two are interleaved and must agree.
//! 2. **Accept / resolve**: accepting an offer, and resolving the work,
//!    which backfills the freed capacity from the 1,000 waiting.
//! 3. **Memory** (`ROUTING_BENCH_MEMORY=0` skips it): a store with 100,000
//!    open inquiries and a roster of 10,000 associates; the release daemon
//!    starts on it, rebuilds the router, and its resident memory (VmRSS)
//!    and peak (VmHWM) are read from /proc once it has settled.
//!
//! Knobs: `ROUTING_DECISIONS` (2000), `ROUTING_OPEN` (100000).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard::inquiry::{Medium, Urgency};
use switchboard::routing::engine::{Engine, NewWork, Snapshot};
use switchboard::routing::roster::{Associate, Capacity, NotifyVia, Roster};
use switchboard::routing::{Presence, RelaxStep, Requirements, RoutingConfig};

const ASSOCIATES: usize = 10_000;
const SKILLS: usize = 50;
const TEAMS: usize = 10;
const WAITING: usize = 1_000;
const OFFERED: usize = 5_000;

fn main() -> anyhow::Result<()> {
    let decisions = env_usize("ROUTING_DECISIONS", 2_000);
    let open = env_usize("ROUTING_OPEN", 100_000);
    let mut rng = fastrand::Rng::with_seed(42);
    let roster = Arc::new(Roster::from_associates(
        (0..ASSOCIATES).map(|i| associate(i, &mut rng)).collect(),
    ));
    decision_bench(roster.clone(), decisions, &mut rng)?;
    engine_memory(roster.clone(), open, &mut rng);
    if std::env::var("ROUTING_BENCH_MEMORY").as_deref() != Ok("0") {
        memory_bench(open)?;
    }
    Ok(())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn skill(i: usize) -> String {
    format!("skill{i:02}")
}

fn associate(i: usize, rng: &mut fastrand::Rng) -> Associate {
    let mut skills = BTreeMap::new();
    for _ in 0..rng.usize(3..=6) {
        skills.insert(skill(rng.usize(0..SKILLS)), rng.u8(1..=5));
    }
    let languages = match rng.u8(0..3) {
        0 => vec!["de".to_owned()],
        1 => vec!["en".to_owned()],
        _ => vec!["de".to_owned(), "en".to_owned()],
    };
    Associate {
        id: format!("a{i:05}"),
        name: format!("Associate {i}"),
        email: format!("a{i}@bank.example"),
        chat: None,
        team: Some(format!("team{}", rng.usize(0..TEAMS))),
        languages,
        skills,
        capacity: Capacity {
            email: 4,
            sms: 2,
            voice: 1,
            chat: 2,
            generic: 3,
        },
        hours: None,
        hours_name: None,
        notify: NotifyVia::None,
        token_hash: None,
    }
}

fn typical(id: i64, rng: &mut fastrand::Rng, now: i64) -> NewWork {
    let mut skills = BTreeMap::new();
    for _ in 0..rng.usize(1..=2) {
        skills.insert(skill(rng.usize(0..SKILLS)), rng.u8(2..=4));
    }
    NewWork {
        id,
        medium: Medium::Generic,
        urgency: [
            Urgency::Critical,
            Urgency::High,
            Urgency::Normal,
            Urgency::Low,
        ][rng.usize(0..4)],
        customer_key: Some(format!("email:c{}@example.org", rng.usize(0..50_000))),
        requirements: Requirements {
            skills: skills.into_iter().collect(),
            language: rng.bool().then(|| ["de", "en"][rng.usize(0..2)].into()),
            queue: rng
                .bool()
                .then(|| format!("team{}", rng.usize(0..TEAMS)).into()),
            relaxation: ladder().into(),
            rules: vec!["topic".into()].into(),
            tags: Vec::new().into(),
        },
        sla_due: Some(now + 3_600_000),
        waiting_since: now,
    }
}

/// Work almost nobody qualifies for: it waits.
fn rare(id: i64, rng: &mut fastrand::Rng, now: i64) -> NewWork {
    let mut w = typical(id, rng, now);
    w.requirements.skills = (0..3).map(|_| (skill(rng.usize(0..SKILLS)), 5)).collect();
    w.requirements.queue = Some(format!("team{}", rng.usize(0..TEAMS)).into());
    w
}

fn ladder() -> Vec<RelaxStep> {
    vec![
        RelaxStep {
            name: "any-language".into(),
            after: Duration::from_secs(600),
            drop_language: true,
            lower_skill_levels: 0,
            drop_skills: false,
        },
        RelaxStep {
            name: "one-level-lower".into(),
            after: Duration::from_secs(1800),
            drop_language: true,
            lower_skill_levels: 1,
            drop_skills: false,
        },
    ]
}

fn decision_bench(
    roster: Arc<Roster>,
    decisions: usize,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<()> {
    let now = 1_800_000_000_000;
    let config = RoutingConfig {
        initial_presence: Presence::Available,
        ..RoutingConfig::default()
    };
    let mut engine = Engine::new(config, roster.clone(), Snapshot::default(), now);
    for (i, a) in roster.associates.iter().enumerate() {
        if i % 5 == 0 {
            let _ = engine.set_presence(&a.id, Presence::Away, now);
        }
    }
    let mut id = 0i64;
    let started = Instant::now();
    while engine.waiting_count() < WAITING {
        id += 1;
        engine.add(rare(id, rng, now), now);
        if id > 1_000_000 {
            bail!("could not fill the queue");
        }
    }
    let mut offered = Vec::new();
    while offered.len() < OFFERED {
        id += 1;
        engine.add(typical(id, rng, now), now);
        if engine.holder(id).is_some() {
            offered.push(id);
        }
    }
    println!(
        "setup: {ASSOCIATES} associates, {SKILLS} skills, {} waiting, {} offered ({} ms)",
        engine.waiting_count(),
        offered.len(),
        started.elapsed().as_millis()
    );

    let mut fast = Vec::with_capacity(decisions);
    let mut naive = Vec::with_capacity(decisions);
    let mut found = 0;
    for _ in 0..decisions {
        id += 1;
        let work = typical(id, rng, now);
        let t = Instant::now();
        let decision = engine.decide(&work, now);
        fast.push(t.elapsed());
        let t = Instant::now();
        let slow = engine.decide_naive(&work, now);
        naive.push(t.elapsed());
        if decision.winner != slow {
            bail!(
                "fast and naive disagree on {work:?}: {:?} vs {slow:?}",
                decision.winner
            );
        }
        found += usize::from(slow.is_some());
    }
    println!("\nrouting decision ({decisions} new inquiries, {found} found someone):");
    report("bitset + explanation", &mut fast);
    report("naive linear scan", &mut naive);
    println!(
        "  ratio of medians (naive / bitset): {:.1}x",
        median(&naive).as_secs_f64() / median(&fast).as_secs_f64()
    );

    let mut accepts = Vec::new();
    let mut resolves = Vec::new();
    let mut backfilled = 0usize;
    for &work in offered.iter().take(decisions.min(offered.len())) {
        let who = engine.holder(work).context("offered")?.to_owned();
        let t = Instant::now();
        engine
            .accept(work, &who, now + 1)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        accepts.push(t.elapsed());
        let t = Instant::now();
        let effects = engine
            .resolve(work, Some(&who), None, now + 2)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        resolves.push(t.elapsed());
        backfilled += effects
            .iter()
            .filter(|e| matches!(e, switchboard::routing::Effect::Offer { .. }))
            .count();
    }
    println!(
        "\naccept and resolve ({} each; {} waiting; resolves offered {backfilled} waiting inquiries):",
        accepts.len(),
        engine.waiting_count()
    );
    report("accept", &mut accepts);
    report("resolve + backfill", &mut resolves);
    Ok(())
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn report(what: &str, v: &mut [Duration]) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    println!(
        "  {what:<22} p50 {:>8.1} µs   p99 {:>8.1} µs   max {:>8.1} µs",
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

/// The router's own share: an engine restored with `open` waiting
/// inquiries, measured as the growth of this process's resident memory.
fn engine_memory(roster: Arc<Roster>, open: usize, rng: &mut fastrand::Rng) {
    let now = 1_800_000_000_000;
    let before = proc_memory(std::process::id()).map(|m| m.0).unwrap_or(0);
    // Built as the store does: row by row.
    let mut snapshot = Snapshot::default();
    for i in 1..=open as i64 {
        snapshot.add(switchboard::routing::engine::RestoredWork {
            work: rare(i, rng, now),
            status: switchboard::inquiry::Status::Open,
            assignee: None,
            open_offer: None,
            declined: Vec::new(),
            expired: Vec::new(),
            responded: false,
            sla_breached: false,
        });
    }
    let engine = Engine::new(RoutingConfig::default(), roster, snapshot, now);
    let after = proc_memory(std::process::id()).map(|m| m.0).unwrap_or(0);
    println!(
        "\nengine memory: {} open inquiries restored: +{:.1} MiB resident ({:.0} bytes each)",
        engine.open_count(),
        after.saturating_sub(before) as f64 / 1024.0,
        after.saturating_sub(before) as f64 * 1024.0 / open as f64
    );
}

/// The daemon's memory with `open` open inquiries and the big roster.
fn memory_bench(open: usize) -> anyhow::Result<()> {
    // `ROUTING_BENCH_KEEP=<dir>`: build the store and config there and keep
    // them, to run the daemon again by hand (e.g. under heaptrack).
    let kept = std::env::var_os("ROUTING_BENCH_KEEP").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir()?;
    let root = match &kept {
        Some(p) => {
            let _ = std::fs::remove_dir_all(p);
            std::fs::create_dir_all(p)?;
            p.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let db = root.join("bench.sqlite");
    // Create the schema through the daemon's own migrations.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let config = switchboard::config::StoreConfig {
            url: format!("sqlite://{}", db.display()),
            ..Default::default()
        };
        let store = switchboard::store::Store::open(&config).await?;
        store.close().await;
        anyhow::Ok(())
    })?;
    let t = Instant::now();
    let mut conn = rusqlite::Connection::open(&db)?;
    let tx = conn.transaction()?;
    {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut stmt = tx.prepare(
            "INSERT INTO inquiries (id, reference, channel, medium, status, urgency, customer_email, customer_key, \
             subject, created_at, updated_at, queue, requirements, sla_due_at, waiting_since) \
             VALUES (?1, ?2, 'generic/bench', 'generic', 'open', ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?7)",
        )?;
        let now = chrono::Utc::now().timestamp_millis();
        for i in 1..=open as i64 {
            let w = if i % 10 == 0 {
                typical(i, &mut rng, now)
            } else {
                rare(i, &mut rng, now)
            };
            stmt.execute(rusqlite::params![
                i,
                switchboard::inquiry::Reference::from_id(i).0,
                w.urgency.as_str(),
                format!("c{i}@example.org"),
                w.customer_key,
                format!("Inquiry number {i} about something"),
                now,
                w.requirements.queue,
                serde_json::to_string(&w.requirements)?,
                w.sla_due,
            ])?;
        }
    }
    tx.commit()?;
    drop(conn);
    let mut roster = String::new();
    let mut rng = fastrand::Rng::with_seed(42);
    for i in 0..ASSOCIATES {
        let a = associate(i, &mut rng);
        let skills: Vec<String> = a.skills.iter().map(|(s, l)| format!("{s} = {l}")).collect();
        roster.push_str(&format!(
            "[[associate]]\nid = \"{}\"\nname = \"{}\"\nemail = \"{}\"\nteam = \"{}\"\nlanguages = {:?}\n\
             skills = {{ {} }}\ncapacity = {{ generic = 3, email = 4 }}\nnotify = \"none\"\n\n",
            a.id,
            a.name,
            a.email,
            a.team.unwrap_or_default(),
            a.languages,
            skills.join(", ")
        ));
    }
    std::fs::write(root.join("roster.toml"), roster)?;
    std::fs::create_dir_all(root.join("templates"))?;
    std::fs::write(root.join("templates/ack.en.txt"), "Thanks, {{ reference }}")?;
    let config = root.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}\"\n[roster]\npath = \"roster.toml\"\n\
             [routing]\ninitial_presence = \"available\"\n",
            db.display()
        ),
    )?;
    if kept.is_some() {
        // The daemon changes the store; keep it as written for reruns.
        std::fs::copy(&db, root.join("bench.sqlite.orig"))?;
    }
    println!(
        "\nmemory: {open} open inquiries and {ASSOCIATES} associates written in {} ms; starting the daemon",
        t.elapsed().as_millis()
    );
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("switchboard started") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .context("the daemon did not start within 120 s")?;
    let ready = started.elapsed();
    // Let the router take its first round over everything restored.
    let mut last = 0;
    let mut stable = 0;
    let (mut rss, mut hwm) = (0, 0);
    for _ in 0..120 {
        std::thread::sleep(Duration::from_millis(500));
        (rss, hwm) = proc_memory(child.id())?;
        stable = if rss.abs_diff(last) < 256 {
            stable + 1
        } else {
            0
        };
        last = rss;
        if stable >= 4 {
            break;
        }
    }
    println!(
        "  daemon ready in {} ms; settled VmRSS {:.1} MiB, peak VmHWM {:.1} MiB (target: under 128 MiB)",
        ready.as_millis(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
        let parts: Vec<&str> = status
            .lines()
            .filter(|l| l.starts_with("RssAnon:") || l.starts_with("RssFile:"))
            .map(|l| l.trim())
            .collect();
        println!("  of which {}", parts.join(", "));
    }
    if kept.is_some() {
        println!("  kept: {}", config.display());
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    Ok(())
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn proc_memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
