//! The routing decision core: offers each inquiry to the best eligible
//! associate, queues it when nobody qualifies, re-offers on decline or
//! timeout, relaxes requirements while it waits, and backfills when an
//! associate frees capacity or becomes available.
//!
//! Every method takes `now` (Unix ms) and returns the [`Effect`]s that must
//! be persisted; the caller persists them before acting on the outcome.
//! Offers reserve capacity, so accepting never exceeds it, and an inquiry
//! has at most one open offer at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::bitset::Bitset;
use super::roster::{MEDIA, Roster, medium_index};
use super::{Presence, Requirements, RoutingConfig};
use crate::inquiry::{Medium, Reference, Status, Urgency};

/// Why a command was refused. The API maps each to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("inquiry is not open for routing")]
    NotOpen,
    #[error("no associate `{0}` in the roster")]
    UnknownAssociate(String),
    #[error("this inquiry is not offered or assigned to you")]
    NotYours,
    #[error("the offer has expired")]
    OfferExpired,
    #[error("{0}")]
    Conflict(String),
}

/// How an offer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferState {
    Accepted,
    Declined,
    Expired,
    Withdrawn,
}

impl OfferState {
    pub fn as_str(self) -> &'static str {
        match self {
            OfferState::Accepted => "accepted",
            OfferState::Declined => "declined",
            OfferState::Expired => "expired",
            OfferState::Withdrawn => "withdrawn",
        }
    }
}

/// A change to persist.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Offer {
        offer_id: i64,
        inquiry_id: i64,
        associate: String,
        offered_at: i64,
        expires_at: i64,
    },
    OfferClosed {
        offer_id: i64,
        state: OfferState,
        at: i64,
    },
    Status {
        inquiry_id: i64,
        status: Status,
        assignee: Option<String>,
        /// Set when the inquiry (re)enters the queue.
        waiting_since: Option<i64>,
    },
    FirstResponse {
        inquiry_id: i64,
        at: i64,
    },
    SlaBreached {
        inquiry_id: i64,
    },
    Presence {
        associate: String,
        presence: Presence,
        since: i64,
    },
    IdleSince {
        associate: String,
        at: i64,
    },
    Event {
        inquiry_id: i64,
        kind: &'static str,
        detail: Value,
    },
    /// Tell an associate about an offer or an assignment.
    Notify {
        inquiry_id: i64,
        associate: String,
        what: &'static str,
        expires_at: Option<i64>,
    },
}

/// An inquiry to route.
#[derive(Debug, Clone)]
pub struct NewWork {
    pub id: i64,
    pub medium: Medium,
    pub urgency: Urgency,
    pub customer_key: Option<String>,
    pub requirements: Requirements,
    pub sla_due: Option<i64>,
    pub waiting_since: i64,
}

/// One open inquiry as stored, to rebuild the engine at start.
#[derive(Debug, Clone)]
pub struct RestoredWork {
    pub work: NewWork,
    pub status: Status,
    pub assignee: Option<String>,
    /// `(offer id, associate, expires_at)`.
    pub open_offer: Option<(i64, String, i64)>,
    /// Associates whose offer for it was declined or expired.
    pub declined: Vec<String>,
    pub expired: Vec<String>,
    pub responded: bool,
    pub sla_breached: bool,
}

/// Everything the engine needs from the store at start.
///
/// Open inquiries are added one at a time ([`Snapshot::add`]) and turned
/// into the engine's compact form at once, so a large backlog is never
/// held twice (as rows and as works), and the parsing of one row is freed
/// before the next: no trail of freed memory stays behind between the
/// works, which the allocator could not give back.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `(associate, presence, since, idle_since)`.
    pub presence: Vec<(String, Presence, i64, Option<i64>)>,
    /// `(customer key, associate, last assigned at)`, newest last.
    pub sticky: Vec<(String, String, i64)>,
    pub max_offer_id: i64,
    works: HashMap<i64, Work>,
    shared: Shared,
}

impl Snapshot {
    /// Adds one open inquiry as stored.
    pub fn add(&mut self, r: RestoredWork) {
        let work = self.shared.restored(r);
        self.works.insert(work.id, work);
    }

    /// Records that `who` declined (or let expire, `expired`) an offer of
    /// inquiry `id`, added before. Unknown inquiries are ignored.
    pub fn passed(&mut self, id: i64, who: &str, expired: bool) {
        let name = self.shared.interner.name(who);
        if let Some(work) = self.works.get_mut(&id) {
            work.pass(&name, expired);
        }
    }

    /// Open inquiries added.
    pub fn len(&self) -> usize {
        self.works.len()
    }

    pub fn is_empty(&self) -> bool {
        self.works.is_empty()
    }
}

/// What open inquiries share, interned: names, ladders, rule lists, and
/// whole [`Profile`]s.
#[derive(Debug, Default)]
struct Shared {
    interner: super::Interner,
    profiles: std::collections::HashSet<Arc<Profile>>,
}

impl Shared {
    /// The engine's form of an inquiry as the store holds it: answered or
    /// breached, who passed on it, and its offer or assignee.
    fn restored(&mut self, r: RestoredWork) -> Work {
        let mut work = self.work(r.work);
        work.responded = r.responded;
        work.sla_breached = r.sla_breached;
        for (who, expired) in r
            .declined
            .iter()
            .map(|w| (w, false))
            .chain(r.expired.iter().map(|w| (w, true)))
        {
            work.pass(&self.interner.name(who), expired);
        }
        work.state = match (r.status, r.assignee, r.open_offer) {
            (Status::Assigned, Some(a), _) => State::Assigned {
                associate: self.interner.name(&a),
            },
            (_, _, Some((offer_id, associate, expires_at))) => State::Offered {
                offer_id,
                associate: self.interner.name(&associate),
                expires_at,
            },
            _ => State::Waiting,
        };
        work
    }

    /// The engine's compact form of `new`, its shared parts interned.
    fn work(&mut self, mut new: NewWork) -> Work {
        let mut req = std::mem::take(&mut new.requirements);
        self.interner.requirements(&mut req);
        let profile = Profile {
            language: req.language,
            queue: req.queue,
            relaxation: req.relaxation,
            rules: req.rules,
        };
        let profile = match self.profiles.get(&profile) {
            Some(shared) => shared.clone(),
            None => {
                let profile = Arc::new(profile);
                self.profiles.insert(profile.clone());
                profile
            }
        };
        let skills = req.skills.iter().map(|(s, l)| (s.clone(), l)).collect();
        Work::from_parts(&new, skills, profile)
    }

    /// Drops the interned profile of a work that left, once nothing else
    /// uses it: profiles come from the rules and are few, but a reload
    /// may retire some.
    fn forget(&mut self, work: Work) {
        // One count is the set's, one `work`'s.
        if Arc::strong_count(&work.profile) == 2 {
            self.profiles.remove(&work.profile);
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Waiting,
    Offered {
        offer_id: i64,
        associate: Arc<str>,
        expires_at: i64,
    },
    Assigned {
        associate: Arc<str>,
    },
}

/// One open inquiry as the engine holds it. Compact on purpose: a
/// restarted daemon holds one per open inquiry (100,000 in the bench), so
/// what many share is interned ([`Profile`], skill and associate names),
/// the customer key is kept as a hash, and the rarely used lists of who
/// passed on it live behind one pointer.
#[derive(Debug, Clone)]
struct Work {
    id: i64,
    waiting_since: i64,
    sla_due: Option<i64>,
    /// Hash of the customer key (see [`customer_hash`]), for sticky routing.
    customer: Option<u64>,
    /// Skill → minimum level, sorted by name; names interned.
    skills: Box<[(Arc<str>, u8)]>,
    profile: Arc<Profile>,
    state: State,
    /// Declined, timed out, or handed back: not offered again.
    passed: Option<Box<Passed>>,
    medium: Medium,
    urgency: Urgency,
    responded: bool,
    sla_breached: bool,
    /// Index of the last relaxation step recorded as taken effect.
    relaxed: u8,
}

/// The parts of a requirement besides skills, which the rules give to
/// many inquiries alike: interned, one copy per distinct profile.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Profile {
    language: Option<Arc<str>>,
    queue: Option<Arc<str>>,
    relaxation: Arc<[super::RelaxStep]>,
    rules: Arc<[Arc<str>]>,
}

/// Who passed on an inquiry (declined, timed out, or handed it back), and
/// of those whose offer expired.
#[derive(Debug, Clone, Default)]
struct Passed {
    all: Names,
    expired: Names,
}

impl Work {
    fn from_parts(new: &NewWork, skills: Box<[(Arc<str>, u8)]>, profile: Arc<Profile>) -> Work {
        Work {
            id: new.id,
            waiting_since: new.waiting_since,
            sla_due: new.sla_due,
            customer: new.customer_key.as_deref().map(customer_hash),
            skills,
            profile,
            state: State::Waiting,
            passed: None,
            medium: new.medium,
            urgency: new.urgency,
            responded: false,
            sla_breached: false,
            relaxed: 0,
        }
    }

