//! The router task: the one owner of the routing [`Engine`] in a daemon.
//!
//! Commands (new inquiries, accepts, presence changes, …) queue on a
//! channel; the task takes everything queued, fires due timers, applies
//! the commands in order, persists all resulting effects in one store
//! commit, and only then answers the callers. One owner means no two
//! accepts can race for the same capacity; one commit per round means the
//! router keeps up with intake without an fsync per decision.
//!
//! With a shared PostgreSQL store, one instance at a time is the routing
//! leader: it holds the `router` lease, runs the engine and its timers,
//! and takes inquiries other instances committed from the routing inbox.
//! The others answer routing commands with [`CommandError::NotLeader`]
//! (the API forwards those requests to the leader) and keep trying to take
//! the lease, so one of them takes over within a lease's lifetime when the
//! leader dies. A leader that cannot renew in time steps down, and the
//! store refuses its writes once the lease is gone (`writer::fence`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::engine::{Effect, Engine, NewWork, RestoredWork, RoutingError};
use super::{Presence, Roster, RoutingConfig};
use crate::store::lease::{self, Held};
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
    /// Another instance is the routing leader (its URL, if known).
    #[error("this instance is not the routing leader")]
    NotLeader(Option<String>),
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
        oneshot::Sender<Result<Value, CommandError>>,
    ),
}

impl Command {
    /// Answers a command this instance cannot run: it is not the leader.
    fn refuse(self, leader: Option<String>) {
        let no = || CommandError::NotLeader(leader.clone());
        match self {
            Command::Add(_) | Command::Reopen(_) | Command::Reconfigure(..) => {}
            Command::Accept(.., r) | Command::Decline(.., r) | Command::Resolve(.., r) => {
                let _ = r.send(Err(no()));
            }
            Command::Transfer { reply, .. } | Command::Presence(.., reply) => {
                let _ = reply.send(Err(no()));
            }
            Command::Query(_, r) => {
                let _ = r.send(Err(no()));
            }
        }
    }
}

/// Settings of the routing leader's lease (shared stores only).
#[derive(Debug, Clone)]
pub struct Leadership {
    /// How long the lease lasts without renewal; a dead leader is
    /// replaced within about this long.
    pub lease_ttl: Duration,
    /// How often the leader looks for inquiries other instances took in.
    pub inbox_interval: Duration,
    /// Where other instances forward routing requests to this one.
    pub advertise_url: String,
}

/// Whether this instance leads, and who does if not.
#[derive(Debug, Default)]
pub struct LeaderState {
    leading: AtomicBool,
    leader_url: Mutex<Option<String>>,
}

impl LeaderState {
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// The leader's advertised URL, as last seen.
    pub fn leader_url(&self) -> Option<String> {
        self.leader_url.lock().expect("leader_url lock").clone()
    }

    fn set(&self, leading: bool, url: Option<String>) {
        self.leading.store(leading, Ordering::Release);
        *self.leader_url.lock().expect("leader_url lock") = url;
    }
}

