//! Wires the tasks together and owns the process lifecycle.
//!
//! Start: load settings, open the store (migrations), bind, serve, dispatch.
//! SIGHUP: reload the config files; an invalid file is logged and the old
//! settings stay. SIGTERM/SIGINT: stop taking connections, let in-flight
//! requests and deliveries finish within `server.drain_timeout`, commit what
//! the writer holds, exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::channels::imap::loops::AckGuard;
use crate::channels::imap::mailbox::MailboxTask;
use crate::config::{ConfigError, Settings};
use crate::outbox::Dispatcher;
use crate::pipeline::Pipeline;
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
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let settings = Settings::load(config_path)?;
    let listen = settings.server.listen;
    let store = Store::open(&settings.store).await?;
    let settings = Arc::new(ArcSwap::from_pointee(settings));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;

    let state = AppState {
        settings: settings.clone(),
        store: store.clone(),
        pipeline: Pipeline::new(store.clone(), settings.clone()),
        metrics: crate::metrics::install(),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let shutdown = CancellationToken::new();
    let dispatcher_stop = CancellationToken::new();
    let dispatcher =
        tokio::spawn(Dispatcher::new(store.clone(), settings.clone()).run(dispatcher_stop.clone()));
    let mail_stop = CancellationToken::new();
    let mailboxes = spawn_mailboxes(&state, mail_stop.clone());
    // Installed before we announce readiness: a SIGHUP that arrived before
    // its handler would kill the process (the default action).
    let handlers = Signals::install()?;
    let signals = tokio::spawn(watch_signals(
        handlers,
        config_path.to_path_buf(),
        settings.clone(),
        shutdown.clone(),
    ));
    {
        let s = settings.load();
        tracing::info!(
            listen = %local,
            store = %s.store.url,
            channels = s.channels.ids().len(),
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
    dispatcher_stop.cancel();
    if tokio::time::timeout_at(deadline, dispatcher).await.is_err() {
        tracing::warn!("drain timeout: deliveries in flight will be retried after restart");
    }
    store.close().await;
    signals.abort();
    tracing::info!("switchboard stopped");
    Ok(())
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
async fn watch_signals(
    mut signals: Signals,
    path: PathBuf,
    settings: Arc<ArcSwap<Settings>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = signals.hup.recv() => reload(&path, &settings),
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
        }
    }
    shutdown.cancel();
}

/// Re-reads the configuration and swaps it in whole, or keeps the old one.
pub fn reload(path: &Path, settings: &ArcSwap<Settings>) {
    match Settings::load(path) {
        Ok(new) => {
            let old = settings.load();
            if new.server.listen != old.server.listen {
                tracing::warn!("server.listen changed: takes effect after a restart");
            }
            if new.store.url != old.store.url || new.store.max_batch != old.store.max_batch {
                tracing::warn!("store settings changed: take effect after a restart");
            }
            for name in new.imap.keys().filter(|n| !old.imap.contains_key(*n)) {
                tracing::warn!(channel = %name, "new IMAP channel: its mailboxes are watched after a restart");
            }
            let channels = new.channels.ids().len();
            settings.store(Arc::new(new));
            tracing::info!(channels, "configuration reloaded");
        }
        Err(e) => {
            for problem in &e.problems {
                tracing::error!(%problem, "configuration rejected; keeping the previous one");
            }
        }
    }
}