    /// `new` as a work of its own, nothing interned: for one-off decisions.
    fn transient(new: &NewWork) -> Work {
        let req = &new.requirements;
        let profile = Profile {
            language: req.language.clone(),
            queue: req.queue.clone(),
            relaxation: req.relaxation.clone(),
            rules: req.rules.clone(),
        };
        let skills = req.skills.iter().map(|(s, l)| (s.clone(), l)).collect();
        Work::from_parts(new, skills, Arc::new(profile))
    }

    fn has_passed(&self, who: &str) -> bool {
        self.passed.as_ref().is_some_and(|p| p.all.contains(who))
    }

    fn has_expired(&self, who: &str) -> bool {
        self.passed
            .as_ref()
            .is_some_and(|p| p.expired.contains(who))
    }

    fn pass(&mut self, who: &Arc<str>, expired: bool) {
        let p = self.passed.get_or_insert_with(Box::default);
        p.all.insert(who.clone());
        if expired {
            p.expired.insert(who.clone());
        }
    }

    /// The requirement as the rules gave it, for explanations.
    fn skill_map(&self) -> BTreeMap<String, u8> {
        self.skills
            .iter()
            .map(|(s, l)| (s.to_string(), *l))
            .collect()
    }
}

/// The customer key as the engine keeps it: a 64-bit hash, for the sticky
/// lookup only. Two customers whose keys collide (odds below 1 in 10^9
/// among 100,000 customers) would share a "previous associate"
/// preference, never anything else.
fn customer_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same value for the same key in every
    // run; the keys are not secret, and a collision only skews a ranking.
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone)]
struct Person {
    presence: Presence,
    load: [u16; 5],
    offered: [u16; 5],
    idle_since: i64,
}

type QueueKey = (Urgency, i64, i64, i64);

/// A short list of associate ids (who passed on an inquiry): a vector,
/// since it is nearly always empty or tiny.
#[derive(Debug, Clone, Default)]
struct Names(Vec<Arc<str>>);

impl Names {
    fn insert(&mut self, id: Arc<str>) {
        if !self.contains(&id) {
            self.0.push(id);
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|n| &**n == id)
    }
}

/// Timers fired per [`Engine::tick`].
pub const MAX_TIMERS_PER_TICK: usize = 256;

/// Candidates listed in an explanation (the rest are counted).
const SHOWN_CANDIDATES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    OfferExpiry,
    Relax,
    Sla,
}

/// The requirement in force after waiting, and the step that made it so.
#[derive(Debug, Clone)]
struct Effective {
    skills: BTreeMap<String, u8>,
    language: Option<String>,
    queue: Option<String>,
    step: Option<String>,
    steps_taken: usize,
}

/// One candidate's score, with its parts for the explanation.
#[derive(Debug, Clone)]
struct Scored {
    index: usize,
    score: f64,
    sticky: bool,
    skill_fit: f64,
    load: f64,
    idle_secs: i64,
}

/// A routing decision: the winner, if any, and why.
#[derive(Debug, Clone)]
pub struct Decision {
    pub winner: Option<String>,
    pub explanation: Value,
}

#[derive(Debug)]
pub struct Engine {
    config: RoutingConfig,
    roster: Arc<Roster>,
    people: Vec<Person>,
    skill_ids: HashMap<String, usize>,
    /// `skill_bits[skill][level - 1]`: who has the skill at `level` or more.
    skill_bits: Vec<[Bitset; 5]>,
    /// `levels[i * skills + skill]`: associate `i`'s level (0 = none).
    levels: Vec<u8>,
    team_bits: HashMap<String, Bitset>,
    lang_bits: HashMap<String, Bitset>,
    /// Distinct working-hours schedules, and each associate's, so one
    /// decision asks each schedule once instead of once per associate.
    schedules: Vec<Arc<dyn super::roster::WorkingHours>>,
    hours_of: Vec<Option<usize>>,
    /// Who was within working hours at the last rescan: a rescan backfills
    /// only those whose hours began since, not everyone.
    working: Bitset,
    /// Per medium: available and with spare capacity (hours checked apart).
    free: [Bitset; 5],
    works: HashMap<i64, Work>,
    waiting: BTreeSet<QueueKey>,
    /// `(due, what, inquiry id)`. A stale offer timer (the offer ended)
    /// is told apart by its due time, which the current offer's differs
    /// from, or else the current offer is due then too.
    timers: BTreeSet<(i64, Timer, i64)>,
    /// Customer key hash → (associate, last assigned at).
    sticky: HashMap<u64, (Arc<str>, i64)>,
    next_offer_id: i64,
    /// Presence of associates not (or no longer) in the roster, kept so a
    /// roster change that brings them back restores it.
    presence_by_id: HashMap<String, (Presence, i64)>,
    shared: Shared,
}

