//! The ZooKeeper latch's decisions as a sans-IO machine ([`LatchMachine`]).
//!
//! One participant of one latch path: where its node stands, when it claims, how it repairs
//! a lost node or path, what it publishes, in which order. It reads no clock (time comes in
//! as `now`), touches no client and spawns nothing: its executor feeds it [`Input`]s (store
//! answers, watch events, what the session says, commands, timer expiry) and carries out its
//! [`Effect`]s in order (see [`succession_core::participant::Machine`]). The deterministic
//! simulation ([`crate::sim`]) drives it over a simulated ZooKeeper through seeded fault
//! schedules.
//!
//! It follows the tokio driver in `latch.rs` step by step (the same requests, the same
//! order, the same publications): a round checks (or creates, or adopts) our node, reads
//! the queue together with registering the own-node watch, then claims or watches the
//! predecessor. What the session decides for all its elections (when the connection is in
//! doubt, the grace of [`crate::ConnectionPolicy::Session`], replacing an expired session)
//! reaches it as [`SessionInput`].
//!
//! Rules that live here, once:
//! * stop leading before leaving: a resign or close publishes `Idle`/`Closed` before the
//!   delete of our node is asked for;
//! * in doubt means not leader: a session in doubt demotes a leader (unless in the grace
//!   the session grants), a lost session demotes everyone;
//! * `Leader` is published only after the claim's write was answered, with that write's
//!   zxid in the term, and only if the session we claimed on is still current;
//! * repair after any loss: a missing node or path is re-created while we want to take part.

pub mod ops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use succession_core::participant::{mix, Machine};
use succession_core::{ErrorKind, HealthLevel, Role, Term};

use crate::names::{self, protected_prefix, LOCK_NAME};
use crate::standing::{standing, Standing};
use ops::{Answer, NodeStat, Op, ReqId, WatchEvent, ZkErr};

/// Longest backoff between repair attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How many uuids of earlier sessions are remembered for cleanup.
const MAX_STALE: usize = 16;

/// Bugs the simulation plants to prove it catches them. `false` by default; only tests of
/// the simulation set them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Publish `Leader` when the claim is sent, before its answer.
    pub lead_before_claim: bool,
    /// Keep leading when the session says the connection is in doubt.
    pub suspended_leader_kept: bool,
    /// On a reconnect with our node still first, lead again under the previous grant's
    /// term without a new claim.
    pub reuse_term: bool,
    /// Ask for the delete of our node before publishing that we stopped leading.
    pub delete_before_publish: bool,
    /// Claim on the predecessor's deletion without asserting the nodes ahead gone.
    pub skip_ahead_assertion: bool,
}

/// A command from the election's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Take part.
    Join,
    /// Stop taking part: publish `Idle`, then delete our node. Answered with [`Effect::Done`].
    Resign,
    /// Leave for good: publish `Closed`, then delete our node. Answered with
    /// [`Effect::Done`], then [`Effect::Exit`].
    Close,
}

/// What the session tells each of its elections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// Connected: take part. A new `generation` is a new session (the nodes of the old one
    /// are not ours any more); a new `epoch` is a new client of the same session (its
    /// watches are gone).
    Connected {
        /// Increments with every new session.
        generation: u64,
        /// Increments with every new client.
        epoch: u64,
        /// The server's session id (owner of our ephemeral nodes).
        session_id: i64,
        /// The negotiated session timeout.
        timeout: Duration,
        /// Whether the session before this generation is certainly gone from the server
        /// (with its nodes): nothing of it to clean up.
        prev_gone: bool,
    },
    /// The connection is in doubt. `leaders_too`: demote a leader as well (false only during
    /// the grace of [`crate::ConnectionPolicy::Session`]).
    Doubt {
        /// Whether leaders step down too.
        leaders_too: bool,
    },
    /// No session (expired, or not yet connected): everyone is a candidate.
    Lost,
    /// A permanent failure of the session (credentials refused).
    Fatal(ErrorKind, String),
    /// The session was closed for good.
    Closed,
}

/// What the executor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A command from the handle.
    Command(Command),
    /// What the session says.
    Session(SessionInput),
    /// The answer to request `id`.
    Answer(ReqId, Result<Answer, ZkErr>),
    /// A one-shot watch registered by request `id` fired.
    Watch(ReqId, WatchEvent),
    /// The [`Effect::PublishLeader`] just executed was refused: the session it was decided
    /// on is no longer current and connected.
    LeaderRefused,
    /// [`Machine::next_deadline`] was reached.
    Timer,
    /// The slot asked for with [`Effect::Pace`] is held.
    Paced,
}

/// What the machine asks its executor to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish a role (`None`: keep the published role) with a health and its reason.
    Publish {
        /// The new role, if it changes.
        role: Option<Role>,
        /// The health.
        health: HealthLevel,
        /// Why.
        reason: Arc<str>,
    },
    /// Publish `Leader` with `term`, but only if session `generation` is still current and
    /// connected, atomically with the session's demotions; if not, feed
    /// [`Input::LeaderRefused`] at once.
    PublishLeader {
        /// The session generation the claim was made on.
        generation: u64,
        /// The grant's fencing term.
        term: Term,
        /// Why.
        reason: Arc<str>,
    },
    /// Ask for a slot among the session's rounds in flight (see `ROUNDS_IN_FLIGHT`); feed
    /// [`Input::Paced`] once held. Held until the machine is no longer in a round
    /// ([`LatchMachine::in_round`]).
    Pace,
    /// Send a request on the current session.
    Request {
        /// Its id (its answer and watch carry it).
        id: ReqId,
        /// What to ask.
        op: Op,
    },
    /// A permanent failure for `join` to return (published health first, `Idle` after).
    Fatal(ErrorKind, String),
    /// A resign or close finished.
    Done(Command, Result<(), (ErrorKind, String)>),
    /// A repair began (metric label).
    Repair(&'static str),
    /// A handover completed: our predecessor's deletion was seen at this instant.
    Handover(Instant),
    /// The machine is done (closed); drop it.
    Exit,
}

impl succession_core::participant::EffectKind for Effect {
    fn is_publication(&self) -> bool {
        matches!(self, Effect::Publish { .. } | Effect::PublishLeader { .. })
    }

    fn is_store(&self) -> bool {
        matches!(self, Effect::Request { .. })
    }
}

/// What a [`LatchMachine`] is doing ([`LatchMachine::activity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Activity {
    /// Not taking part, waiting for a command.
    Idle,
    /// A round waits for its slot.
    Pacing,
    /// In a round (requests in flight).
    Round,
    /// Waiting for a watch, the session or a command.
    Waiting,
    /// Backing off before a retry.
    Pausing,
    /// Waiting for the session to change.
    Session,
    /// Deleting its node for a resign or close.
    Deleting,
    /// Closed.
    Exited,
}

