//! Wires the tasks together and owns the process lifecycle.
//!
//! Start: load settings, open the store (migrations), bind, serve, dispatch.
//! SIGHUP, or a change on disk to the config file, the rules, the roster or
//! the templates (checked every `server.watch_interval`): reload them; an
//! invalid file is logged and the old settings stay. SIGTERM/SIGINT: stop taking connections, let in-flight
//! requests and deliveries finish within `server.drain_timeout`, commit what
//! the writer holds, exit.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Shared};
use crate::channels::imap::loops::AckGuard;
use crate::channels::imap::mailbox::MailboxTask;
use crate::config::{ConfigError, Settings};
use crate::outbox::Dispatcher;
use crate::pipeline::Pipeline;
use crate::routing::Router;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let settings = Settings::load(config_path)?;
    let listen = settings.server.listen;
    let store = Store::open_as(&settings.store, settings.cluster.instance.as_deref()).await?;
    let settings = Arc::new(ArcSwap::from_pointee(settings));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;

    let router_stop = CancellationToken::new();
    let (router, router_task) = {
        let s = settings.load();
        let leadership = crate::routing::service::Leadership {
            lease_ttl: s.cluster.lease_ttl,
            inbox_interval: s.cluster.inbox_interval,
            advertise_url: s
                .cluster
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{local}")),
        };
        Router::start(
            store.clone(),
            s.roster.clone(),
            s.routing.clone(),
            Some(leadership),
            router_stop.clone(),
        )
        .await?
    };
    let state = AppState::new(Shared {
        settings: settings.clone(),
        store: store.clone(),
        pipeline: Pipeline::new(store.clone(), settings.clone(), Some(router.clone())),
        router: router.clone(),
        metrics: crate::metrics::install(),
        ready: Arc::new(AtomicBool::new(true)),
    });
    let shutdown = CancellationToken::new();
    let dispatcher_stop = CancellationToken::new();
    let outbox_thread = OwnThread::start("switchboard-outbox").map_err(DaemonError::Thread)?;
    let dispatcher = outbox_thread
        .spawn(Dispatcher::new(store.clone(), settings.clone()).run(dispatcher_stop.clone()));
    let mail_stop = CancellationToken::new();
    let mailboxes = spawn_mailboxes(&state, mail_stop.clone());
    // Installed before we announce readiness: a SIGHUP that arrived before
    // its handler would kill the process (the default action).
    let handlers = Signals::install()?;
    let reloader = Reloader::new(config_path.to_path_buf(), settings.clone(), router.clone());
    let signals = tokio::spawn(watch_signals(handlers, reloader.clone(), shutdown.clone()));
    let files = tokio::spawn(watch_files(reloader, shutdown.clone()));
    {
        let s = settings.load();
        tracing::info!(
            listen = %local,
            store = %s.store.redacted_url(),
            instance = store.shared().map(|c| c.instance.as_str()),
            channels = s.channels.ids().len(),
            associates = s.roster.associates.len(),
            api_enabled = s.ops_token.is_some(),
            "switchboard started"
        );
        if s.ops_token.is_none() {
            tracing::warn!("api.ops_token is not set: the inquiry API answers 401 to everyone");
        }
    }

    let ready = state.ready.clone();
    let server_stop = shutdown.clone();
    let server = axum::serve(listener, api::router(state)).with_graceful_shutdown(async move {
        server_stop.cancelled().await;
        ready.store(false, Ordering::Relaxed);
    });
    let server = tokio::spawn(async move { server.await });

    shutdown.cancelled().await;
    let drain = settings.load().server.drain_timeout;
    tracing::info!(?drain, "shutting down: draining requests and deliveries");
    let deadline = tokio::time::Instant::now() + drain;
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server failed while draining"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("drain timeout: dropping open connections"),
    }
    // Mailbox tasks finish the batch they are committing, then log out.
    mail_stop.cancel();
    if tokio::time::timeout_at(deadline, mailboxes.join_all())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain timeout: mailbox tasks cut off; uncommitted mail is fetched again after restart"
        );
    }
    // The router stops before the store: its last round is committed.
    router_stop.cancel();
    if tokio::time::timeout_at(deadline, router_task)
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: the router's last round may be redone after restart");
    }
    dispatcher_stop.cancel();
    if tokio::time::timeout_at(deadline, dispatcher).await.is_err() {
        tracing::warn!("drain timeout: deliveries in flight will be retried after restart");
    }
    store.close().await;
    // Last: connections the dispatcher opened are tied to this thread's runtime.
    outbox_thread.stop().await;
    signals.abort();
    let _ = files.await;
    tracing::info!("switchboard stopped");
    Ok(())
}