impl Engine {
    pub fn new(config: RoutingConfig, roster: Arc<Roster>, snapshot: Snapshot, now: i64) -> Engine {
        let mut engine = Engine {
            config,
            roster: Arc::new(Roster::default()),
            people: Vec::new(),
            skill_ids: HashMap::new(),
            skill_bits: Vec::new(),
            levels: Vec::new(),
            team_bits: HashMap::new(),
            lang_bits: HashMap::new(),
            schedules: Vec::new(),
            hours_of: Vec::new(),
            working: Bitset::new(0),
            free: Default::default(),
            works: snapshot.works,
            waiting: BTreeSet::new(),
            timers: BTreeSet::new(),
            sticky: HashMap::new(),
            next_offer_id: snapshot.max_offer_id + 1,
            presence_by_id: HashMap::new(),
            shared: snapshot.shared,
        };
        for (id, presence, _, idle) in snapshot.presence {
            engine
                .presence_by_id
                .insert(id, (presence, idle.unwrap_or(0)));
        }
        for (customer, associate, at) in snapshot.sticky {
            let associate = engine.shared.interner.name(&associate);
            engine
                .sticky
                .insert(customer_hash(&customer), (associate, at));
        }
        let mut works = std::mem::take(&mut engine.works);
        for work in works.values_mut() {
            work.relaxed = steps(engine.effective(work, now).steps_taken);
            engine.schedule(work, now);
            if matches!(work.state, State::Waiting) {
                engine.waiting.insert(queue_key(work));
            }
        }
        engine.works = works;
        engine.install_roster(roster, now);
        engine
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    pub fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    pub fn set_config(&mut self, config: RoutingConfig) {
        self.config = config;
    }

    /// Swaps the roster. Presence, load and offers carry over by id; offers
    /// to associates who left are withdrawn and their inquiries re-routed.
    pub fn set_roster(&mut self, roster: Arc<Roster>, now: i64) -> Vec<Effect> {
        let mut before: HashMap<String, String> = HashMap::new();
        for (i, a) in self.roster.associates.iter().enumerate() {
            let p = &self.people[i];
            self.presence_by_id
                .insert(a.id.clone(), (p.presence, p.idle_since));
            before.insert(a.id.clone(), fingerprint(a));
        }
        self.install_roster(roster, now);
        let mut effects = Vec::new();
        let orphaned: Vec<i64> = self
            .works
            .values()
            .filter_map(|w| match &w.state {
                State::Offered { associate, .. } if self.roster.index_of(associate).is_none() => {
                    Some(w.id)
                }
                _ => None,
            })
            .collect();
        for id in orphaned {
            self.close_offer(id, OfferState::Withdrawn, now, &mut effects);
            self.route(id, now, &mut effects);
        }
        // Those who joined or changed may now fit waiting work.
        let changed: Vec<usize> = (0..self.roster.associates.len())
            .filter(|&i| {
                let a = &self.roster.associates[i];
                before.get(&a.id) != Some(&fingerprint(a))
            })
            .collect();
        for i in changed {
            self.backfill(i, now, &mut effects);
        }
        effects
    }

    fn install_roster(&mut self, roster: Arc<Roster>, now: i64) {
        let n = roster.associates.len();
        self.people = roster
            .associates
            .iter()
            .map(|a| {
                let (presence, idle_since) = self
                    .presence_by_id
                    .get(&a.id)
                    .copied()
                    .unwrap_or((self.config.initial_presence, 0));
                Person {
                    presence,
                    load: [0; 5],
                    offered: [0; 5],
                    idle_since,
                }
            })
            .collect();
        self.skill_ids.clear();
        self.skill_bits.clear();
        self.team_bits.clear();
        self.lang_bits.clear();
        self.schedules.clear();
        self.hours_of.clear();
        let mut schedule_ids: HashMap<usize, usize> = HashMap::new();
        for (i, a) in roster.associates.iter().enumerate() {
            for (skill, &level) in &a.skills {
                let next = self.skill_ids.len();
                let sid = *self.skill_ids.entry(skill.clone()).or_insert(next);
                if sid == self.skill_bits.len() {
                    self.skill_bits
                        .push(std::array::from_fn(|_| Bitset::new(n)));
                }
                for l in 0..usize::from(level) {
                    self.skill_bits[sid][l].insert(i);
                }
            }
            if let Some(team) = &a.team {
                self.team_bits
                    .entry(team.clone())
                    .or_insert_with(|| Bitset::new(n))
                    .insert(i);
            }
            for lang in &a.languages {
                self.lang_bits
                    .entry(lang.clone())
                    .or_insert_with(|| Bitset::new(n))
                    .insert(i);
            }
            let hours = a.hours.as_ref().map(|h| {
                let key = Arc::as_ptr(h) as *const () as usize;
                *schedule_ids.entry(key).or_insert_with(|| {
                    self.schedules.push(h.clone());
                    self.schedules.len() - 1
                })
            });
            self.hours_of.push(hours);
        }
        let skills = self.skill_ids.len();
        self.levels = vec![0; n * skills];
        for (i, a) in roster.associates.iter().enumerate() {
            for (skill, &level) in &a.skills {
                self.levels[i * skills + self.skill_ids[skill]] = level;
            }
        }
        self.roster = roster;
        for w in self.works.values() {
            let m = medium_index(w.medium);
            match &w.state {
                State::Assigned { associate } => {
                    if let Some(i) = self.roster.index_of(associate) {
                        self.people[i].load[m] += 1;
                    }
                }
                State::Offered { associate, .. } => {
                    if let Some(i) = self.roster.index_of(associate) {
                        self.people[i].offered[m] += 1;
                    }
                }
                State::Waiting => {}
            }
        }
        self.free = std::array::from_fn(|_| Bitset::new(n));
        for i in 0..n {
            self.refresh_free(i);
        }
        self.working = self.working_at(now);
    }

    /// Who is within working hours at `now` (each schedule asked once).
    fn working_at(&self, now: i64) -> Bitset {
        let at = utc(now);
        let open: Vec<bool> = self.schedules.iter().map(|s| s.is_open(at)).collect();
        let mut set = Bitset::new(self.roster.associates.len());
        for (i, h) in self.hours_of.iter().enumerate() {
            set.set(i, h.is_none_or(|h| open[h]));
        }
        set
    }

    fn refresh_free(&mut self, i: usize) {
        let a = &self.roster.associates[i];
        let p = &self.people[i];
        for (m, medium) in MEDIA.iter().enumerate() {
            let spare = p.load[m] + p.offered[m] < a.capacity.get(*medium);
            self.free[m].set(i, p.presence == Presence::Available && spare);
        }
    }

    // ----- commands -------------------------------------------------------

    /// Routes a newly committed inquiry.
    pub fn add(&mut self, new: NewWork, now: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.works.contains_key(&new.id) {
            return effects;
        }
        let id = new.id;
        let work = self.shared.work(new);
        if let Some(due) = work.sla_due {
            self.timers.insert((due, Timer::Sla, id));
        }
        self.works.insert(id, work);
        self.route_stored_waiting(id, now, &mut effects);
        effects
    }

    /// Routes a resolved inquiry that a reply reopened, as the store
    /// restored it (its requirements, SLA state and who passed on it, as a
    /// restart would). Whoever held it before becomes the customer's
    /// previous associate, so the sticky preference offers it to them
    /// first when they are eligible.
    pub fn reopen(&mut self, r: RestoredWork, now: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let id = r.work.id;
        if self.works.contains_key(&id) {
            return effects;
        }
        if let (Some(customer), Some(previous)) = (&r.work.customer_key, &r.assignee) {
            let previous = self.shared.interner.name(previous);
            self.sticky.insert(customer_hash(customer), (previous, now));
        }
        // Resolved and reopened: no offer is open and nobody holds it, so
        // it restores as waiting.
        let mut work = self.shared.restored(r);
        work.relaxed = steps(self.effective(&work, now).steps_taken);
        if let Some(due) = work.sla_due
            && !work.responded
            && !work.sla_breached
        {
            self.timers.insert((due, Timer::Sla, id));
        }
        self.works.insert(id, work);
        self.route_stored_waiting(id, now, &mut effects);
        effects
    }

    pub fn accept(&mut self, id: i64, who: &str, now: i64) -> Result<Vec<Effect>, RoutingError> {
        let work = self.works.get(&id).ok_or(RoutingError::NotOpen)?;
        match &work.state {
            State::Offered {
                associate,
                expires_at,
                ..
            } if **associate == *who => {
                if *expires_at <= now {
                    return Err(RoutingError::OfferExpired);
                }
            }
            State::Assigned { associate } if **associate == *who => return Ok(Vec::new()),
            _ if work.has_expired(who) => return Err(RoutingError::OfferExpired),
            _ => return Err(RoutingError::NotYours),
        }
        let mut effects = Vec::new();
        self.close_offer(id, OfferState::Accepted, now, &mut effects);
        self.assign(id, who, false, now, &mut effects);
        Ok(effects)
    }

    pub fn decline(&mut self, id: i64, who: &str, now: i64) -> Result<Vec<Effect>, RoutingError> {
        let work = self.works.get(&id).ok_or(RoutingError::NotOpen)?;
        match &work.state {
            State::Offered { associate, .. } if **associate == *who => {}
            _ if work.has_expired(who) => return Err(RoutingError::OfferExpired),
            _ => return Err(RoutingError::NotYours),
        }
        let mut effects = Vec::new();
        self.close_offer(id, OfferState::Declined, now, &mut effects);
        self.route(id, now, &mut effects);
        self.backfill_id(who, now, &mut effects);
        Ok(effects)
    }

    /// Resolves an inquiry. `who` is the acting associate, or `None` for ops,
    /// who may close anything (spam, duplicates) whatever its state.
    pub fn resolve(
        &mut self,
        id: i64,
        who: Option<&str>,
        note: Option<&str>,
        now: i64,
    ) -> Result<Vec<Effect>, RoutingError> {
        let holder = self.checked_holder(id, who)?;
        let mut effects = Vec::new();
        self.close_offer(id, OfferState::Withdrawn, now, &mut effects);
        let work = self.works.remove(&id).expect("checked above");
        self.waiting.remove(&queue_key(&work));
        if let Some(a) = &holder {
            self.release(a, work.medium);
        }
        self.shared.forget(work);
        effects.push(Effect::Status {
            inquiry_id: id,
            status: Status::Resolved,
            assignee: holder.clone(),
            waiting_since: None,
        });
        effects.push(Effect::Event {
            inquiry_id: id,
            kind: "resolved",
            detail: json!({ "by": who.unwrap_or("ops"), "associate": holder, "note": note }),
        });
        if let Some(a) = holder {
            self.backfill_id(&a, now, &mut effects);
        }
        Ok(effects)
    }

    /// Who holds inquiry `id` (if assigned), once `who` is allowed to act
    /// on it: the holder themselves, or ops (`None`).
    fn checked_holder(&self, id: i64, who: Option<&str>) -> Result<Option<String>, RoutingError> {
        let work = self.works.get(&id).ok_or(RoutingError::NotOpen)?;
        let holder = match &work.state {
            State::Assigned { associate } => Some(associate.to_string()),
            _ => None,
        };
        match who {
            Some(who) if holder.as_deref() != Some(who) => Err(RoutingError::NotYours),
            _ => Ok(holder),
        }
    }

    /// Hands an assigned inquiry to `to`, or back to the queue when `None`.
    pub fn transfer(
        &mut self,
        id: i64,
        who: Option<&str>,
        to: Option<&str>,
        note: Option<&str>,
        now: i64,
    ) -> Result<Vec<Effect>, RoutingError> {
        let holder = self.checked_holder(id, who)?;
        let medium = self.works[&id].medium;
        let target = match to {
            Some(t) => {
                let i = self
                    .roster
                    .index_of(t)
                    .ok_or_else(|| RoutingError::UnknownAssociate(t.to_owned()))?;
                if holder.as_deref() == Some(t) {
                    return Err(RoutingError::Conflict(format!("{t} already holds it")));
                }
                let p = &self.people[i];
                let m = medium_index(medium);
                if matches!(p.presence, Presence::Away | Presence::Offline) {
                    return Err(RoutingError::Conflict(format!(
                        "{t} is {}",
                        p.presence.as_str()
                    )));
                }
                if p.load[m] + p.offered[m] >= self.roster.associates[i].capacity.get(medium) {
                    return Err(RoutingError::Conflict(format!(
                        "{t} has no spare {} capacity",
                        medium.as_str()
                    )));
                }
                Some(t.to_owned())
            }
            None => None,
        };
        let mut effects = Vec::new();
        self.close_offer(id, OfferState::Withdrawn, now, &mut effects);
        if let Some(a) = &holder {
            self.release(a, medium);
            let a = self.shared.interner.name(a);
            self.works.get_mut(&id).expect("checked").pass(&a, false);
        }
        effects.push(Effect::Event {
            inquiry_id: id,
            kind: "transferred",
            detail: json!({
                "by": who.unwrap_or("ops"), "from": holder, "to": target.as_deref().unwrap_or("queue"), "note": note,
            }),
        });
        match &target {
            Some(t) => self.assign(id, t, true, now, &mut effects),
            None => {
                let work = self.works.get_mut(&id).expect("checked");
                work.state = State::Waiting;
                work.waiting_since = now;
                work.relaxed = 0;
                self.route(id, now, &mut effects);
            }
        }
        if let Some(a) = holder {
            self.backfill_id(&a, now, &mut effects);
        }
        Ok(effects)
    }

    pub fn set_presence(
        &mut self,
        who: &str,
        presence: Presence,
        now: i64,
    ) -> Result<Vec<Effect>, RoutingError> {
        let i = self
            .roster
            .index_of(who)
            .ok_or_else(|| RoutingError::UnknownAssociate(who.to_owned()))?;
        let mut effects = vec![Effect::Presence {
            associate: who.to_owned(),
            presence,
            since: now,
        }];
        self.people[i].presence = presence;
        self.refresh_free(i);
        if matches!(presence, Presence::Away | Presence::Offline) {
            let theirs: Vec<i64> = self
                .works
                .values()
                .filter(
                    |w| matches!(&w.state, State::Offered { associate, .. } if **associate == *who),
                )
                .map(|w| w.id)
                .collect();
            for id in theirs {
                self.close_offer(id, OfferState::Withdrawn, now, &mut effects);
                self.route(id, now, &mut effects);
            }
        }
        if presence == Presence::Available {
            self.backfill(i, now, &mut effects);
        }
        Ok(effects)
    }

    /// Fires every timer due at `now`: offer timeouts, relaxation steps,
    /// SLA deadlines.
    ///
    /// At most [`MAX_TIMERS_PER_TICK`] fire per call, so a restart with a
    /// large backlog is worked off in bounded rounds: call again while
    /// [`Engine::next_deadline`] is due.
    pub fn tick(&mut self, now: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut fired = 0;
        while let Some(&first) = self.timers.first() {
            if first.0 > now || fired == MAX_TIMERS_PER_TICK {
                break;
            }
            fired += 1;
            self.timers.pop_first();
            let (due, timer, id) = first;
            match timer {
                Timer::OfferExpiry => self.expire(id, due, now, &mut effects),
                Timer::Relax => {
                    if self
                        .works
                        .get(&id)
                        .is_some_and(|w| matches!(w.state, State::Waiting))
                    {
                        self.route(id, now, &mut effects);
                    }
                }
                Timer::Sla => self.check_sla(id, now, &mut effects),
            }
        }
        effects
    }

    /// When the next timer is due, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        self.timers.first().map(|t| t.0)
    }

