//! The router task: the one owner of the routing [`Engine`] in a daemon.
//!
//! Commands (new inquiries, accepts, presence changes, …) queue on a
//! channel; the task takes everything queued, fires due timers, applies
//! the commands in order, persists all resulting effects in one store
//! commit, and only then answers the callers. One owner means no two
//! accepts can race for the same capacity; one commit per round means the
//! router keeps up with intake without an fsync per decision.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::engine::{Effect, Engine, NewWork, RestoredWork, RoutingError};
use super::{Presence, Roster, RoutingConfig};
use crate::store::{Store, StoreError};

/// Who is asking: ops (the ops token) or one associate (their token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Ops,
    Associate(String),
}

impl Caller {
    /// The associate acting: the caller itself, or whom ops act for.
    pub fn acting_as<'a>(&'a self, on_behalf: Option<&'a str>) -> Option<&'a str> {
        match self {
            Caller::Associate(id) => Some(id),
            Caller::Ops => on_behalf,
        }
    }
}

/// A refused or failed routing command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the router is shutting down")]
    Closed,
}

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// What the router can be asked to do.
enum Command {
    Add(NewWork),
    Reopen(Box<RestoredWork>),
    Accept(i64, String, Reply<()>),
    Decline(i64, String, Reply<()>),
    Resolve(i64, Option<String>, Option<String>, Reply<()>),
    Transfer {
        id: i64,
        by: Option<String>,
        to: Option<String>,
        note: Option<String>,
        reply: Reply<()>,
    },
    Presence(String, Presence, Reply<()>),
    Reconfigure(Arc<Roster>, RoutingConfig),
    Query(
        Box<dyn FnOnce(&Engine) -> Value + Send>,
        oneshot::Sender<Value>,
    ),
}

/// A handle to the router task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Router {
    /// Rebuilds the engine from the store and starts the router task.
    pub async fn start(
        store: Arc<Store>,
        roster: Arc<Roster>,
        config: RoutingConfig,
        shutdown: CancellationToken,
    ) -> Result<(Router, tokio::task::JoinHandle<()>), StoreError> {
        let now = now_ms();
        let snapshot = store.routing_snapshot(config.sticky_window).await?;
        let open = snapshot.works.len();
        let engine = Engine::new(config, roster, snapshot, now);
        tracing::info!(open, "router started");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(engine, store, rx, shutdown));
        Ok((Router { tx }, task))
    }

    /// Routes a newly committed inquiry. Fire and forget: the inquiry is
    /// already stored as waiting, so a crash before routing only delays it.
    pub fn add(&self, work: NewWork) {
        let _ = self.tx.send(Command::Add(work));
    }

    /// Routes an inquiry a reply reopened, as the store has it. Fire and
    /// forget, like [`Router::add`].
    pub fn reopen(&self, work: RestoredWork) {
        let _ = self.tx.send(Command::Reopen(Box::new(work)));
    }

    pub fn reconfigure(&self, roster: Arc<Roster>, config: RoutingConfig) {
        let _ = self.tx.send(Command::Reconfigure(roster, config));
    }

    pub async fn accept(&self, id: i64, who: &str) -> Result<(), CommandError> {
        self.ask(|r| Command::Accept(id, who.to_owned(), r)).await
    }

    pub async fn decline(&self, id: i64, who: &str) -> Result<(), CommandError> {
        self.ask(|r| Command::Decline(id, who.to_owned(), r)).await
    }

    pub async fn resolve(
        &self,
        id: i64,
        who: Option<&str>,
        note: Option<String>,
    ) -> Result<(), CommandError> {
        self.ask(|r| Command::Resolve(id, who.map(str::to_owned), note, r))
            .await
    }

    pub async fn transfer(
        &self,
        id: i64,
        by: Option<&str>,
        to: Option<&str>,
        note: Option<String>,
    ) -> Result<(), CommandError> {
        self.ask(|reply| Command::Transfer {
            id,
            by: by.map(str::to_owned),
            to: to.map(str::to_owned),
            note,
            reply,
        })
        .await
    }

    pub async fn set_presence(&self, who: &str, presence: Presence) -> Result<(), CommandError> {
        self.ask(|r| Command::Presence(who.to_owned(), presence, r))
            .await
    }

    /// Reads the engine's state, in turn with the commands.
    pub async fn query<F>(&self, f: F) -> Result<Value, CommandError>
    where
        F: FnOnce(&Engine) -> Value + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Query(Box::new(f), tx))
            .map_err(|_| CommandError::Closed)?;
        rx.await.map_err(|_| CommandError::Closed)
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| CommandError::Closed)?;
        rx.await.map_err(|_| CommandError::Closed)?
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