impl Activity {
    /// In words.
    pub fn describe(self) -> &'static str {
        match self {
            Activity::Idle => "idle, waiting for a command",
            Activity::Pacing => "waiting for a round slot",
            Activity::Round => "in a round",
            Activity::Waiting => "waiting for a watch or the session",
            Activity::Pausing => "pausing before a retry",
            Activity::Session => "waiting for the session to change",
            Activity::Deleting => "deleting its node for a command",
            Activity::Exited => "exited",
        }
    }
}

/// Our node in the latch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnNode {
    path: Arc<str>,
    name_at: usize,
}

impl OwnNode {
    fn new(path: String, name_len: usize) -> OwnNode {
        OwnNode {
            name_at: path.len() - name_len,
            path: path.into(),
        }
    }

    fn name(&self) -> &str {
        &self.path[self.name_at..]
    }
}

/// Where the session stands, as last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conn {
    Connecting,
    Connected,
    Suspended,
    Fatal(ErrorKind, String),
    Closed,
}

/// One step of the adoption scan: a child of ours to examine, or a leftover to delete.
#[derive(Debug, Clone)]
enum ScanItem {
    Examine(String),
    DeleteStale(String),
}

/// What a resign or close is doing to delete our node.
#[derive(Debug, Clone)]
enum Deleting {
    /// Listing the path for nodes of ours we may not know of.
    Listing(ReqId),
    /// Deleting `targets` (the first is in flight).
    Targets(Vec<String>, ReqId),
    /// Waiting before the next attempt.
    Pausing(Instant),
}

/// A request of a step and its answer once in (boxed: a step waits for one or two, and
/// each election keeps its machine as long as it takes part).
type Slot = (ReqId, Option<Box<Result<Answer, ZkErr>>>);

/// Where the participant is.
#[derive(Debug, Clone)]
enum Step {
    /// Not taking part.
    Idle,
    /// A round waits for its slot ([`Effect::Pace`]).
    Pacing,
    /// Waiting for the session (not connected).
    Session,
    /// Backing off until the instant.
    Pause(Instant),
    /// Waiting for an event: the predecessor's watch and whether its deletion makes us
    /// claim at once.
    Waiting(Option<(ReqId, bool)>),
    /// Round: checking our known node (with the own-node watch).
    Check(ReqId),
    /// Round: listing the path to adopt a node of ours or delete leftovers.
    Scan(ReqId),
    /// Round: working through the scan (`adopted` so far; the item in flight).
    Examine {
        todo: Vec<ScanItem>,
        cur: (ReqId, ScanItem),
        adopted: Option<OwnNode>,
    },
    /// Round: deleting a second node of ours found by the scan (failure fails the round).
    Second {
        id: ReqId,
        todo: Vec<ScanItem>,
        adopted: Option<OwnNode>,
    },
    /// Round: creating our node (attempt `tries`).
    Create { id: ReqId, tries: u32 },
    /// Round: creating the latch path (then attempt `tries + 1`).
    Mkdir { id: ReqId, tries: u32 },
    /// Round: registering the own-node watch and/or reading the queue.
    Read {
        node: OwnNode,
        first_next: bool,
        watch: Option<Slot>,
        list: Option<Slot>,
    },
    /// Round: watching the predecessor and reading the leader's id.
    Follow {
        pred: Slot,
        leader: Option<Slot>,
        claim_next: bool,
    },
    /// Round: the claim is in flight.
    Claim {
        id: ReqId,
        ahead: usize,
        first_next: bool,
        prev: Role,
    },
    /// A resign or close deleting our node.
    Delete {
        cmd: Command,
        generation: u64,
        deadline: Instant,
        known: Option<String>,
        prefix: Option<String>,
        pause: Duration,
        doing: Deleting,
    },
    /// Closed.
    Exited,
}

impl Step {
    /// Whether a round is under way (abandoned by a session change, a resign or a close).
    fn in_round(&self) -> bool {
        matches!(
            self,
            Step::Pacing
                | Step::Check(_)
                | Step::Scan(_)
                | Step::Examine { .. }
                | Step::Second { .. }
                | Step::Create { .. }
                | Step::Mkdir { .. }
                | Step::Read { .. }
                | Step::Follow { .. }
                | Step::Claim { .. }
        )
    }
}

/// One participant's decisions in one latch (see the module docs).
#[derive(Debug, Clone)]
pub struct LatchMachine {
    path: String,
    id: String,
    /// Seeds the protected-name uuids and the backoff jitter (deterministic from it).
    seed: u64,
    rng: u64,
    uuid_count: u64,
    uuid: String,
    stale: Vec<String>,
    generation: u64,
    epoch: u64,
    session_id: i64,
    timeout: Duration,
    conn: Conn,
    node: Option<OwnNode>,
    /// The request id of our pending own-node watch (while it has not fired, our node
    /// exists: its deletion is delivered before any later answer).
    own_watch: Option<ReqId>,
    vacated: Option<Instant>,
    ahead: Vec<String>,
    assert_ahead: bool,
    been_in_latch: bool,
    want: bool,
    unsure: bool,
    failures: u32,
    failing_since: Option<Instant>,
    /// The role last published.
    role: Role,
    /// The term of the last grant (for the planted term-reuse bug).
    last_term: Option<Term>,
    step: Step,
    /// Watch events that fired before the machine waited on them (a predecessor deleted
    /// while the leader's id was still being read): consumed when it does.
    early: Vec<(ReqId, WatchEvent)>,
    /// Commands received while a resign or close was deleting our node, in order.
    pending: std::collections::VecDeque<Command>,
    next_id: ReqId,
    /// Planted bugs (simulation tests only).
    #[doc(hidden)]
    pub bugs: Bugs,
}

/// A status reason shared by every election (no allocation per status change: memory per
/// election matters).
macro_rules! reason {
    ($s:literal) => {{
        static REASON: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        REASON.get_or_init(|| Arc::from($s)).clone()
    }};
}

impl LatchMachine {
    /// A participant `id` of the latch at `path`, not yet taking part. `seed` makes the
    /// protected-name uuids and the backoff jitter (give each participant its own, e.g.
    /// random in production, from the schedule's seed in a simulation).
    pub fn new(path: &str, id: &str, seed: u64) -> LatchMachine {
        let mut m = LatchMachine {
            path: path.to_owned(),
            id: id.to_owned(),
            seed,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            uuid_count: 0,
            uuid: String::new(),
            stale: Vec::new(),
            generation: 0,
            epoch: 0,
            session_id: 0,
            timeout: Duration::from_secs(10),
            conn: Conn::Connecting,
            node: None,
            own_watch: None,
            vacated: None,
            ahead: Vec::new(),
            assert_ahead: true,
            been_in_latch: false,
            want: false,
            unsure: false,
            failures: 0,
            failing_since: None,
            role: Role::Idle,
            last_term: None,
            step: Step::Idle,
            early: Vec::new(),
            pending: std::collections::VecDeque::new(),
            next_id: 0,
            bugs: Bugs::default(),
        };
        m.uuid = m.fresh_uuid();
        m
    }

    /// The role last published.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Our node's full path, if we hold one.
    pub fn node(&self) -> Option<&str> {
        self.node.as_ref().map(|n| &*n.path)
    }