    /// Backfills associates whose working hours began since the last
    /// rescan: the one change that arrives without an event. Cheap when
    /// nothing changed, whatever the size of the queue.
    pub fn rescan(&mut self, now: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let working = self.working_at(now);
        let began: Vec<usize> = working
            .iter()
            .filter(|&i| !self.working.contains(i))
            .collect();
        self.working = working;
        if self.waiting.is_empty() {
            return effects;
        }
        for i in began {
            if self.people[i].presence == Presence::Available {
                self.backfill(i, now, &mut effects);
            }
        }
        effects
    }

    /// Decides for one inquiry without changing anything (`switchboard
    /// route`, and the bench). Uses the fast path.
    pub fn decide(&self, new: &NewWork, now: i64) -> Decision {
        self.decision(&Work::transient(new), now)
    }

    /// The same decision by checking every associate one by one: the
    /// baseline the bench compares against, and a cross-check in tests.
    pub fn decide_naive(&self, new: &NewWork, now: i64) -> Option<String> {
        let work = Work::transient(new);
        let eff = self.effective(&work, now);
        let mut best: Option<Scored> = None;
        for i in 0..self.roster.associates.len() {
            if self.exclusion(i, &work, &eff, now).is_none() {
                let s = self.score(i, &work, &eff, now);
                if best.as_ref().is_none_or(|b| better(&s, b, &self.people)) {
                    best = Some(s);
                }
            }
        }
        best.map(|b| self.roster.associates[b.index].id.clone())
    }

    // ----- views ----------------------------------------------------------

    /// Waiting inquiries in the order they will be offered.
    pub fn queue(&self, now: i64) -> Vec<Value> {
        self.waiting
            .iter()
            .filter_map(|k| self.works.get(&k.3))
            .map(|w| {
                let eff = self.effective(w, now);
                json!({
                    "inquiry": Reference::from_id(w.id),
                    "urgency": w.urgency,
                    "medium": w.medium,
                    "waiting_secs": (now - w.waiting_since).max(0) / 1000,
                    "sla_due_at": w.sla_due.map(ms_to_rfc3339),
                    "sla_secs_left": w.sla_due.map(|d| (d - now) / 1000),
                    "sla_breached": w.sla_breached,
                    "requirements": { "skills": eff.skills, "language": eff.language, "queue": eff.queue },
                    "relaxation_step": eff.step,
                })
            })
            .collect()
    }