/// A thread with a single-threaded runtime of its own, for the outbox
/// dispatcher. On the shared runtime its many small delivery tasks and
/// their HTTP connection tasks were spread over both workers, and every
/// hand-over between them was a cross-thread wake-up; kept on one thread,
/// a delivery's futures wake each other locally. Measured (BENCHMARKS.md,
/// session 7): about 14 % less CPU per inquiry, with intake and
/// acknowledgements both faster. It is stopped last, after the store: the
/// connections it opened (a PostgreSQL pool's, too) belong to its runtime.
struct OwnThread {
    handle: tokio::runtime::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl OwnThread {
    fn start(name: &str) -> std::io::Result<OwnThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Tasks spawned through `handle` run while this blocks.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(OwnThread {
            handle,
            stop,
            thread,
        })
    }

    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Ends the runtime (tasks still on it are dropped) and its thread.
    async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// One task per watched IMAP mailbox, with its own shutdown token. The set
/// is fixed at start: mailboxes added by a reload start with the next run
/// (settings of existing ones apply at their next reconnect).
fn spawn_mailboxes(state: &AppState, stop: CancellationToken) -> tokio::task::JoinSet<()> {
    let guard = Arc::new(AckGuard::new());
    let mut tasks = tokio::task::JoinSet::new();
    for (name, channel) in &state.settings.load().imap {
        for mailbox in &channel.mailboxes {
            let task = MailboxTask {
                name: name.clone(),
                mailbox: mailbox.clone(),
                settings: state.settings.clone(),
                pipeline: state.pipeline.clone(),
                store: state.store.clone(),
                guard: guard.clone(),
            };
            tasks.spawn(task.run(stop.clone()));
        }
    }
    tasks
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        let install = |kind| signal(kind).map_err(DaemonError::Signals);
        Ok(Signals {
            hup: install(SignalKind::hangup())?,
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }
}

/// Turns signals into reloads and the shutdown token.
async fn watch_signals(mut signals: Signals, reloader: Reloader, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = signals.hup.recv() => {
                reloader.reload();
            }
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
        }
    }
    shutdown.cancel();
}

/// How often a turned-off watcher looks whether a reload turned it on.
const WATCH_OFF_RECHECK: Duration = Duration::from_secs(5);

/// How long changed sources must hold still before they are read.
const WATCH_SETTLE: Duration = Duration::from_millis(250);

/// Reloads when one of the settings' sources changes on disk, every
/// `server.watch_interval` (`0s`: never), until `shutdown`.
async fn watch_files(reloader: Reloader, shutdown: CancellationToken) {
    loop {
        let interval = reloader.settings.load().server.watch_interval;
        let wait = if interval.is_zero() {
            WATCH_OFF_RECHECK
        } else {
            interval
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if interval.is_zero() {
            continue;
        }
        let Some(file) = reloader.changed() else {
            continue;
        };
        // A file being written (truncated, then filled) must not be read
        // half-way: act once the sources have held still for a moment.
        let moving = reloader.current();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval.min(WATCH_SETTLE)) => {}
        }
        if reloader.current() != moving {
            continue;
        }
        tracing::info!(file = %file.display(), "configuration changed on disk; reloading");
        reloader.reload();
    }
}

/// The one way settings are reloaded, from SIGHUP or a file change: one
/// reload at a time, the router reconfigured with what was taken, and the
/// sources' state remembered so a change is acted on once.
#[derive(Clone)]
struct Reloader {
    path: PathBuf,
    settings: Arc<ArcSwap<Settings>>,
    router: Router,
    /// The sources' state when they were last read.
    seen: Arc<Mutex<Stamps>>,
}

impl Reloader {
    fn new(path: PathBuf, settings: Arc<ArcSwap<Settings>>, router: Router) -> Reloader {
        let seen = Stamps::of(&settings.load().sources);
        Reloader {
            path,
            settings,
            router,
            seen: Arc::new(Mutex::new(seen)),
        }
    }