const MAX_ROUND: usize = 512;

async fn run(
    mut engine: Engine,
    store: Arc<Store>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
) {
    let mut rescan = tokio::time::interval(engine.config().rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = engine
            .next_deadline()
            .map(|at| Duration::from_millis((at - now_ms()).max(0) as u64 + 1))
            .unwrap_or(Duration::from_secs(3600));
        let mut batch = Vec::new();
        let mut do_rescan = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(c) => batch.push(c),
                None => break,
            },
            _ = tokio::time::sleep(wait) => {}
            _ = rescan.tick() => do_rescan = true,
        }
        while batch.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut effects = engine.tick(now);
        if do_rescan {
            effects.extend(engine.rescan(now));
        }
        let mut replies: Vec<(Reply<()>, Result<(), RoutingError>)> = Vec::new();
        let mut queries = Vec::new();
        for cmd in batch {
            let (reply, result) = match cmd {
                Command::Add(work) => {
                    effects.extend(engine.add(work, now));
                    continue;
                }
                Command::Reopen(work) => {
                    effects.extend(engine.reopen(*work, now));
                    continue;
                }
                Command::Reconfigure(roster, config) => {
                    engine.set_config(config);
                    effects.extend(engine.set_roster(roster, now));
                    continue;
                }
                Command::Query(f, reply) => {
                    queries.push((f, reply));
                    continue;
                }
                Command::Accept(id, who, reply) => (reply, engine.accept(id, &who, now)),
                Command::Decline(id, who, reply) => (reply, engine.decline(id, &who, now)),
                Command::Resolve(id, who, note, reply) => (
                    reply,
                    engine.resolve(id, who.as_deref(), note.as_deref(), now),
                ),
                Command::Transfer {
                    id,
                    by,
                    to,
                    note,
                    reply,
                } => (
                    reply,
                    engine.transfer(id, by.as_deref(), to.as_deref(), note.as_deref(), now),
                ),
                Command::Presence(who, presence, reply) => {
                    (reply, engine.set_presence(&who, presence, now))
                }
            };
            let result = result.map(|e| effects.extend(e));
            replies.push((reply, result));
        }
        let persisted = if effects.is_empty() {
            Ok(())
        } else {
            count(&effects);
            store.apply_routing(effects).await
        };
        match persisted {
            Ok(()) => {
                for (reply, result) in replies {
                    let _ = reply.send(result.map_err(CommandError::from));
                }
            }
            Err(e) => {
                // Memory ran ahead of the store: start again from what is
                // committed, and tell every caller of this round it failed.
                tracing::error!(error = %e, "cannot persist routing decisions; reloading from the store");
                let text = e.to_string();
                for (reply, _) in replies {
                    let _ = reply.send(Err(CommandError::Store(StoreError::SameFailure(
                        text.clone(),
                    ))));
                }
                match store.routing_snapshot(engine.config().sticky_window).await {
                    Ok(snapshot) => {
                        let roster = engine.roster().clone();
                        engine = Engine::new(engine.config().clone(), roster, snapshot, now_ms());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload routing state; router stops");
                        break;
                    }
                }
            }
        }
        for (f, reply) in queries {
            let _ = reply.send(f(&engine));
        }
    }
    tracing::debug!("router stopped");
}

fn count(effects: &[Effect]) {
    for e in effects {
        if let Effect::Event { kind, .. } = e {
            metrics::counter!("switchboard_routing_events_total", "kind" => *kind).increment(1);
        }
    }
}