    /// The roster with presence and load.
    pub fn associates(&self) -> Vec<Value> {
        self.roster
            .associates
            .iter()
            .zip(&self.people)
            .map(|(a, p)| {
                let media = |v: &[u16; 5]| -> BTreeMap<&'static str, u16> {
                    MEDIA
                        .iter()
                        .map(|m| (m.as_str(), v[medium_index(*m)]))
                        .collect()
                };
                json!({
                    "id": a.id, "name": a.name, "team": a.team, "languages": a.languages,
                    "skills": a.skills, "presence": p.presence, "load": media(&p.load),
                    "offered": media(&p.offered),
                    "capacity": media(&MEDIA.map(|m| a.capacity.get(m))),
                    "hours": a.hours_name,
                })
            })
            .collect()
    }

    /// Open offers to `who`: `(reference, inquiry id, expires_at)`.
    pub fn offers_of(&self, who: &str) -> Vec<(String, i64, i64)> {
        let mut v: Vec<_> = self
            .works
            .values()
            .filter_map(|w| match &w.state {
                State::Offered {
                    associate,
                    expires_at,
                    ..
                } if **associate == *who => Some((Reference::from_id(w.id).0, w.id, *expires_at)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|o| o.1);
        v
    }

    /// Inquiries assigned to `who`: `(reference, inquiry id)`.
    pub fn assignments_of(&self, who: &str) -> Vec<(String, i64)> {
        let mut v: Vec<_> = self
            .works
            .values()
            .filter_map(|w| match &w.state {
                State::Assigned { associate } if **associate == *who => {
                    Some((Reference::from_id(w.id).0, w.id))
                }
                _ => None,
            })
            .collect();
        v.sort_by_key(|o| o.1);
        v
    }

    /// Who holds or is offered inquiry `id`, if anyone.
    pub fn holder(&self, id: i64) -> Option<&str> {
        match &self.works.get(&id)?.state {
            State::Offered { associate, .. } | State::Assigned { associate } => Some(&**associate),
            State::Waiting => None,
        }
    }

    pub fn open_count(&self) -> usize {
        self.works.len()
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    // ----- internals ------------------------------------------------------

    /// Offers `id` to the best eligible associate, or queues it.
    fn route(&mut self, id: i64, now: i64, effects: &mut Vec<Effect>) {
        self.route_as(id, now, effects, false);
    }

    /// [`Engine::route`] for an inquiry the store already holds as open
    /// with the engine's `waiting_since` (just opened, or reopened by the
    /// writer): queuing it writes no status, only the `queued` event.
    fn route_stored_waiting(&mut self, id: i64, now: i64, effects: &mut Vec<Effect>) {
        self.route_as(id, now, effects, true);
    }

    fn route_as(&mut self, id: i64, now: i64, effects: &mut Vec<Effect>, stored_waiting: bool) {
        let Some(work) = self.works.get(&id) else {
            return;
        };
        let found = self.find(work, now);
        let winner = self.winner(&found);
        let eff = &found.eff;
        let was_waiting_since = work.waiting_since;
        let already_queued = self.waiting.contains(&queue_key(work));
        if steps(eff.steps_taken) > work.relaxed {
            effects.push(Effect::Event {
                inquiry_id: id,
                kind: "relaxed",
                detail: json!({
                    "step": eff.step, "skills": eff.skills, "language": eff.language, "queue": eff.queue,
                }),
            });
            self.works.get_mut(&id).expect("present").relaxed = steps(eff.steps_taken);
        }
        match winner {
            Some(winner) => {
                let explanation = self.explain(&self.works[&id], now, &found);
                let key = queue_key(&self.works[&id]);
                self.waiting.remove(&key);
                self.offer(id, &winner, explanation, now, effects);
            }
            None => {
                if !already_queued {
                    // Explained once, when it joins the queue; retries at
                    // relaxation steps record only the step taken.
                    let explanation = self.explain(&self.works[&id], now, &found);
                    let work = self.works.get_mut(&id).expect("present");
                    work.state = State::Waiting;
                    self.waiting.insert(queue_key(work));
                    if !stored_waiting {
                        effects.push(Effect::Status {
                            inquiry_id: id,
                            status: Status::Open,
                            assignee: None,
                            waiting_since: Some(was_waiting_since),
                        });
                    }
                    effects.push(Effect::Event {
                        inquiry_id: id,
                        kind: "queued",
                        detail: explanation,
                    });
                }
                let work = &self.works[&id];
                if let Some(at) = self.next_relax_at(work, now) {
                    self.timers.insert((at, Timer::Relax, id));
                }
            }
        }
    }

    fn offer(
        &mut self,
        id: i64,
        who: &str,
        explanation: Value,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let i = self.roster.index_of(who).expect("winner is in the roster");
        let offer_id = self.next_offer_id;
        self.next_offer_id += 1;
        let associate = self.shared.interner.name(who);
        let work = self.works.get_mut(&id).expect("present");
        let timeout = self.config.offer_timeout.get(work.urgency);
        let expires_at = now + timeout.as_millis() as i64;
        work.state = State::Offered {
            offer_id,
            associate,
            expires_at,
        };
        let m = medium_index(work.medium);
        self.people[i].offered[m] += 1;
        self.refresh_free(i);
        self.timers.insert((expires_at, Timer::OfferExpiry, id));
        effects.push(Effect::Offer {
            offer_id,
            inquiry_id: id,
            associate: who.to_owned(),
            offered_at: now,
            expires_at,
        });
        effects.push(Effect::Status {
            inquiry_id: id,
            status: Status::Offered,
            assignee: None,
            waiting_since: None,
        });
        let mut detail = explanation;
        detail["offer_id"] = json!(offer_id);
        detail["expires_at"] = json!(ms_to_rfc3339(expires_at));
        effects.push(Effect::Event {
            inquiry_id: id,
            kind: "offered",
            detail,
        });
        if self.notifies(i) {
            effects.push(Effect::Notify {
                inquiry_id: id,
                associate: who.to_owned(),
                what: "offer",
                expires_at: Some(expires_at),
            });
        }
    }

    /// Ends the open offer of `id`, if any, freeing the capacity it held.
    fn close_offer(&mut self, id: i64, state: OfferState, now: i64, effects: &mut Vec<Effect>) {
        let Some(work) = self.works.get_mut(&id) else {
            return;
        };
        let State::Offered {
            offer_id,
            associate,
            ..
        } = work.state.clone()
        else {
            return;
        };
        work.state = State::Waiting;
        match state {
            OfferState::Declined => work.pass(&associate, false),
            OfferState::Expired => work.pass(&associate, true),
            OfferState::Accepted | OfferState::Withdrawn => {}
        }
        let m = medium_index(work.medium);
        if let Some(i) = self.roster.index_of(&associate) {
            self.people[i].offered[m] = self.people[i].offered[m].saturating_sub(1);
            self.refresh_free(i);
        }
        effects.push(Effect::OfferClosed {
            offer_id,
            state,
            at: now,
        });
        if state != OfferState::Accepted {
            effects.push(Effect::Event {
                inquiry_id: id,
                kind: match state {
                    OfferState::Declined => "declined",
                    OfferState::Expired => "offer_expired",
                    _ => "offer_withdrawn",
                },
                detail: json!({ "offer_id": offer_id, "associate": associate }),
            });
        }
    }

    fn assign(
        &mut self,
        id: i64,
        who: &str,
        via_transfer: bool,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let associate = self.shared.interner.name(who);
        let work = self.works.get_mut(&id).expect("present");
        work.state = State::Assigned {
            associate: associate.clone(),
        };
        let m = medium_index(work.medium);
        let first = !work.responded;
        work.responded = true;
        let customer = work.customer;
        if let Some(i) = self.roster.index_of(who) {
            self.people[i].load[m] += 1;
            self.people[i].idle_since = now;
            self.refresh_free(i);
        }
        if let Some(c) = customer {
            self.sticky.insert(c, (associate, now));
        }
        effects.push(Effect::Status {
            inquiry_id: id,
            status: Status::Assigned,
            assignee: Some(who.to_owned()),
            waiting_since: None,
        });
        if first {
            effects.push(Effect::FirstResponse {
                inquiry_id: id,
                at: now,
            });
        }
        effects.push(Effect::IdleSince {
            associate: who.to_owned(),
            at: now,
        });
        effects.push(Effect::Event {
            inquiry_id: id,
            kind: "assigned",
            detail: json!({ "associate": who }),
        });
        // Accepting needs no notice: the associate did it themselves.
        if via_transfer && self.roster.index_of(who).is_some_and(|i| self.notifies(i)) {
            effects.push(Effect::Notify {
                inquiry_id: id,
                associate: who.to_owned(),
                what: "assignment",
                expires_at: None,
            });
        }
    }

    fn notifies(&self, i: usize) -> bool {
        self.roster.associates[i].notify != super::roster::NotifyVia::None
    }

    fn release(&mut self, who: &str, medium: Medium) {
        if let Some(i) = self.roster.index_of(who) {
            let m = medium_index(medium);
            self.people[i].load[m] = self.people[i].load[m].saturating_sub(1);
            self.refresh_free(i);
        }
    }

    /// Expires the offer of `id` due at `due`, if it is still open.
    fn expire(&mut self, id: i64, due: i64, now: i64, effects: &mut Vec<Effect>) {
        let Some(work) = self.works.get(&id) else {
            return;
        };
        let State::Offered {
            expires_at,
            associate,
            ..
        } = &work.state
        else {
            return;
        };
        if *expires_at != due {
            return;
        }
        let associate = associate.clone();
        self.close_offer(id, OfferState::Expired, now, effects);
        self.route(id, now, effects);
        self.backfill_id(&associate, now, effects);
    }

    fn check_sla(&mut self, id: i64, now: i64, effects: &mut Vec<Effect>) {
        let Some(work) = self.works.get_mut(&id) else {
            return;
        };
        if work.responded || work.sla_breached {
            return;
        }
        work.sla_breached = true;
        metrics::counter!("switchboard_sla_breaches_total", "urgency" => work.urgency.as_str())
            .increment(1);
        effects.push(Effect::SlaBreached { inquiry_id: id });
        effects.push(Effect::Event {
            inquiry_id: id,
            kind: "sla_breached",
            detail: json!({
                "due_at": work.sla_due.map(ms_to_rfc3339),
                "urgency": work.urgency,
                "at": ms_to_rfc3339(now),
            }),
        });
    }

    fn backfill_id(&mut self, who: &str, now: i64, effects: &mut Vec<Effect>) {
        if let Some(i) = self.roster.index_of(who) {
            self.backfill(i, now, effects);
        }
    }

    /// Offers associate `i` the best waiting inquiries they qualify for,
    /// while they have room.
    fn backfill(&mut self, i: usize, now: i64, effects: &mut Vec<Effect>) {
        if self.people[i].presence != Presence::Available
            || !self.roster.associates[i].works_at(utc(now))
        {
            return;
        }
        loop {
            if !(0..5).any(|m| self.free[m].contains(i)) {
                return;
            }
            let found = self.waiting.iter().find_map(|k| {
                let w = self.works.get(&k.3)?;
                self.qualifies(i, w, now).then_some(k.3)
            });
            let Some(id) = found else {
                return;
            };
            let work = &self.works[&id];
            self.waiting.remove(&queue_key(work));
            let mut explanation = self.decision(work, now).explanation;
            explanation["backfill"] = json!(self.roster.associates[i].id);
            explanation["winner"] = json!(self.roster.associates[i].id);
            let who = self.roster.associates[i].id.clone();
            self.offer(id, &who, explanation, now, effects);
        }
    }

    fn schedule(&mut self, work: &Work, now: i64) {
        let id = work.id;
        if let State::Offered { expires_at, .. } = &work.state {
            self.timers.insert((*expires_at, Timer::OfferExpiry, id));
        }
        if let Some(due) = work.sla_due
            && !work.responded
            && !work.sla_breached
        {
            self.timers.insert((due, Timer::Sla, id));
        }
        if matches!(work.state, State::Waiting) {
            // Retried at once after a restart, then at each step.
            self.timers.insert((now, Timer::Relax, id));
        }
    }

    fn next_relax_at(&self, work: &Work, now: i64) -> Option<i64> {
        work.profile
            .relaxation
            .iter()
            .map(|s| work.waiting_since + s.after.as_millis() as i64)
            .filter(|&at| at > now)
            .min()
    }

    fn effective(&self, work: &Work, now: i64) -> Effective {
        let profile = &work.profile;
        let mut eff = Effective {
            skills: work.skill_map(),
            language: profile.language.as_deref().map(str::to_owned),
            queue: profile.queue.as_deref().map(str::to_owned),
            step: None,
            steps_taken: 0,
        };
        // Each step holds everything in force from its `after` on (the
        // rules store ladders cumulatively): only the latest one reached
        // applies, to the original requirement.
        let reached = self.reached(work, now);
        if let Some((n, step)) = reached {
            if step.drop_language {
                eff.language = None;
            }
            if step.lower_skill_levels > 0 {
                for level in eff.skills.values_mut() {
                    *level = level.saturating_sub(step.lower_skill_levels).max(1);
                }
            }
            if step.drop_skills {
                eff.skills.clear();
            }
            eff.step = Some(step.name.clone());
            eff.steps_taken = n + 1;
        }
        eff
    }

    /// The latest relaxation step `work` has reached, with its index.
    fn reached<'w>(&self, work: &'w Work, now: i64) -> Option<(usize, &'w super::RelaxStep)> {
        let waited = now - work.waiting_since;
        work.profile
            .relaxation
            .iter()
            .enumerate()
            .rfind(|(_, step)| step.after.as_millis() as i64 <= waited)
    }

    /// Whether associate `i`, known to be working now, can take `work`:
    /// [`Engine::exclusion`] without building reasons, for backfill, which
    /// asks it of every waiting inquiry.
    fn qualifies(&self, i: usize, work: &Work, now: i64) -> bool {
        let a = &self.roster.associates[i];
        let req = &*work.profile;
        if !self.free[medium_index(work.medium)].contains(i) {
            return false;
        }
        if let Some(q) = &req.queue
            && a.team.as_deref() != Some(&**q)
        {
            return false;
        }
        let step = self.reached(work, now).map(|(_, s)| s);
        if !step.is_some_and(|s| s.drop_skills) {
            let lower = step.map_or(0, |s| s.lower_skill_levels);
            for (skill, min) in work.skills.iter() {
                let need = min.saturating_sub(lower).max(1);
                if self.level(i, skill) < need {
                    return false;
                }
            }
        }
        if !step.is_some_and(|s| s.drop_language)
            && let Some(lang) = &req.language
            && !a.languages.iter().any(|l| **l == **lang)
        {
            return false;
        }
        !work.has_passed(&a.id)
    }

    fn level(&self, i: usize, skill: &str) -> u8 {
        match self.skill_ids.get(skill) {
            Some(&sid) => self.levels[i * self.skill_ids.len() + sid],
            None => 0,
        }
    }

    /// Why associate `i` cannot take `work` now, or `None` if they can.
    /// The slow, readable statement of eligibility.
    fn exclusion(&self, i: usize, work: &Work, eff: &Effective, now: i64) -> Option<String> {
        let a = &self.roster.associates[i];
        let p = &self.people[i];
        let medium = work.medium;
        let m = medium_index(medium);
        if p.presence != Presence::Available {
            return Some(p.presence.as_str().to_owned());
        }
        if !a.works_at(utc(now)) {
            return Some("outside working hours".into());
        }
        if let Some(q) = &eff.queue
            && a.team.as_ref() != Some(q)
        {
            return Some(format!("not in team {q}"));
        }
        for (skill, &min) in &eff.skills {
            let has = a.skills.get(skill).copied().unwrap_or(0);
            if has < min {
                return Some(format!("{skill} {has} < {min}"));
            }
        }
        if let Some(lang) = &eff.language
            && !a.languages.iter().any(|l| l == lang)
        {
            return Some(format!("does not speak {lang}"));
        }
        if p.load[m] + p.offered[m] >= a.capacity.get(medium) {
            return Some(format!("no spare {} capacity", medium.as_str()));
        }
        if work.has_passed(&a.id) {
            return Some("already passed on this inquiry".into());
        }
        None
    }

    /// The customer's previous associate, if still within the window.
    fn sticky_for(&self, work: &Work, now: i64) -> Option<usize> {
        let window = self.config.sticky_window.as_millis() as i64;
        let (who, at) = self.sticky.get(&work.customer?)?;
        (now - at <= window).then(|| self.roster.index_of(who))?
    }

    fn score(&self, i: usize, work: &Work, eff: &Effective, now: i64) -> Scored {
        self.score_with(i, work, eff, now, self.sticky_for(work, now))
    }

    fn score_with(
        &self,
        i: usize,
        work: &Work,
        eff: &Effective,
        now: i64,
        sticky: Option<usize>,
    ) -> Scored {
        let a = &self.roster.associates[i];
        let p = &self.people[i];
        let w = &self.config.weights;
        let m = medium_index(work.medium);
        let sticky = sticky == Some(i);
        let skill_fit = if eff.skills.is_empty() {
            0.0
        } else {
            eff.skills
                .keys()
                .map(|s| f64::from(self.level(i, s)) / 5.0)
                .sum::<f64>()
                / eff.skills.len() as f64
        };
        let cap = f64::from(a.capacity.get(work.medium).max(1));
        let load = f64::from(p.load[m] + p.offered[m]) / cap;
        let idle_secs = (now - p.idle_since).max(0) / 1000;
        let idle = (idle_secs as f64 / 3600.0).min(1.0);
        let score = w.sticky * f64::from(u8::from(sticky))
            + w.skill * skill_fit
            + w.load * (1.0 - load)
            + w.idle * idle;
        Scored {
            index: i,
            score,
            sticky,
            skill_fit,
            load,
            idle_secs,
        }
    }

    /// The eligible set by bitset intersection, with the count left after
    /// each filter for the explanation.
    fn eligible(&self, work: &Work, eff: &Effective) -> (Bitset, Vec<(String, usize)>) {
        let n = self.roster.associates.len();
        let m = medium_index(work.medium);
        let mut stages = vec![("roster".to_owned(), n)];
        let mut set = self.free[m].clone();
        stages.push((
            format!("available with {} capacity", work.medium.as_str()),
            set.count(),
        ));
        if let Some(q) = &eff.queue {
            match self.team_bits.get(q) {
                Some(t) => set.intersect(t),
                None => set = Bitset::new(n),
            }
            stages.push((format!("in team {q}"), set.count()));
        }
        for (skill, &level) in &eff.skills {
            match self.skill_ids.get(skill) {
                Some(&sid) => {
                    set.intersect(&self.skill_bits[sid][usize::from(level.clamp(1, 5)) - 1])
                }
                None => set = Bitset::new(n),
            }
            stages.push((format!("{skill} >= {level}"), set.count()));
        }
        if let Some(lang) = &eff.language {
            match self.lang_bits.get(lang) {
                Some(l) => set.intersect(l),
                None => set = Bitset::new(n),
            }
            stages.push((format!("speaks {lang}"), set.count()));
        }
        (set, stages)
    }

    /// The best candidates for `work` now, best first.
    fn find(&self, work: &Work, now: i64) -> Found {
        let eff = self.effective(work, now);
        let (set, stages) = self.eligible(work, &eff);
        // The bitsets settled presence, capacity, team, skills and language;
        // what is left per candidate is working hours and "passed".
        let at = utc(now);
        let mut open: Vec<Option<bool>> = vec![None; self.schedules.len()];
        let sticky = self.sticky_for(work, now);
        let mut top: Vec<Scored> = Vec::with_capacity(SHOWN_CANDIDATES + 1);
        let mut eligible = 0usize;
        for i in set.iter() {
            if let Some(h) = self.hours_of[i] {
                let is_open = *open[h].get_or_insert_with(|| self.schedules[h].is_open(at));
                if !is_open {
                    continue;
                }
            }
            // Checked first: the id is another cache line per candidate.
            if work.passed.is_some() && work.has_passed(&self.roster.associates[i].id) {
                continue;
            }
            eligible += 1;
            let s = self.score_with(i, work, &eff, now, sticky);
            if top.len() < SHOWN_CANDIDATES || better(&s, &top[top.len() - 1], &self.people) {
                let at = top
                    .iter()
                    .position(|t| better(&s, t, &self.people))
                    .unwrap_or(top.len());
                top.insert(at, s);
                top.truncate(SHOWN_CANDIDATES);
            }
        }
        Found {
            eff,
            top,
            eligible,
            stages,
        }
    }

    fn winner(&self, found: &Found) -> Option<String> {
        found
            .top
            .first()
            .map(|s| self.roster.associates[s.index].id.clone())
    }

    /// The explanation of a decision: rules, requirement in force, filters
    /// with what each left, the best candidates with their score parts, and
    /// (for small rosters) why each other associate was excluded.
    fn explain(&self, work: &Work, now: i64, found: &Found) -> Value {
        let eff = &found.eff;
        let candidates: Vec<Value> = found
            .top
            .iter()
            .map(|s| {
                json!({
                    "associate": self.roster.associates[s.index].id,
                    "score": (s.score * 1000.0).round() / 1000.0,
                    "sticky": s.sticky,
                    "skill_fit": (s.skill_fit * 1000.0).round() / 1000.0,
                    "load": (s.load * 1000.0).round() / 1000.0,
                    // null: never had work since the store began.
                    "idle_secs": (self.people[s.index].idle_since > 0).then_some(s.idle_secs),
                })
            })
            .collect();
        let mut explanation = json!({
            "rules": work.profile.rules,
            "urgency": work.urgency,
            "medium": work.medium,
            "requirements": { "skills": eff.skills, "language": eff.language, "queue": eff.queue },
            "relaxation_step": eff.step,
            "weights": self.config.weights,
            "eligible": found.eligible,
            "candidates": candidates,
            "filters": found.stages.iter().map(|(f, n)| json!({ "filter": f, "left": n })).collect::<Vec<_>>(),
            "winner": self.winner(found),
        });
        if self.roster.associates.len() <= self.config.explain_limit {
            let excluded: Vec<Value> = (0..self.roster.associates.len())
                .filter_map(|i| {
                    self.exclusion(i, work, eff, now).map(|reason| {
                        json!({ "associate": self.roster.associates[i].id, "reason": reason })
                    })
                })
                .collect();
            explanation["excluded"] = json!(excluded);
        }
        explanation
    }

    fn decision(&self, work: &Work, now: i64) -> Decision {
        let found = self.find(work, now);
        Decision {
            winner: self.winner(&found),
            explanation: self.explain(work, now, &found),
        }
    }
}

/// What [`Engine::find`] found.
struct Found {
    eff: Effective,
    top: Vec<Scored>,
    eligible: usize,
    stages: Vec<(String, usize)>,
}

/// What about an associate decides which work fits them.
fn fingerprint(a: &super::roster::Associate) -> String {
    format!(
        "{:?}{:?}{:?}{:?}{:?}",
        a.skills, a.capacity, a.team, a.languages, a.hours_name
    )
}

/// Whether `a` ranks before `b`: higher score, then longer idle, then
/// roster order, so equal candidates are chosen the same way every time.
fn better(a: &Scored, b: &Scored, people: &[Person]) -> bool {
    if a.score != b.score {
        return a.score > b.score;
    }
    let (ia, ib) = (people[a.index].idle_since, people[b.index].idle_since);
    if ia != ib {
        return ia < ib;
    }
    a.index < b.index
}

fn queue_key(w: &Work) -> QueueKey {
    (
        w.urgency,
        w.sla_due.unwrap_or(i64::MAX),
        w.waiting_since,
        w.id,
    )
}

/// A count of relaxation steps as a work keeps it.
fn steps(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub fn ms_to_rfc3339(ms: i64) -> String {
    utc(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RelaxStep;
    use crate::routing::roster::{Associate, Capacity, NotifyVia, WorkingHours};
    use std::time::Duration;

    const MIN: i64 = 60_000;

    #[derive(Debug)]
    struct Closed;
    impl WorkingHours for Closed {
        fn is_open(&self, _: DateTime<Utc>) -> bool {
            false
        }
    }

    fn person(id: &str, skills: &[(&str, u8)], langs: &[&str], chat: u16) -> Associate {
        Associate {
            id: id.into(),
            name: id.into(),
            email: format!("{id}@x.example"),
            chat: None,
            team: Some("desk".into()),
            languages: langs.iter().map(|l| l.to_string()).collect(),
            skills: skills.iter().map(|(s, l)| (s.to_string(), *l)).collect(),
            capacity: Capacity {
                email: 2,
                sms: 0,
                voice: 0,
                chat,
                generic: 2,
            },
            hours: None,
            hours_name: None,
            notify: NotifyVia::None,
            token_hash: None,
        }
    }

    fn engine(people: Vec<Associate>) -> Engine {
        let config = RoutingConfig {
            initial_presence: Presence::Available,
            ..RoutingConfig::default()
        };
        Engine::new(
            config,
            Arc::new(Roster::from_associates(people)),
            Snapshot::default(),
            0,
        )
    }

    fn work(id: i64, skills: &[(&str, u8)], medium: Medium) -> NewWork {
        NewWork {
            id,
            medium,
            urgency: Urgency::Normal,
            customer_key: None,
            requirements: Requirements {
                skills: skills.iter().map(|(s, l)| (*s, *l)).collect(),
                ..Requirements::default()
            },
            sla_due: None,
            waiting_since: 0,
        }
    }

    fn offered_to(effects: &[Effect]) -> Vec<(i64, String)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Offer {
                    inquiry_id,
                    associate,
                    ..
                } => Some((*inquiry_id, associate.clone())),
                _ => None,
            })
            .collect()
    }

    fn event<'a>(effects: &'a [Effect], kind: &str) -> Option<&'a Value> {
        effects.iter().find_map(|e| match e {
            Effect::Event {
                kind: k, detail, ..
            } if *k == kind => Some(detail),
            _ => None,
        })
    }

    #[test]
    fn skills_filter_and_the_explanation_says_why() {
        let mut e = engine(vec![
            person("ben", &[("billing", 2)], &["en"], 2),
            person("anna", &[("billing", 4)], &["en"], 2),
        ]);
        let fx = e.add(work(1, &[("billing", 3)], Medium::Chat), 0);
        assert_eq!(offered_to(&fx), vec![(1, "anna".into())]);
        let why = event(&fx, "offered").unwrap();
        assert_eq!(why["winner"], "anna");
        assert_eq!(why["excluded"][0]["associate"], "ben");
        assert_eq!(why["excluded"][0]["reason"], "billing 2 < 3");
        assert_eq!(why["candidates"][0]["associate"], "anna");
        assert!(why["weights"]["sticky"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn capacity_holds_and_resolve_backfills() {
        let mut e = engine(vec![person("anna", &[], &["en"], 1)]);
        assert_eq!(offered_to(&e.add(work(1, &[], Medium::Chat), 0)).len(), 1);
        let fx = e.add(work(2, &[], Medium::Chat), 1);
        assert!(
            offered_to(&fx).is_empty(),
            "capacity 1 is taken by the open offer"
        );
        assert!(event(&fx, "queued").is_some());
        e.accept(1, "anna", 2).unwrap();
        assert_eq!(e.accept(2, "anna", 3), Err(RoutingError::NotYours));
        let fx = e.resolve(1, Some("anna"), None, 4).unwrap();
        assert_eq!(
            offered_to(&fx),
            vec![(2, "anna".into())],
            "backfill on resolve"
        );
        assert_eq!(e.waiting_count(), 0);
    }

    #[test]
    fn decline_and_timeout_offer_to_the_next_and_never_back() {
        let mut e = engine(vec![
            person("anna", &[("billing", 5)], &["en"], 2),
            person("ben", &[("billing", 4)], &["en"], 2),
            person("cem", &[("billing", 3)], &["en"], 2),
        ]);
        e.add(work(1, &[("billing", 1)], Medium::Chat), 0);
        let fx = e.decline(1, "anna", 1).unwrap();
        assert_eq!(offered_to(&fx), vec![(1, "ben".into())]);
        let timeout = RoutingConfig::default().offer_timeout.normal.as_millis() as i64;
        assert!(e.tick(timeout).is_empty(), "not yet due");
        let fx = e.tick(1 + timeout);
        assert!(event(&fx, "offer_expired").is_some());
        assert_eq!(offered_to(&fx), vec![(1, "cem".into())]);
        assert_eq!(
            e.accept(1, "ben", 2 + timeout),
            Err(RoutingError::OfferExpired)
        );
        assert_eq!(
            e.decline(1, "anna", 2 + timeout),
            Err(RoutingError::NotYours)
        );
        let fx = e.decline(1, "cem", 3 + timeout).unwrap();
        assert!(offered_to(&fx).is_empty(), "everyone passed: it waits");
        assert_eq!(e.waiting_count(), 1);
    }

    #[test]
    fn presence_and_hours_gate_offers() {
        let mut off_hours = person("night", &[], &["en"], 2);
        off_hours.hours = Some(Arc::new(Closed));
        let mut e = engine(vec![person("anna", &[], &["en"], 2), off_hours]);
        e.set_presence("anna", Presence::Away, 0).unwrap();
        let fx = e.add(work(1, &[], Medium::Chat), 0);
        assert!(offered_to(&fx).is_empty());
        let why = event(&fx, "queued").unwrap();
        let reasons: Vec<_> = why["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["reason"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(reasons, vec!["away", "outside working hours"]);
        let fx = e.set_presence("anna", Presence::Available, 5).unwrap();
        assert_eq!(
            offered_to(&fx),
            vec![(1, "anna".into())],
            "backfill on presence"
        );
        let fx = e.set_presence("anna", Presence::Offline, 6).unwrap();
        assert!(event(&fx, "offer_withdrawn").is_some());
        assert!(matches!(
            e.set_presence("zed", Presence::Away, 7),
            Err(RoutingError::UnknownAssociate(_))
        ));
    }

    #[derive(Debug)]
    struct Switch(std::sync::atomic::AtomicBool);
    impl WorkingHours for Switch {
        fn is_open(&self, _: DateTime<Utc>) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn a_rescan_backfills_those_whose_hours_began() {
        let hours = Arc::new(Switch(false.into()));
        let mut late = person("late", &[], &["en"], 2);
        late.hours = Some(hours.clone());
        let mut e = engine(vec![late]);
        assert!(offered_to(&e.add(work(1, &[], Medium::Chat), 0)).is_empty());
        assert!(e.rescan(1).is_empty(), "still closed: nothing to do");
        hours.0.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(offered_to(&e.rescan(2)), vec![(1, "late".into())]);
        assert!(e.rescan(3).is_empty(), "only a change of hours triggers it");
    }

    #[test]
    fn the_previous_associate_is_preferred_within_the_window() {
        let mut e = engine(vec![
            person("anna", &[("billing", 5)], &["en"], 3),
            person("ben", &[("billing", 3)], &["en"], 3),
        ]);
        let mut first = work(1, &[("billing", 1)], Medium::Chat);
        first.customer_key = Some("tel:+491701234567".into());
        e.add(first.clone(), 0);
        e.decline(1, "anna", 1).unwrap();
        e.accept(1, "ben", 2).unwrap();
        e.resolve(1, Some("ben"), None, 3).unwrap();
        let mut again = first.clone();
        again.id = 2;
        let fx = e.add(again.clone(), 4);
        assert_eq!(offered_to(&fx), vec![(2, "ben".into())]);
        assert_eq!(
            event(&fx, "offered").unwrap()["candidates"][0]["sticky"],
            true
        );
        let window = e.config().sticky_window.as_millis() as i64;
        again.id = 3;
        let fx = e.add(again, window + 10);
        assert_eq!(offered_to(&fx), vec![(3, "anna".into())], "window passed");
    }

    #[test]
    fn a_reopened_inquiry_goes_back_to_whoever_held_it() {
        let mut e = engine(vec![
            person("anna", &[("billing", 5)], &["en"], 3),
            person("ben", &[("billing", 3)], &["en"], 3),
        ]);
        let customer = "email:c@x.example";
        // The customer's latest assignment is anna's (inquiry 2) ...
        let mut other = work(2, &[("billing", 1)], Medium::Chat);
        other.customer_key = Some(customer.into());
        e.add(other.clone(), 0);
        e.accept(2, "anna", 1).unwrap();
        // ... but inquiry 1, resolved by ben and reopened by a reply, goes
        // back to ben although anna has the better skill fit.
        let mut reopened = work(1, &[("billing", 1)], Medium::Chat);
        reopened.customer_key = Some(customer.into());
        reopened.sla_due = Some(5);
        let restored = RestoredWork {
            work: reopened,
            status: Status::Open,
            assignee: Some("ben".into()),
            open_offer: None,
            declined: Vec::new(),
            expired: Vec::new(),
            responded: true,
            sla_breached: false,
        };
        let fx = e.reopen(restored.clone(), 10);
        assert_eq!(offered_to(&fx), vec![(1, "ben".into())]);
        assert_eq!(
            event(&fx, "offered").unwrap()["candidates"][0]["sticky"],
            true
        );
        assert!(
            e.reopen(restored, 11).is_empty(),
            "an inquiry the router holds is not taken twice"
        );
        e.accept(1, "ben", 12).unwrap();
        assert_eq!(e.holder(1), Some("ben"));
        // Its first-response SLA was met before it was resolved: the past
        // deadline is not a breach.
        assert!(event(&e.tick(20), "sla_breached").is_none());
        e.resolve(1, Some("ben"), None, 30).unwrap();
        assert_eq!(e.holder(1), None);
    }

    #[test]
    fn relaxation_widens_the_requirement_over_time() {
        let mut e = engine(vec![person("anna", &[("billing", 2)], &["en"], 2)]);
        let mut w = work(1, &[("billing", 3)], Medium::Chat);
        w.requirements.language = Some("de".into());
        w.requirements.relaxation = Arc::from(vec![
            RelaxStep {
                name: "any language".into(),
                after: Duration::from_secs(300),
                drop_language: true,
                lower_skill_levels: 0,
                drop_skills: false,
            },
            // Steps are cumulative: this one keeps the language dropped.
            RelaxStep {
                name: "one level lower".into(),
                after: Duration::from_secs(900),
                drop_language: true,
                lower_skill_levels: 1,
                drop_skills: false,
            },
        ]);
        assert!(offered_to(&e.add(w, 0)).is_empty());
        assert_eq!(e.next_deadline(), Some(5 * MIN));
        let fx = e.tick(5 * MIN);
        assert_eq!(event(&fx, "relaxed").unwrap()["step"], "any language");
        assert!(offered_to(&fx).is_empty(), "billing 2 < 3 still");
        let fx = e.tick(15 * MIN);
        assert_eq!(offered_to(&fx), vec![(1, "anna".into())]);
        assert_eq!(
            event(&fx, "offered").unwrap()["relaxation_step"],
            "one level lower"
        );
    }

    #[test]
    fn sla_breach_is_recorded_once_unless_answered_in_time() {
        let mut e = engine(vec![]);
        let mut late = work(1, &[], Medium::Email);
        late.sla_due = Some(10 * MIN);
        let mut answered = work(2, &[], Medium::Email);
        answered.sla_due = Some(10 * MIN);
        e.add(late, 0);
        e.add(answered, 0);
        // Ops resolves the second before its deadline.
        e.resolve(2, None, Some("spam"), MIN).unwrap();
        let fx = e.tick(10 * MIN);
        let breaches: Vec<_> = fx
            .iter()
            .filter(|x| matches!(x, Effect::SlaBreached { .. }))
            .collect();
        assert_eq!(breaches, vec![&Effect::SlaBreached { inquiry_id: 1 }]);
        assert!(e.tick(20 * MIN).is_empty());
    }

    #[test]
    fn transfer_to_a_colleague_or_back_to_the_queue() {
        let mut e = engine(vec![
            person("anna", &[("billing", 5)], &["en"], 2),
            person("ben", &[("billing", 1)], &["en"], 2),
            person("cem", &[], &["en"], 2),
        ]);
        e.add(work(1, &[], Medium::Chat), 0);
        e.accept(1, "anna", 1).unwrap();
        assert_eq!(
            e.transfer(1, Some("ben"), None, None, 2),
            Err(RoutingError::NotYours)
        );
        assert!(matches!(
            e.transfer(1, Some("anna"), Some("zed"), None, 2),
            Err(RoutingError::UnknownAssociate(_))
        ));
        e.transfer(1, Some("anna"), Some("ben"), Some("needs a colleague"), 3)
            .unwrap();
        assert_eq!(e.assignments_of("ben"), vec![(Reference::from_id(1).0, 1)]);
        // Those who handed it on are not offered it again.
        let fx = e.transfer(1, Some("ben"), None, None, 4).unwrap();
        assert_eq!(offered_to(&fx), vec![(1, "cem".into())]);
    }

    #[test]
    fn a_stale_offer_timer_never_expires_a_later_offer() {
        let mut e = engine(vec![
            person("anna", &[], &["en"], 2),
            person("ben", &[], &["en"], 2),
        ]);
        let timeout = RoutingConfig::default().offer_timeout.normal.as_millis() as i64;
        e.add(work(1, &[], Medium::Chat), 0);
        assert_eq!(e.holder(1), Some("anna"));
        e.accept(1, "anna", 1).unwrap();
        // Back to the queue and offered again later: the first offer's
        // timer is still set, the new offer is due later.
        let fx = e.transfer(1, None, None, None, 10).unwrap();
        assert_eq!(offered_to(&fx), vec![(1, "ben".into())]);
        assert!(
            e.tick(timeout).is_empty(),
            "the first offer's timer is stale"
        );
        assert_eq!(e.holder(1), Some("ben"));
        let fx = e.tick(10 + timeout);
        assert!(event(&fx, "offer_expired").is_some());
        // Declined and re-offered in the same millisecond: one timer for both,
        // due when the current offer is.
        e.add(work(2, &[], Medium::Chat), 20);
        let first = e.holder(2).unwrap().to_owned();
        e.decline(2, &first, 20).unwrap();
        let second = e.holder(2).map(str::to_owned);
        assert_ne!(second.as_deref(), Some(first.as_str()));
        let fx = e.tick(20 + timeout);
        assert_eq!(second.is_some(), event(&fx, "offer_expired").is_some());
    }

    #[test]
    fn profiles_are_shared_and_dropped_with_the_last_inquiry() {
        let mut e = engine(vec![person("anna", &[("billing", 3)], &["en"], 5)]);
        let with_language = |id| {
            let mut w = work(id, &[("billing", 2)], Medium::Chat);
            w.requirements.language = Some("en".into());
            w.customer_key = Some(format!("email:c{id}@example.org"));
            w
        };
        e.add(with_language(1), 0);
        e.add(with_language(2), 0);
        e.add(work(3, &[], Medium::Chat), 0);
        assert_eq!(e.shared.profiles.len(), 2);
        let shared = |e: &Engine| Arc::ptr_eq(&e.works[&1].profile, &e.works[&2].profile);
        assert!(shared(&e));
        assert!(Arc::ptr_eq(
            &e.works[&1].skills[0].0,
            &e.works[&2].skills[0].0
        ));
        e.resolve(1, None, None, 1).unwrap();
        assert_eq!(e.shared.profiles.len(), 2, "inquiry 2 still uses it");
        e.resolve(2, None, None, 1).unwrap();
        assert_eq!(e.shared.profiles.len(), 1);
        e.resolve(3, None, None, 1).unwrap();
        assert!(e.shared.profiles.is_empty());
    }

    #[test]
    fn fast_path_agrees_with_the_naive_scan() {
        let mut rng = fastrand::Rng::with_seed(7);
        let skills = ["billing", "fraud", "tech", "onboarding"];
        let people: Vec<_> = (0..300)
            .map(|i| {
                let mut own: Vec<(&str, u8)> = Vec::new();
                for s in skills {
                    if rng.bool() {
                        own.push((s, rng.u8(1..=5)));
                    }
                }
                let mut p = person(&format!("a{i}"), &own, &["en"], rng.u16(0..3));
                p.team = Some(["desk", "back"][rng.usize(0..2)].into());
                p
            })
            .collect();
        let mut e = engine(people);
        for i in 0..300 {
            if rng.u8(0..4) == 0 {
                e.set_presence(&format!("a{i}"), Presence::Away, 0).unwrap();
            }
        }
        for id in 0..200 {
            let mut need: Vec<(&str, u8)> = Vec::new();
            for s in skills {
                if rng.u8(0..3) == 0 {
                    need.push((s, rng.u8(1..=5)));
                }
            }
            let mut w = work(id, &need, Medium::Chat);
            if rng.bool() {
                w.requirements.queue = Some("desk".into());
            }
            assert_eq!(e.decide(&w, 0).winner, e.decide_naive(&w, 0), "{w:?}");
            e.add(w, 0);
        }
    }
}