    /// Reloads now; returns whether the new settings were taken.
    fn reload(&self) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Taken before reading: a write during the reload is seen next time.
        let before = Stamps::of(&self.settings.load().sources);
        let taken = reload(&self.path, &self.settings);
        let s = self.settings.load();
        if taken {
            self.router.reconfigure(s.roster.clone(), s.routing.clone());
        }
        *seen = if before.paths_match(&s.sources) {
            before
        } else {
            Stamps::of(&s.sources)
        };
        taken
    }

    /// The sources' state now.
    fn current(&self) -> Stamps {
        Stamps::of(&self.settings.load().sources)
    }

    /// The first source that differs from when it was last read.
    fn changed(&self) -> Option<PathBuf> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Stamps::of(&self.settings.load().sources);
        now.0
            .iter()
            .find(|(path, stamp)| seen.0.get(*path) != Some(stamp))
            .map(|(path, _)| path.clone())
    }
}

/// What a file or folder looked like: enough to notice an edit without
/// reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Missing,
    File(Option<SystemTime>, u64),
    /// A folder: each entry's name, modification time and size.
    Folder(Vec<(OsString, Option<SystemTime>, u64)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamps(BTreeMap<PathBuf, Stamp>);

impl Stamps {
    fn of(paths: &[PathBuf]) -> Stamps {
        Stamps(paths.iter().map(|p| (p.clone(), stamp(p))).collect())
    }

    fn paths_match(&self, paths: &[PathBuf]) -> bool {
        self.0.len() == paths.len() && paths.iter().all(|p| self.0.contains_key(p))
    }
}

fn stamp(path: &Path) -> Stamp {
    let Ok(meta) = std::fs::metadata(path) else {
        return Stamp::Missing;
    };
    if !meta.is_dir() {
        return Stamp::File(meta.modified().ok(), meta.len());
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.metadata().ok()?;
            Some((e.file_name(), meta.modified().ok(), meta.len()))
        })
        .collect();
    entries.sort();
    Stamp::Folder(entries)
}

/// Re-reads the configuration and swaps it in whole, or keeps the old one.
/// Returns whether the new one was taken.
pub fn reload(path: &Path, settings: &ArcSwap<Settings>) -> bool {
    match Settings::load(path) {
        Ok(new) => {
            let old = settings.load();
            if new.server.listen != old.server.listen {
                tracing::warn!("server.listen changed: takes effect after a restart");
            }
            if new.store.url != old.store.url
                || new.store.max_batch != old.store.max_batch
                || new.store.cache_kib != old.store.cache_kib
                || new.store.read_cache_kib != old.store.read_cache_kib
            {
                tracing::warn!("store settings changed: take effect after a restart");
            }
            for name in new.imap.keys().filter(|n| !old.imap.contains_key(*n)) {
                tracing::warn!(channel = %name, "new IMAP channel: its mailboxes are watched after a restart");
            }
            let channels = new.channels.ids().len();
            let associates = new.roster.associates.len();
            settings.store(Arc::new(new));
            tracing::info!(channels, associates, "configuration reloaded");
            true
        }
        Err(e) => {
            for problem in &e.problems {
                tracing::error!(%problem, "configuration rejected; keeping the previous one");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_notice_edits_new_files_and_template_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roster.toml");
        let folder = dir.path().join("templates");
        std::fs::create_dir(&folder).unwrap();
        let paths = vec![file.clone(), folder.clone()];
        let start = Stamps::of(&paths);
        assert_eq!(start.0[&file], Stamp::Missing);
        assert_eq!(Stamps::of(&paths), start, "nothing changed");

        std::fs::write(&file, "a").unwrap();
        let written = Stamps::of(&paths);
        assert_ne!(written, start);
        std::fs::write(&file, "ab").unwrap();
        assert_ne!(Stamps::of(&paths), written, "a longer file");

        let before = Stamps::of(&paths);
        std::fs::write(folder.join("ack.en.txt"), "hi").unwrap();
        assert_ne!(Stamps::of(&paths), before, "a new template");
        assert!(before.paths_match(&paths));
        assert!(!before.paths_match(&paths[..1]));
    }
}