/// A handle to the router task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    tx: mpsc::UnboundedSender<Command>,
    /// `Some` with a shared store: leadership decides who routes.
    leader: Option<Arc<LeaderState>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Router {
    /// Rebuilds the engine from the store and starts the router task.
    /// With a shared store (`leadership` set), the task first competes for
    /// the leader's lease and routes only while it holds it.
    pub async fn start(
        store: Arc<Store>,
        roster: Arc<Roster>,
        config: RoutingConfig,
        leadership: Option<Leadership>,
        shutdown: CancellationToken,
    ) -> Result<(Router, tokio::task::JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(leadership) = leadership.filter(|_| store.shared().is_some()) {
            let state = Arc::new(LeaderState::default());
            let (first, settled) = oneshot::channel();
            let task = tokio::spawn(run_cluster(
                Setup {
                    store,
                    roster,
                    config,
                },
                leadership,
                state.clone(),
                rx,
                shutdown,
                first,
            ));
            // A sole instance (or the one that wins) leads before it says it
            // started: its first routing requests do not meet "no leader".
            let _ = settled.await;
            return Ok((
                Router {
                    tx,
                    leader: Some(state),
                },
                task,
            ));
        }
        let now = now_ms();
        let snapshot = store.routing_snapshot(config.sticky_window).await?;
        let open = snapshot.len();
        let mut engine = Engine::new(config, roster, snapshot, now);
        // The snapshot's rows and strings are gone; what they took stays
        // resident unless handed back.
        crate::alloc::release_free_memory();
        tracing::info!(open, "router started");
        let task = tokio::spawn(async move {
            let mut rx = rx;
            lead(&mut engine, &store, &mut rx, &shutdown, None).await;
            tracing::debug!("router stopped");
        });
        Ok((Router { tx, leader: None }, task))
    }

    /// Whether this instance routes: always with SQLite; with a shared
    /// store, while it holds the leader's lease.
    pub fn is_leader(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| l.is_leader())
    }

    /// With a shared store, the current leader's URL when it is another
    /// instance.
    pub fn leader_url(&self) -> Option<String> {
        self.leader.as_ref().and_then(|l| l.leader_url())
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
        rx.await.map_err(|_| CommandError::Closed)?
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

/// What the engine is built from when this instance becomes leader.
struct Setup {
    store: Arc<Store>,
    roster: Arc<Roster>,
    config: RoutingConfig,
}

/// The shared-store part of a leader's loop.
struct Lease {
    held: Held,
    renew: tokio::time::Interval,
    inbox: tokio::time::Interval,
}

/// Why a leader's loop ended.
enum Ended {
    Shutdown,
    /// Lost the lease, or could not keep state consistent with the store.
    SteppedDown,
}

/// Competes for the leader's lease; leads while holding it.
async fn run_cluster(
    mut setup: Setup,
    leadership: Leadership,
    state: Arc<LeaderState>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let store = setup.store.clone();
    let url = leadership.advertise_url.clone();
    let retry = leadership.lease_ttl / 3;
    loop {
        // Follower: refuse routing commands, keep asking for the lease.
        let mut attempt = tokio::time::interval(retry);
        attempt.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let held = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                cmd = rx.recv() => match cmd {
                    Some(Command::Reconfigure(roster, config)) => {
                        setup.roster = roster;
                        setup.config = config;
                    }
                    Some(c) => c.refuse(state.leader_url()),
                    None => return,
                },
                _ = attempt.tick() => {
                    match Held::take(&store, lease::ROUTER, leadership.lease_ttl, Some(&url)).await {
                        Ok(Some(held)) => break held,
                        Ok(None) => {
                            let holder = store.lease_holder(lease::ROUTER).await.ok().flatten();
                            state.set(false, holder.and_then(|h| h.url));
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot reach the store to take the routing lease"),
                    }
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                }
            }
        };
        let snapshot = match store.routing_snapshot(setup.config.sticky_window).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot load routing state; giving the lease up");
                let _ = store.release_lease(lease::ROUTER).await;
                continue;
            }
        };
        let open = snapshot.len();
        let mut engine = Engine::new(
            setup.config.clone(),
            setup.roster.clone(),
            snapshot,
            now_ms(),
        );
        crate::alloc::release_free_memory();
        state.set(true, Some(url.clone()));
        tracing::info!(open, "this instance is the routing leader");
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        let mut lease = Lease {
            renew: tokio::time::interval(held.period()),
            held,
            inbox: tokio::time::interval(leadership.inbox_interval),
        };
        let ended = lead(&mut engine, &store, &mut rx, &shutdown, Some(&mut lease)).await;
        setup.roster = engine.roster().clone();
        setup.config = engine.config().clone();
        state.set(false, None);
        drop(engine);
        match ended {
            Ended::Shutdown => {
                // A clean stop hands over at once instead of after the TTL.
                let _ = store.release_lease(lease::ROUTER).await;
                return;
            }
            Ended::SteppedDown => {
                tracing::warn!("this instance stepped down as routing leader");
            }
        }
    }
}