    /// Our node's full path, shared (no copy).
    pub fn node_path(&self) -> Option<Arc<str>> {
        self.node.as_ref().map(|n| n.path.clone())
    }

    /// The session generation our node belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the machine has exited (closed).
    pub fn exited(&self) -> bool {
        matches!(self.step, Step::Exited)
    }

    /// Whether a round is under way (its slot, asked for with [`Effect::Pace`], is held
    /// until it is not).
    pub fn in_round(&self) -> bool {
        self.step.in_round()
    }

    /// What the machine is doing (for a diagnostic when it does not answer).
    pub fn activity(&self) -> Activity {
        match self.step {
            Step::Idle => Activity::Idle,
            Step::Pacing => Activity::Pacing,
            Step::Session => Activity::Session,
            Step::Pause(_) => Activity::Pausing,
            Step::Waiting(_) => Activity::Waiting,
            Step::Delete { .. } => Activity::Deleting,
            Step::Exited => Activity::Exited,
            _ => Activity::Round,
        }
    }

    /// Whether the watch registered by request `id` still matters (its event is fed as
    /// [`Input::Watch`]); an executor may drop the others.
    pub fn wants_watch(&self, id: ReqId) -> bool {
        if self.own_watch == Some(id) {
            return true;
        }
        match &self.step {
            Step::Waiting(Some((p, _))) => *p == id,
            Step::Follow { pred, .. } => pred.0 == id,
            Step::Read { watch, .. } => watch.as_ref().is_some_and(|w| w.0 == id),
            Step::Check(c) => *c == id,
            _ => false,
        }
    }

    /// The role as published by anyone (the executor's session also demotes, see
    /// [`SessionInput::Doubt`]): decisions use it.
    pub fn set_role(&mut self, role: Role) {
        self.role = role;
    }