/// Runs rounds of commands and timers on `engine` until shutdown or, with
/// a shared store, until the lease is lost.
async fn lead(
    engine: &mut Engine,
    store: &Arc<Store>,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    shutdown: &CancellationToken,
    mut lease: Option<&mut Lease>,
) -> Ended {
    let mut rescan = tokio::time::interval(engine.config().rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a restart every waiting inquiry is retried at once, in bounded
    // rounds; once that backlog is worked off, the memory its decisions
    // and their explanations took is handed back to the system.
    let mut catching_up = engine.next_deadline().is_some_and(|at| at <= now_ms());
    // Placeholders when there is no lease: their branches are disabled.
    let mut no_renew = tokio::time::interval(Duration::from_secs(3600));
    let mut no_inbox = tokio::time::interval(Duration::from_secs(3600));
    loop {
        let wait = engine
            .next_deadline()
            .map(|at| Duration::from_millis((at - now_ms()).max(0) as u64 + 1))
            .unwrap_or(Duration::from_secs(3600));
        let mut batch = Vec::new();
        let mut do_rescan = false;
        let mut do_inbox = false;
        let shared = lease.is_some();
        let (renew, inbox) = match lease.as_deref_mut() {
            Some(l) => (&mut l.renew, &mut l.inbox),
            None => (&mut no_renew, &mut no_inbox),
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            cmd = rx.recv() => match cmd {
                Some(c) => batch.push(c),
                None => return Ended::Shutdown,
            },
            _ = tokio::time::sleep(wait) => {}
            _ = rescan.tick() => do_rescan = true,
            _ = renew.tick(), if shared => {
                let l = lease.as_deref_mut().expect("shared");
                if !l.held.renew(store).await {
                    return Ended::SteppedDown;
                }
                continue;
            }
            _ = inbox.tick(), if shared => do_inbox = true,
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
        if do_inbox {
            match store.take_inbox(MAX_ROUND as i64).await {
                Ok(taken) => {
                    for (work, reopened) in taken {
                        if !reopened {
                            effects.extend(engine.add(work, now));
                            continue;
                        }
                        // A reopened inquiry comes back with its history
                        // (who held it, who passed), as after a restart.
                        match store.reopened_work(work.id).await {
                            Ok(Some(r)) => effects.extend(engine.reopen(r, now)),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, inquiry = work.id, "cannot read a reopened inquiry")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the routing inbox"),
            }
        }
        let mut replies: Vec<(Reply<()>, Result<(), RoutingError>)> = Vec::new();
        let mut queries = Vec::new();
        for cmd in batch {
            let (reply, result) = match cmd {
                // With a shared store, new work comes through the inbox
                // (whichever instance took it in); a direct add could
                // arrive after the inquiry was already resolved.
                Command::Add(_) | Command::Reopen(_) if shared => {
                    lease
                        .as_deref_mut()
                        .expect("shared")
                        .inbox
                        .reset_immediately();
                    continue;
                }
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
                let text = e.to_string();
                let lost = matches!(e, StoreError::LeaseLost(_));
                for (reply, _) in replies {
                    let err = if lost {
                        CommandError::NotLeader(None)
                    } else {
                        CommandError::Store(StoreError::SameFailure(text.clone()))
                    };
                    let _ = reply.send(Err(err));
                }
                if lost {
                    for (_, reply) in queries {
                        let _ = reply.send(Err(CommandError::NotLeader(None)));
                    }
                    tracing::warn!("the routing lease was lost; this round is discarded");
                    return Ended::SteppedDown;
                }
                // Memory ran ahead of the store: start again from what is
                // committed, and tell every caller of this round it failed.
                tracing::error!(error = %e, "cannot persist routing decisions; reloading from the store");
                match store.routing_snapshot(engine.config().sticky_window).await {
                    Ok(snapshot) => {
                        let roster = engine.roster().clone();
                        *engine = Engine::new(engine.config().clone(), roster, snapshot, now_ms());
                        catching_up = true;
                    }
                    Err(e) if shared => {
                        tracing::error!(error = %e, "cannot reload routing state; stepping down");
                        return Ended::SteppedDown;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload routing state; router stops");
                        return Ended::Shutdown;
                    }
                }
            }
        }
        for (f, reply) in queries {
            let _ = reply.send(Ok(f(engine)));
        }
        if catching_up && engine.next_deadline().is_none_or(|at| at > now_ms()) {
            catching_up = false;
            crate::alloc::release_free_memory();
            tracing::debug!("router caught up with the restored backlog");
        }
    }
}

fn count(effects: &[Effect]) {
    for e in effects {
        if let Effect::Event { kind, .. } = e {
            metrics::counter!("switchboard_routing_events_total", "kind" => *kind).increment(1);
        }
    }
}