    fn fresh_uuid(&mut self) -> String {
        self.uuid_count += 1;
        let a = mix(self.seed ^ self.uuid_count.wrapping_mul(0xa076_1d64_78bd_642f));
        let b = mix(a ^ 0xe703_7ed1_a0b4_28db);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn jitter(&mut self) -> f64 {
        self.rng = mix(self.rng);
        0.5 + (self.rng >> 11) as f64 / (1u64 << 53) as f64 * 0.5
    }

    fn request(&mut self, op: Op, fx: &mut Vec<Effect>) -> ReqId {
        self.next_id += 1;
        fx.push(Effect::Request {
            id: self.next_id,
            op,
        });
        self.next_id
    }

    fn publish(
        &mut self,
        role: Option<Role>,
        health: HealthLevel,
        reason: Arc<str>,
        fx: &mut Vec<Effect>,
    ) {
        if let Some(r) = &role {
            self.role = r.clone();
        }
        fx.push(Effect::Publish {
            role,
            health,
            reason,
        });
    }

    /// The event of watch `id` if it fired before we waited on it.
    fn take_early(&mut self, id: ReqId) -> Option<WatchEvent> {
        let i = self.early.iter().position(|(w, _)| *w == id)?;
        Some(self.early.remove(i).1)
    }

    fn forget_node(&mut self) -> Option<OwnNode> {
        self.own_watch = None;
        self.vacated = None;
        self.node.take()
    }

    /// A leader or follower becomes a candidate (degraded, for `reason`).
    fn step_down(&mut self, reason: Arc<str>, fx: &mut Vec<Effect>) {
        if self.role.is_leader() || self.role.is_joined() {
            self.publish(Some(Role::Candidate), HealthLevel::Degraded, reason, fx);
        }
    }

    fn node_lost(&mut self, fx: &mut Vec<Effect>) {
        self.forget_node();
        self.step_down(reason!("our latch node vanished; repairing"), fx);
    }

    fn set_node(&mut self, n: OwnNode) {
        self.been_in_latch = true;
        self.node = Some(n);
    }

    fn new_session(&mut self, generation: u64, ours_gone: bool) {
        self.forget_node();
        if self.generation != 0 || self.been_in_latch {
            let fresh = self.fresh_uuid();
            let old = std::mem::replace(&mut self.uuid, fresh);
            if !ours_gone {
                self.stale.push(old);
                if self.stale.len() > MAX_STALE {
                    self.stale.remove(0);
                }
            }
        }
        self.unsure = false;
        self.generation = generation;
    }

    /// Abandon a round in flight (its answers will be ignored): a create it sent may have
    /// made a node of ours that we do not know of.
    fn abandon(&mut self) {
        if self.step.in_round() {
            self.unsure = true;
            self.step = Step::Session;
        }
    }

    // ---- the loop: what to do next -------------------------------------------------------

    /// Decide the next step when nothing is in flight (`Next::Again` of the driver).
    fn again(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if matches!(self.step, Step::Exited) {
            return;
        }
        if let Some(cmd) = self.pending.pop_front() {
            return self.command(now, cmd, fx);
        }
        if !self.want {
            self.step = Step::Idle;
            return;
        }
        match self.conn.clone() {
            Conn::Connected => self.round(now, fx),
            Conn::Fatal(kind, msg) => self.fatal(kind, &msg, fx),
            Conn::Closed => {
                self.publish(
                    Some(Role::Closed),
                    HealthLevel::Unhealthy,
                    reason!("the ZooKeeper session was closed"),
                    fx,
                );
                self.exit(fx);
            }
            Conn::Connecting | Conn::Suspended => self.step = Step::Session,
        }
    }

    fn exit(&mut self, fx: &mut Vec<Effect>) {
        self.forget_node();
        self.step = Step::Exited;
        fx.push(Effect::Exit);
    }

    /// Start a round: make sure our node exists, then read the queue.
    fn round(&mut self, _now: Instant, fx: &mut Vec<Effect>) {
        self.step = Step::Pacing;
        fx.push(Effect::Pace);
    }

    /// The round has its slot: make sure our node exists, then read the queue.
    fn start_round(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        // Our own-node watch fired (during the last round): read the node again.
        if let Some(w) = self.own_watch {
            if self.take_early(w).is_some() {
                self.own_watch = None;
            }
        }
        match self.node.clone() {
            Some(n) if self.own_watch.is_some() => self.read(now, n, fx),
            Some(n) => {
                let id = self.request(Op::WatchNode(n.path.to_string()), fx);
                self.step = Step::Check(id);
            }
            None => self.find_or_create(now, fx),
        }
    }

    /// Our node is unknown: look for one of ours (and leftovers) if one may exist, else
    /// create it.
    fn find_or_create(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.unsure || !self.stale.is_empty() {
            let id = self.request(Op::Children(self.path.clone()), fx);
            self.step = Step::Scan(id);
        } else {
            self.create(now, 1, fx);
        }
    }

    fn create(&mut self, _now: Instant, tries: u32, fx: &mut Vec<Effect>) {
        let prefix = protected_prefix(&self.uuid);
        // Until its answer, a node of ours may exist that we do not know of.
        self.unsure = true;
        let id = self.request(
            Op::CreateSeq {
                base: format!("{}/{prefix}{LOCK_NAME}", self.path),
                data: self.id.as_bytes().to_vec(),
            },
            fx,
        );
        self.step = Step::Create { id, tries };
    }

    /// Our node is `node`: register its watch if needed and read the queue (one round trip).
    fn read(&mut self, now: Instant, node: OwnNode, fx: &mut Vec<Effect>) {
        let first_next = self.vacated.is_some() && self.own_watch.is_some();
        let watch = if self.own_watch.is_none() {
            Some((self.request(Op::WatchNode(node.path.to_string()), fx), None))
        } else {
            None
        };
        let list = if first_next {
            None
        } else {
            Some((self.request(Op::Children(self.path.clone()), fx), None))
        };
        let ready = watch.is_none() && list.is_none();
        self.step = Step::Read {
            node,
            first_next,
            watch,
            list,
        };
        if ready {
            // Our predecessor left and our node stands: claim without a read.
            self.evaluate(now, fx);
        }
    }

    /// Work through the adoption scan.
    fn examine(
        &mut self,
        now: Instant,
        mut todo: Vec<ScanItem>,
        adopted: Option<OwnNode>,
        fx: &mut Vec<Effect>,
    ) {
        if todo.is_empty() {
            self.unsure = false;
            self.stale.clear();
            return match adopted {
                Some(n) => {
                    self.set_node(n.clone());
                    self.read(now, n, fx)
                }
                None => self.create(now, 1, fx),
            };
        }
        let item = todo.remove(0);
        let op = match &item {
            ScanItem::Examine(name) => Op::Stat(format!("{}/{name}", self.path)),
            ScanItem::DeleteStale(name) => Op::Delete(format!("{}/{name}", self.path)),
        };
        let id = self.request(op, fx);
        self.step = Step::Examine {
            todo,
            cur: (id, item),
            adopted,
        };
    }

    /// Evaluate the queue once both answers of the read are in.
    fn evaluate(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Step::Read {
            node,
            first_next,
            watch,
            list,
        } = std::mem::replace(&mut self.step, Step::Session)
        else {
            return;
        };
        if let Some((id, Some(r))) = watch {
            match *r {
                Ok(Answer::Stat(Some(_))) if self.take_early(id).is_none() => {
                    self.own_watch = Some(id)
                }
                Ok(_) => {
                    self.node_lost(fx);
                    return self.again(now, fx);
                }
                Err(e) => return self.failed(now, e, fx),
            }
        }
        let leading = self.role.is_leader();
        let st = match list.map(|(_, r)| r.map(|b| *b)) {
            None if leading => Standing::StillLeading,
            None => Standing::Claim,
            Some(Some(Ok(Answer::Children(c)))) => {
                standing(&names::sorted(c), node.name(), leading, self.assert_ahead)
            }
            Some(Some(Err(ZkErr::NoNode))) => return self.again(now, fx),
            Some(Some(Err(e))) => return self.failed(now, e, fx),
            Some(_) => return self.failed(now, ZkErr::Other("unexpected answer".into()), fx),
        };
        match st {
            Standing::Lost => {
                self.node_lost(fx);
                self.again(now, fx)
            }
            Standing::StillLeading => {
                self.publish(
                    None,
                    HealthLevel::Healthy,
                    reason!("first in the latch"),
                    fx,
                );
                self.wait_for(now, None, fx);
            }
            Standing::Claim => self.claim(now, &node, first_next, fx),
            Standing::Follow {
                pred,
                leader,
                ahead,
                claim_next,
            } => {
                self.vacated = None;
                self.ahead = ahead;
                let pred_id = self.request(Op::WatchData(format!("{}/{pred}", self.path)), fx);
                let leader = leader.map(|l| {
                    let id = self.request(Op::GetData(format!("{}/{l}", self.path)), fx);
                    (id, None)
                });
                self.step = Step::Follow {
                    pred: (pred_id, None),
                    leader,
                    claim_next,
                };
            }
        }
    }

    /// Claim: atomically check our node, assert the nodes ahead gone (on a predecessor's
    /// deletion), and write the latch path (whose new zxid is the term's sequence).
    fn claim(&mut self, now: Instant, node: &OwnNode, first_next: bool, fx: &mut Vec<Effect>) {
        // Cloned, not taken: a claim that fails (a lost connection) is made again with the
        // same assertion until a claim succeeds or the queue is read again.
        let ahead = if first_next && !self.bugs.skip_ahead_assertion {
            self.ahead.clone()
        } else {
            Vec::new()
        };
        let prev = self.role.clone();
        if self.bugs.reuse_term {
            if let (Some(term), Role::Suspended) = (self.last_term, &self.role) {
                // Planted: lead again under the old grant without a claim.
                self.role = Role::Leader { term };
                fx.push(Effect::PublishLeader {
                    generation: self.generation,
                    term,
                    reason: reason!("first in the latch"),
                });
                self.wait_for(now, None, fx);
                return;
            }
        }
        let n = ahead.len();
        let id = self.request(
            Op::Claim {
                node: node.path.to_string(),
                ahead,
                path: self.path.clone(),
                data: node.name().as_bytes().to_vec(),
            },
            fx,
        );
        if self.bugs.lead_before_claim {
            let term = Term::new(0, u64::MAX - id);
            self.role = Role::Leader { term };
            fx.push(Effect::PublishLeader {
                generation: self.generation,
                term,
                reason: reason!("first in the latch"),
            });
        }
        self.step = Step::Claim {
            id,
            ahead: n,
            first_next,
            prev,
        };
    }

    fn claimed(
        &mut self,
        now: Instant,
        r: Result<Answer, ZkErr>,
        ahead: usize,
        first_next: bool,
        fx: &mut Vec<Effect>,
    ) {
        let stat: NodeStat = match r {
            Ok(Answer::Claimed(stat)) => stat,
            Ok(_) => return self.failed(now, ZkErr::Other("claim returned no stat".into()), fx),
            Err(ZkErr::Multi { error, .. }) if *error == ZkErr::NoNode => {
                self.forget_node();
                return self.again(now, fx);
            }
            Err(ZkErr::Multi { error, .. }) if *error == ZkErr::NodeExists && ahead > 0 => {
                self.vacated = None;
                return self.again(now, fx);
            }
            Err(ZkErr::Multi { index, .. }) if index >= 1 && index <= 2 * ahead => {
                self.assert_ahead = false;
                self.vacated = None;
                return self.again(now, fx);
            }
            Err(ZkErr::Multi { error, .. }) => return self.failed(now, *error, fx),
            Err(e) => return self.failed(now, e, fx),
        };
        self.ahead.clear();
        let term = Term::new(stat.ctime.max(0) as u64, stat.mzxid.max(0) as u64);
        let reason = if first_next {
            reason!("the leader before us left")
        } else {
            reason!("first in the latch")
        };
        if let Some(v) = self.vacated.take() {
            fx.push(Effect::Handover(v));
        }
        self.role = Role::Leader { term };
        self.last_term = Some(term);
        fx.push(Effect::PublishLeader {
            generation: self.generation,
            term,
            reason,
        });
        self.wait_for(now, None, fx);
    }

    /// Both answers of the follow step are in: publish `Follower` and wait.
    fn followed(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Step::Follow {
            pred,
            leader,
            claim_next,
        } = std::mem::replace(&mut self.step, Step::Session)
        else {
            return;
        };
        let (pred_id, pred_r) = pred;
        let pred_data = match pred_r.map(|b| *b) {
            Some(Ok(Answer::Data(d))) => d,
            Some(Err(ZkErr::NoNode)) => return self.again(now, fx),
            Some(Err(e)) => return self.failed(now, e, fx),
            _ => return self.again(now, fx),
        };
        let leader = match leader.map(|(_, r)| r.map(|b| *b)) {
            None => Some(String::from_utf8_lossy(&pred_data).into_owned()),
            Some(Some(Ok(Answer::Data(d)))) => Some(String::from_utf8_lossy(&d).into_owned()),
            Some(_) => None,
        };
        let reason = if self.role.is_leader() {
            reason!("lost first place in the latch")
        } else {
            reason!("waiting for predecessor")
        };
        self.publish(
            Some(Role::Follower { leader }),
            HealthLevel::Healthy,
            reason,
            fx,
        );
        self.wait_for(now, Some((pred_id, claim_next)), fx);
    }

    /// A round failed with `e`: classify, report, back off.
    fn failed(&mut self, now: Instant, e: ZkErr, fx: &mut Vec<Effect>) {
        match e {
            ZkErr::Permanent(kind, msg) => {
                let msg = format!("take part in latch {}: {msg}", self.path);
                self.fatal(kind, &msg, fx)
            }
            ZkErr::SessionExpired => {
                self.step_down(
                    reason!("ZooKeeper session expired; rejoining with a new session"),
                    fx,
                );
                self.step = Step::Session;
            }
            ZkErr::ConnectionLoss => {
                // The session handles a lost connection; pause briefly rather than spin
                // until it reports the doubt.
                self.pause(now, 0);
            }
            e => {
                self.failures += 1;
                let since = *self.failing_since.get_or_insert(now);
                let level = if now.saturating_duration_since(since) > self.timeout {
                    HealthLevel::Unhealthy
                } else {
                    HealthLevel::Degraded
                };
                let reason: Arc<str> = format!(
                    "ZooKeeper error, repairing (attempt {}): {e}",
                    self.failures
                )
                .into();
                let role = if self.role.is_leader() {
                    Some(Role::Candidate)
                } else {
                    None
                };
                self.publish(role, level, reason, fx);
                self.pause(now, self.failures);
            }
        }
    }

    fn pause(&mut self, now: Instant, attempt: u32) {
        let base = Duration::from_millis(50 * (1 << attempt.min(6))).min(MAX_BACKOFF);
        let until = now + base.mul_f64(self.jitter());
        self.step = Step::Pause(until);
    }

    fn fatal(&mut self, kind: ErrorKind, msg: &str, fx: &mut Vec<Effect>) {
        self.publish(None, HealthLevel::Unhealthy, msg.into(), fx);
        fx.push(Effect::Fatal(kind, msg.to_owned()));
        self.want = false;
        self.publish(Some(Role::Idle), HealthLevel::Unhealthy, msg.into(), fx);
        if let Some(n) = self.forget_node() {
            // The delete may fail (refused, like what made us leave): a rejoin on this
            // session looks for the node and adopts it, else it would stand first in the
            // queue with nobody acting for it.
            self.unsure = true;
            if self.conn == Conn::Connected {
                self.request(Op::Delete(n.path.to_string()), fx);
            }
        }
        self.step = Step::Idle;
    }

    // ---- commands ---------------------------------------------------------------------------

    fn command(&mut self, now: Instant, cmd: Command, fx: &mut Vec<Effect>) {
        match cmd {
            Command::Join => {
                self.want = true;
                if matches!(self.step, Step::Idle) {
                    self.again(now, fx);
                }
            }
            Command::Resign | Command::Close => {
                self.want = false;
                let (role, reason) = if cmd == Command::Close {
                    (Role::Closed, reason!("closed"))
                } else {
                    (Role::Idle, reason!("resigned"))
                };
                if self.bugs.delete_before_publish {
                    self.start_delete(now, cmd, fx);
                    self.publish(Some(role), HealthLevel::Healthy, reason, fx);
                } else {
                    // Stop leading BEFORE deleting the node.
                    self.publish(Some(role), HealthLevel::Healthy, reason, fx);
                    self.start_delete(now, cmd, fx);
                }
            }
        }
    }

    /// Delete our node (and, after an abandoned round, any node of ours we may not know of),
    /// retried until done, the session is gone, or 1.5 x the session timeout passed.
    fn start_delete(&mut self, now: Instant, cmd: Command, fx: &mut Vec<Effect>) {
        let unsure = std::mem::take(&mut self.unsure);
        let known = self.forget_node().map(|n| n.path.to_string());
        if self.conn == Conn::Closed || self.generation == 0 || (known.is_none() && !unsure) {
            return self.deleted(now, cmd, Ok(()), fx);
        }
        let prefix = unsure.then(|| protected_prefix(&self.uuid));
        self.step = Step::Delete {
            cmd,
            generation: self.generation,
            deadline: now + self.timeout.mul_f64(1.5),
            known,
            prefix,
            pause: Duration::from_millis(50),
            doing: Deleting::Pausing(now),
        };
        self.delete_attempt(now, fx);
    }

    fn delete_attempt(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let (known, prefix) = match &self.step {
            // The session that owned the node is gone, and the node with it.
            Step::Delete {
                generation, cmd, ..
            } if *generation != self.generation => {
                return self.deleted(now, *cmd, Ok(()), fx);
            }
            Step::Delete { known, prefix, .. } => (known.clone(), prefix.clone()),
            _ => return,
        };
        if prefix.is_some() {
            let id = self.request(Op::Children(self.path.clone()), fx);
            if let Step::Delete { doing, .. } = &mut self.step {
                *doing = Deleting::Listing(id);
            }
        } else if self.delete_next(known.into_iter().collect(), fx).is_some() {
            self.deleted(now, cmd_of(&self.step), Ok(()), fx);
        }
    }

    /// Ask for the delete of the first of `targets` (none left: done).
    fn delete_next(
        &mut self,
        targets: Vec<String>,
        fx: &mut Vec<Effect>,
    ) -> Option<Result<(), ZkErr>> {
        let Some(first) = targets.first().cloned() else {
            return Some(Ok(()));
        };
        let id = self.request(Op::Delete(first), fx);
        if let Step::Delete { doing, .. } = &mut self.step {
            *doing = Deleting::Targets(targets, id);
        }
        None
    }

    fn delete_answer(
        &mut self,
        now: Instant,
        id: ReqId,
        r: Result<Answer, ZkErr>,
        fx: &mut Vec<Effect>,
    ) {
        let Step::Delete {
            cmd,
            known,
            prefix,
            doing,
            ..
        } = &self.step
        else {
            return;
        };
        let cmd = *cmd;
        let known = known.clone();
        let outcome = match doing.clone() {
            Deleting::Listing(l) if l == id => {
                let mut targets: Vec<String> = known.iter().cloned().collect();
                let prefix = prefix.clone();
                match r {
                    Ok(Answer::Children(c)) => {
                        let prefix = prefix.clone().unwrap_or_default();
                        for name in c.iter().filter(|n| n.starts_with(&prefix)) {
                            let full = format!("{}/{name}", self.path);
                            if !targets.contains(&full) {
                                targets.push(full);
                            }
                        }
                        self.delete_next(targets, fx)
                    }
                    Err(ZkErr::NoNode) => self.delete_next(targets, fx),
                    Err(e) => Some(Err(e)),
                    Ok(_) => Some(Err(ZkErr::Other("unexpected answer".into()))),
                }
            }
            Deleting::Targets(mut targets, cur) if cur == id => match r {
                Ok(_) | Err(ZkErr::NoNode) => {
                    targets.remove(0);
                    self.delete_next(targets, fx)
                }
                Err(e) => Some(Err(e)),
            },
            _ => None,
        };
        match outcome {
            None => {}
            Some(Ok(())) | Some(Err(ZkErr::SessionExpired)) => self.deleted(now, cmd, Ok(()), fx),
            Some(Err(ZkErr::Permanent(kind, m))) => {
                let what = known.unwrap_or_else(|| "nodes".into());
                let msg = format!("delete our latch node {what}: {m}");
                self.deleted(now, cmd, Err((kind, msg)), fx)
            }
            Some(Err(_)) => {
                // Retry after a pause (bounded by the deadline).
                if let Step::Delete {
                    deadline,
                    pause,
                    doing,
                    ..
                } = &mut self.step
                {
                    let at = (now + *pause).min(*deadline);
                    *pause = (*pause * 2).min(Duration::from_secs(1));
                    *doing = Deleting::Pausing(at);
                }
            }
        }
    }

    fn deleted(
        &mut self,
        now: Instant,
        cmd: Command,
        r: Result<(), (ErrorKind, String)>,
        fx: &mut Vec<Effect>,
    ) {
        if r.is_err() {
            // Our node may still stand: a later join on this session adopts it.
            self.unsure = true;
        }
        fx.push(Effect::Done(cmd, r));
        if cmd == Command::Close {
            self.exit(fx);
        } else {
            self.step = Step::Idle;
            self.again(now, fx);
        }
    }

    // ---- inputs -----------------------------------------------------------------------------

    fn session(&mut self, now: Instant, s: SessionInput, fx: &mut Vec<Effect>) {
        match s {
            SessionInput::Connected {
                generation,
                epoch,
                session_id,
                timeout,
                prev_gone,
            } => {
                let changed = generation != self.generation || epoch != self.epoch;
                if generation != self.generation {
                    let ours_gone = prev_gone && generation == self.generation + 1;
                    self.abandon();
                    self.new_session(generation, ours_gone);
                } else if epoch != self.epoch {
                    // The same session on a new client: our node stands, its watches are gone.
                    self.own_watch = None;
                }
                if changed {
                    self.early.clear();
                }
                self.epoch = epoch;
                self.session_id = session_id;
                self.timeout = timeout;
                let was = std::mem::replace(&mut self.conn, Conn::Connected);
                if changed || was != Conn::Connected {
                    self.wake(now, fx);
                }
            }
            SessionInput::Doubt { leaders_too } => {
                let leaders_too = leaders_too && !self.bugs.suspended_leader_kept;
                if !matches!(self.role, Role::Idle | Role::Closed) {
                    if self.role.is_leader() && !leaders_too {
                        self.publish(
                            None,
                            HealthLevel::Degraded,
                            reason!("connection to ZooKeeper lost; keeping leadership for the grace period"),
                            fx,
                        );
                    } else if !(self.bugs.suspended_leader_kept && self.role.is_leader()) {
                        let role = if self.node.is_some() {
                            Role::Suspended
                        } else {
                            Role::Candidate
                        };
                        self.publish(
                            Some(role),
                            HealthLevel::Degraded,
                            reason!("connection to ZooKeeper lost; suspended"),
                            fx,
                        );
                    }
                }
                let was = std::mem::replace(&mut self.conn, Conn::Suspended);
                if was == Conn::Connected {
                    self.wake(now, fx);
                }
            }
            SessionInput::Lost => {
                if !matches!(self.role, Role::Idle | Role::Closed) {
                    self.publish(
                        Some(Role::Candidate),
                        HealthLevel::Degraded,
                        reason!("ZooKeeper session lost; rejoining"),
                        fx,
                    );
                }
                let was = std::mem::replace(&mut self.conn, Conn::Connecting);
                if was == Conn::Connected {
                    self.wake(now, fx);
                }
            }
            SessionInput::Fatal(kind, msg) => {
                self.conn = Conn::Fatal(kind, msg);
                self.wake(now, fx);
            }
            SessionInput::Closed => {
                self.conn = Conn::Closed;
                self.wake(now, fx);
            }
        }
    }

    /// The session changed: a round in flight is abandoned; a wait ends.
    fn wake(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match self.step {
            Step::Delete { .. } | Step::Exited | Step::Idle => {}
            Step::Pause(_) => {}
            _ => {
                self.abandon();
                self.again(now, fx);
            }
        }
    }

    fn answer(&mut self, now: Instant, id: ReqId, r: Result<Answer, ZkErr>, fx: &mut Vec<Effect>) {
        match std::mem::replace(&mut self.step, Step::Session) {
            Step::Check(i) if i == id => match r {
                Ok(Answer::Stat(Some(st)))
                    if st.ephemeral_owner == self.session_id && self.take_early(id).is_none() =>
                {
                    self.own_watch = Some(id);
                    match self.node.clone() {
                        Some(n) => self.read(now, n, fx),
                        None => self.again(now, fx),
                    }
                }
                Ok(Answer::Stat(Some(_))) => {
                    self.node_lost(fx);
                    self.find_or_create(now, fx)
                }
                Ok(_) => {
                    fx.push(Effect::Repair("node_missing"));
                    self.node_lost(fx);
                    self.find_or_create(now, fx)
                }
                Err(e) => self.failed(now, e, fx),
            },
            Step::Scan(i) if i == id => {
                let children = match r {
                    Ok(Answer::Children(c)) => c,
                    Err(ZkErr::NoNode) => Vec::new(),
                    Err(e) => return self.failed(now, e, fx),
                    Ok(_) => Vec::new(),
                };
                let prefix = protected_prefix(&self.uuid);
                let stale: Vec<String> = self.stale.iter().map(|u| protected_prefix(u)).collect();
                let todo: Vec<ScanItem> = children
                    .into_iter()
                    .filter_map(|name| {
                        if name.starts_with(&prefix) {
                            Some(ScanItem::Examine(name))
                        } else if stale.iter().any(|p| name.starts_with(p)) {
                            Some(ScanItem::DeleteStale(name))
                        } else {
                            None
                        }
                    })
                    .collect();
                self.examine(now, todo, None, fx)
            }
            Step::Examine {
                todo,
                cur: (i, item),
                mut adopted,
            } if i == id => match item {
                ScanItem::Examine(name) => match r {
                    Ok(Answer::Stat(Some(st))) if st.ephemeral_owner == self.session_id => {
                        if adopted.is_none() {
                            let full = format!("{}/{name}", self.path);
                            adopted = Some(OwnNode::new(full, name.len()));
                            self.examine(now, todo, adopted, fx)
                        } else {
                            let id = self.request(Op::Delete(format!("{}/{name}", self.path)), fx);
                            self.step = Step::Second { id, todo, adopted };
                        }
                    }
                    Ok(_) => self.examine(now, todo, adopted, fx),
                    Err(e) => self.failed(now, e, fx),
                },
                // A leftover's delete: failures are only logged.
                ScanItem::DeleteStale(_) => self.examine(now, todo, adopted, fx),
            },
            Step::Second {
                id: i,
                todo,
                adopted,
            } if i == id => match r {
                Ok(_) | Err(ZkErr::NoNode) => self.examine(now, todo, adopted, fx),
                Err(e) => self.failed(now, e, fx),
            },
            Step::Create { id: i, tries } if i == id => match r {
                Ok(Answer::Created { seq, .. }) => {
                    self.unsure = false;
                    let name = format!("{}{LOCK_NAME}{seq}", protected_prefix(&self.uuid));
                    let n = OwnNode::new(format!("{}/{name}", self.path), name.len());
                    self.set_node(n.clone());
                    self.read(now, n, fx)
                }
                Err(ZkErr::NoNode) if tries < 6 => {
                    self.unsure = false;
                    if self.been_in_latch {
                        fx.push(Effect::Repair("path_missing"));
                    }
                    let id = self.request(Op::Mkdir(self.path.clone()), fx);
                    self.step = Step::Mkdir { id, tries };
                }
                Err(e) => self.failed(now, e, fx),
                Ok(_) => self.failed(now, ZkErr::Other("unexpected answer".into()), fx),
            },
            Step::Mkdir { id: i, tries } if i == id => match r {
                Ok(_) | Err(ZkErr::NodeExists) => self.create(now, tries + 1, fx),
                Err(e) => self.failed(now, e, fx),
            },
            Step::Read {
                node,
                first_next,
                mut watch,
                mut list,
            } => {
                let mut used = false;
                for slot in [&mut watch, &mut list].into_iter().flatten() {
                    if slot.0 == id && slot.1.is_none() {
                        slot.1 = Some(Box::new(r.clone()));
                        used = true;
                    }
                }
                let done = watch.as_ref().is_none_or(|w| w.1.is_some())
                    && list.as_ref().is_none_or(|l| l.1.is_some());
                self.step = Step::Read {
                    node,
                    first_next,
                    watch,
                    list,
                };
                if used && done {
                    self.evaluate(now, fx);
                }
            }
            Step::Follow {
                mut pred,
                mut leader,
                claim_next,
            } => {
                let mut used = false;
                if pred.0 == id && pred.1.is_none() {
                    pred.1 = Some(Box::new(r.clone()));
                    used = true;
                }
                if let Some(l) = leader.as_mut().filter(|l| l.0 == id && l.1.is_none()) {
                    l.1 = Some(Box::new(r));
                    used = true;
                }
                let done = pred.1.is_some() && leader.as_ref().is_none_or(|l| l.1.is_some());
                self.step = Step::Follow {
                    pred,
                    leader,
                    claim_next,
                };
                if used && done {
                    self.followed(now, fx);
                }
            }
            Step::Claim {
                id: i,
                ahead,
                first_next,
                prev,
            } if i == id => {
                if self.bugs.lead_before_claim && r.is_err() {
                    self.role = prev;
                }
                self.claimed(now, r, ahead, first_next, fx)
            }
            step @ Step::Delete { .. } => {
                self.step = step;
                self.delete_answer(now, id, r, fx);
            }
            other => self.step = other,
        }
    }

    /// The round is done: wait for the predecessor's watch (and whether its deletion makes
    /// us claim at once), our own node's watch, the session or a command. A watch that
    /// fired while the round was still reading is handled at once.
    fn wait_for(&mut self, now: Instant, pred: Option<(ReqId, bool)>, fx: &mut Vec<Effect>) {
        self.step = Step::Waiting(pred);
        if let Some(own) = self.own_watch {
            if let Some(ev) = self.take_early(own) {
                return self.watch(now, own, ev, fx);
            }
        }
        if let Some((pred, _)) = pred {
            if let Some(ev) = self.take_early(pred) {
                self.watch(now, pred, ev, fx);
            }
        }
    }

    fn watch(&mut self, now: Instant, id: ReqId, ev: WatchEvent, fx: &mut Vec<Effect>) {
        if self.own_watch == Some(id) && !matches!(self.step, Step::Waiting(_)) {
            // Fired while a round is under way: the round's next check of our node reads it
            // again, and the wait after the round handles it.
            self.early.push((id, ev));
            return;
        }
        if self.own_watch == Some(id) {
            self.own_watch = None;
            if let Step::Waiting(_) = self.step {
                if ev == WatchEvent::Deleted {
                    self.publish(
                        Some(Role::Candidate),
                        HealthLevel::Degraded,
                        reason!("our latch node was deleted; repairing"),
                        fx,
                    );
                    fx.push(Effect::Repair("node_deleted"));
                    self.forget_node();
                }
                self.again(now, fx);
            }
            return;
        }
        if let Step::Waiting(Some((pred, claim_next))) = self.step {
            if pred == id {
                if claim_next && ev == WatchEvent::Deleted {
                    self.vacated = Some(now);
                }
                return self.again(now, fx);
            }
        }
        // Not waited on yet (its request's round is still reading): kept for when it is.
        self.early.push((id, ev));
        if self.early.len() > 16 {
            self.early.remove(0);
        }
    }

    fn timer(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match self.step.clone() {
            Step::Pause(until) if now >= until => self.again(now, fx),
            Step::Delete {
                cmd,
                deadline,
                doing,
                known,
                ..
            } => {
                if now >= deadline {
                    let what = known.unwrap_or_else(|| "nodes".into());
                    let msg = format!(
                        "could not delete our latch node {what} within 1.5 x the session timeout; ZooKeeper will remove it when the session expires"
                    );
                    self.deleted(now, cmd, Err((ErrorKind::Timeout, msg)), fx)
                } else if matches!(doing, Deleting::Pausing(at) if now >= at) {
                    self.delete_attempt(now, fx)
                }
            }
            _ => {}
        }
    }
}

impl Machine for LatchMachine {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Instant, input: Input, fx: &mut Vec<Effect>) {
        if self.exited() {
            return;
        }
        match input {
            Input::Command(cmd) => {
                if matches!(self.step, Step::Delete { .. }) {
                    // Handled in order once the delete is done.
                    self.pending.push_back(cmd);
                } else {
                    if cmd != Command::Join {
                        self.abandon();
                    }
                    self.command(now, cmd, fx);
                }
            }
            Input::Session(s) => self.session(now, s, fx),
            Input::Answer(id, r) => self.answer(now, id, r, fx),
            Input::Watch(id, ev) => self.watch(now, id, ev, fx),
            Input::LeaderRefused => {
                self.role = Role::Candidate;
                if let Step::Waiting(None) = self.step {
                    self.again(now, fx);
                }
            }
            Input::Timer => self.timer(now, fx),
            Input::Paced => {
                if matches!(self.step, Step::Pacing) {
                    self.start_round(now, fx);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.step {
            Step::Pause(until) => Some(*until),
            Step::Delete {
                deadline, doing, ..
            } => match doing {
                Deleting::Pausing(at) => Some((*at).min(*deadline)),
                _ => Some(*deadline),
            },
            _ => None,
        }
    }
}

/// The command a delete step answers.
fn cmd_of(step: &Step) -> Command {
    match step {
        Step::Delete { cmd, .. } => *cmd,
        _ => Command::Resign,
    }
}

/// SplitMix64's finaliser: a well-mixed u64 from any u64.
#[cfg(test)]
mod tests {
    use super::*;
    use succession_core::participant::virtual_origin;

    fn at(ms: u64) -> Instant {
        virtual_origin() + Duration::from_millis(ms)
    }

    fn stat(owner: i64) -> NodeStat {
        NodeStat {
            ephemeral_owner: owner,
            ctime: 1,
            mzxid: 1,
        }
    }

    fn requests(fx: &[Effect]) -> Vec<(ReqId, Op)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Request { id, op } => Some((*id, op.clone())),
                _ => None,
            })
            .collect()
    }

    /// Feed `input`, and a round's slot at once whenever one is asked for.
    fn feed(m: &mut LatchMachine, ms: u64, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        m.handle(at(ms), input, &mut fx);
        while fx.last() == Some(&Effect::Pace) {
            fx.pop();
            m.handle(at(ms), Input::Paced, &mut fx);
        }
        fx
    }

    fn connected(generation: u64) -> Input {
        Input::Session(SessionInput::Connected {
            generation,
            epoch: generation,
            session_id: 5,
            timeout: Duration::from_secs(4),
            prev_gone: true,
        })
    }

    /// A participant that created its node third in the queue and has asked for its
    /// predecessor's data (with a watch) and the leader's: (machine, pred, leader).
    fn queued() -> (LatchMachine, ReqId, ReqId) {
        let mut m = LatchMachine::new("/l", "me", 1);
        feed(&mut m, 0, Input::Command(Command::Join));
        let fx = feed(&mut m, 0, connected(1));
        let [(create, Op::CreateSeq { .. })] = requests(&fx)[..] else {
            panic!("{fx:?}")
        };
        let created = Answer::Created {
            seq: "0000000002".into(),
            stat: stat(5),
        };
        let fx = feed(&mut m, 1, Input::Answer(create, Ok(created)));
        let ours = m.node().unwrap().rsplit('/').next().unwrap().to_owned();
        let [(watch, _), (list, _)] = requests(&fx)[..] else {
            panic!("{fx:?}")
        };
        feed(
            &mut m,
            2,
            Input::Answer(watch, Ok(Answer::Stat(Some(stat(5))))),
        );
        let kids = vec![
            "_c_a-latch-0000000000".to_owned(),
            "_c_b-latch-0000000001".to_owned(),
            ours,
        ];
        let fx = feed(&mut m, 2, Input::Answer(list, Ok(Answer::Children(kids))));
        let [(pred, Op::WatchData(_)), (leader, Op::GetData(_))] = requests(&fx)[..] else {
            panic!("{fx:?}")
        };
        (m, pred, leader)
    }

    /// A follower two places behind the leader, watching its predecessor.
    fn follower() -> (LatchMachine, ReqId) {
        let (mut m, pred, leader) = queued();
        feed(
            &mut m,
            3,
            Input::Answer(pred, Ok(Answer::Data(b"b".to_vec()))),
        );
        feed(
            &mut m,
            3,
            Input::Answer(leader, Ok(Answer::Data(b"a".to_vec()))),
        );
        assert!(m.role().is_joined(), "{:?}", m.role());
        (m, pred)
    }

    fn claim_ahead(fx: &[Effect]) -> Option<(ReqId, Vec<String>)> {
        requests(fx).into_iter().find_map(|(id, op)| match op {
            Op::Claim { ahead, .. } => Some((id, ahead)),
            _ => None,
        })
    }

    #[test]
    fn a_claim_retried_after_a_lost_connection_still_asserts_the_nodes_ahead_gone() {
        let (mut m, pred) = follower();
        let fx = feed(&mut m, 10, Input::Watch(pred, WatchEvent::Deleted));
        let (claim, ahead) = claim_ahead(&fx).expect("claims at once");
        assert_eq!(ahead, ["_c_a-latch-0000000000"]);
        feed(&mut m, 11, Input::Answer(claim, Err(ZkErr::ConnectionLoss)));
        feed(
            &mut m,
            11,
            Input::Session(SessionInput::Doubt { leaders_too: true }),
        );
        feed(&mut m, 200, connected(1));
        let until = m.next_deadline().expect("backing off");
        let ms = until.duration_since(virtual_origin()).as_millis() as u64 + 1;
        let fx = feed(&mut m, ms, Input::Timer);
        let (_, ahead) = claim_ahead(&fx).expect("claims again");
        // Before the fix the retry asserted nothing and claimed over the leader's node.
        assert_eq!(ahead, ["_c_a-latch-0000000000"]);
    }

    #[test]
    fn a_predecessor_deleted_before_its_follower_waits_is_not_missed() {
        let (mut m, pred, leader) = queued();
        feed(
            &mut m,
            3,
            Input::Answer(pred, Ok(Answer::Data(b"b".to_vec()))),
        );
        // The predecessor's deletion arrives before the leader's data.
        feed(&mut m, 3, Input::Watch(pred, WatchEvent::Deleted));
        let fx = feed(
            &mut m,
            4,
            Input::Answer(leader, Ok(Answer::Data(b"a".to_vec()))),
        );
        assert!(
            claim_ahead(&fx).is_some(),
            "claims on the early deletion: {fx:?}"
        );
    }

    #[test]
    fn a_rejoin_after_a_refused_delete_adopts_the_node_left_standing() {
        let (mut m, _) = follower();
        let fx = feed(
            &mut m,
            10,
            Input::Answer(999, Ok(Answer::Done)), // ignored: not ours
        );
        assert!(fx.is_empty());
        // A refused write makes us leave; the delete of our node is refused too.
        m.fatal(ErrorKind::PermissionDenied, "refused", &mut Vec::new());
        let fx = feed(&mut m, 20, Input::Command(Command::Join));
        assert!(
            matches!(requests(&fx)[..], [(_, Op::Children(_))]),
            "looks for the node of ours first: {fx:?}"
        );
    }
}
