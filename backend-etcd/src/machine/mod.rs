//! The etcd election's decisions as a sans-IO machine ([`CampaignMachine`]).
//!
//! One participant of one election prefix, laid out like Go's `concurrency.Election`: when
//! it creates the epoch record, campaigns, reads the queue, watches the keys ahead of its
//! own, leads, steps down, replaces a key that led before its lease fell into doubt, and
//! what it publishes in which order. It reads no clock (time comes in as `now`), touches no
//! client and spawns nothing: its executor (`election.rs` in production, [`crate::sim`] in
//! the deterministic simulation) feeds it [`Input`]s and carries out its [`Effect`]s in
//! order (see [`succession_core::participant::Machine`]).
//!
//! What the session decides for all its elections (granting the lease, renewing it,
//! declaring it in doubt when a renewal is overdue or the keep-alive stream broke, losing
//! it) reaches the machine as [`LeaseInput`]. The session's lease keeper also demotes every
//! leader on its lease itself before it publishes a doubt, and a `Leader` publication
//! ([`Effect::PublishLeader`]) is checked against the lease under the same lock, so no
//! election leads on a lease the keeper gave up on.
//!
//! Rules that live here, once:
//! * stop leading before leaving: a resign or close publishes `Idle` before the delete of
//!   our key is asked for;
//! * in doubt means not leader: a lease in doubt makes a leader `Suspended`;
//! * a key that led never leads again after its lease was in doubt: it is deleted and a
//!   new key (a new, higher term) campaigns;
//! * `Leader` is published only after a read (or live deletions watched since before the
//!   read) showed no key ahead of ours, with our key's create revision in the term.

pub mod ops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use succession_core::participant::{mix, Machine};
use succession_core::text::Human;
use succession_core::{Error, ErrorKind, HealthLevel, Result, Role, Term};

use ops::{Answer, EtcdErr, KeyInfo, Op, ReqId, WatchNote};

/// How many of the keys ahead of ours (nearest first) a participant watches. Each key is
/// then watched by at most this many participants, so a deletion wakes at most this many;
/// with two, the participant second in line already knows, when the leader leaves, that only
/// its predecessor is left, and leads without a read when that one leaves too.
pub const AHEAD_WATCHED: usize = 2;

/// The Go `concurrency.Election` layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<prefix>`: the epoch record (outside the election's key range).
    pub epoch_key: String,
    /// `<prefix>/`: the range of candidate keys.
    pub range: String,
}

impl Layout {
    /// The layout under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Layout {
            epoch_key: prefix.to_owned(),
            range: format!("{prefix}/"),
        }
    }

    /// The candidate key of lease `lease`: `<prefix>/<lease id in lowercase hex>`, exactly
    /// as Go formats it (`fmt.Sprintf("%s%x", prefix+"/", leaseID)`).
    pub fn candidate_key(&self, lease: i64) -> String {
        format!("{}{:x}", self.range, lease)
    }

    /// The candidate key of participant `slot` of one session on this prefix: slot 0 is
    /// [`candidate_key`](Self::candidate_key); further participants of the same session on
    /// the same prefix use `<prefix>/<lease hex>_<slot>` (Go's readers order keys by create
    /// revision and read only the value, so they see these like any other candidate).
    pub fn slot_key(&self, lease: i64, slot: u32) -> String {
        if slot == 0 {
            self.candidate_key(lease)
        } else {
            format!("{}{:x}_{slot}", self.range, lease)
        }
    }
}

/// Parse an epoch record's value (decimal milliseconds).
pub fn parse_epoch(value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                format!(
                    "the epoch record holds {:?}, not a decimal number of milliseconds; \
                     something else wrote to the key of the election prefix itself",
                    String::from_utf8_lossy(value)
                ),
            )
        })
}

/// Bounded, jittered exponential backoff: the n-th wait is in `[cap_n / 2, cap_n]` with
/// `cap_n = min(max, base * 2^n)`, at the point a caller-drawn `unit` in [0, 1) picks (a
/// random one in production, a seeded one in the simulation).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// From `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The backoff for the participation loops of an election with lease `ttl`: 50 ms
    /// doubling up to `clamp(TTL / 4, 250 ms, 2 s)`, so retries stay well inside one lease
    /// period.
    pub fn for_ttl(ttl: Duration) -> Self {
        let max = (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(2));
        Backoff::new(Duration::from_millis(50), max)
    }

    /// The next wait; `unit` in [0, 1) picks it in the upper half of the current cap.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let cap = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let lo = cap / 2;
        lo + (cap - lo).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Start again from the base delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Bugs the simulation plants to prove it catches them. `false` by default; only tests of
/// the simulation set them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Publish `Leader` when the campaign is answered, without reading the queue.
    pub lead_before_read: bool,
    /// Keep leading when the lease falls into doubt.
    pub suspended_leader_kept: bool,
    /// After the lease recovers from a doubt, lead again with the key (and term) that led.
    pub reuse_term: bool,
    /// Ask for the delete of our key before publishing that we stopped leading.
    pub delete_before_publish: bool,
    /// Lead on the first deletion of a key ahead, without waiting for all of them.
    pub skip_ahead_wait: bool,
}

/// A command from the election's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Take part (the first input of a run).
    Join,
    /// Stop taking part: publish `Idle`, then delete our key if `delete_by` is given
    /// (retrying until that instant; `None` when the lease is revoked instead or there is
    /// none). Answered with [`Effect::Done`], then [`Effect::Exit`].
    Stop {
        /// Why (the `Idle` reason: "resigned", "closed").
        reason: &'static str,
        /// Retry the delete of our key until this instant.
        delete_by: Option<Instant>,
    },
}

/// What the session says about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseInput {
    /// The session's current lease: campaign with it.
    Granted {
        /// The lease id.
        id: i64,
    },
    /// Renewals of the current lease are answered again (after a [`LeaseInput::Doubt`]).
    Safe,
    /// The lease is in doubt (a renewal overdue, the keep-alive stream broke): not leader.
    Doubt {
        /// Why, in words.
        reason: Arc<str>,
        /// The earliest instant the server could expire the lease.
        expires: Instant,
    },
    /// The server says the lease is gone (revoked, expired, wiped).
    Lost(Arc<str>),
    /// The latest grant of a lease failed.
    GrantFailed(ErrorKind, Arc<str>),
}

/// What the executor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A command from the handle.
    Command(Command),
    /// What the session says about its lease.
    Lease(LeaseInput),
    /// The answer to request `id`.
    Answer(ReqId, std::result::Result<Answer, EtcdErr>),
    /// What the watch stream says about one of our watchers (or all of them).
    Watch(WatchNote),
    /// The [`Effect::PublishLeader`] just executed was refused: the lease is no longer
    /// safe. The executor follows this with the lease's current state as a
    /// [`LeaseInput`] (even `Safe`, when it recovered meanwhile).
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
    /// Publish `Leader` with `term`, but only if lease `lease` is still safe, atomically
    /// with the keeper's demotions; if not, feed [`Input::LeaderRefused`] at once. A
    /// handover that started at `handover` (our predecessor's deletion seen) is recorded
    /// before the publication.
    PublishLeader {
        /// The lease our key is under.
        lease: i64,
        /// The grant's fencing term.
        term: Term,
        /// When the leader before us was seen leaving, if it was.
        handover: Option<Instant>,
        /// Why.
        reason: Arc<str>,
    },
    /// Ask for a slot among the session's rounds in flight; feed [`Input::Paced`] once
    /// held. Held until the machine is no longer in a round ([`CampaignMachine::in_round`]).
    Pace,
    /// Send a request.
    Request {
        /// Its id (its answer carries it).
        id: ReqId,
        /// What to ask.
        op: Op,
    },
    /// Add a watcher on `key` to the session's watch stream (from `start`, else from now).
    Watch {
        /// Its id (its notes carry it).
        id: ReqId,
        /// The key.
        key: String,
        /// The revision to start from.
        start: Option<i64>,
    },
    /// Cancel watcher `id` (its later notes are ignored).
    Unwatch(ReqId),
    /// A permanent refusal (e.g. permission denied) for `join` to return, while the
    /// machine keeps retrying (published health first).
    Refused(ErrorKind, String),
    /// Progress: an earlier refusal no longer holds.
    Progress,
    /// An epoch was seen (the session's highest seen makes a new record higher).
    SawEpoch(u64),
    /// Lease `lease` is gone: count it and tell the session (unless it knows: it may
    /// already have granted the next one).
    LeaseLost {
        /// The lease.
        lease: i64,
        /// Why.
        why: Arc<str>,
    },
    /// A stop finished (`Err`: our key could not be deleted).
    Done(std::result::Result<(), (ErrorKind, String)>),
    /// The machine is done; drop it.
    Exit,
}

impl succession_core::participant::EffectKind for Effect {
    fn is_publication(&self) -> bool {
        matches!(self, Effect::Publish { .. } | Effect::PublishLeader { .. })
    }

    fn is_store(&self) -> bool {
        matches!(
            self,
            Effect::Request { .. } | Effect::Watch { .. } | Effect::Unwatch(_)
        )
    }
}

/// What a [`CampaignMachine`] is doing ([`CampaignMachine::activity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Not taking part yet.
    Idle,
    /// Waiting for the session's lease.
    Lease,
    /// A round waits for its slot.
    Pacing,
    /// In a round (requests in flight).
    Round,
    /// Waiting in the queue for the keys ahead of ours to go.
    Following,
    /// Leading, waiting for our key to go.
    Leading,
    /// Backing off before a retry.
    Pausing,
    /// The lease is in doubt.
    Doubt,
    /// Deleting its key for a stop.
    Stopping,
    /// Done.
    Exited,
}

/// Which key a watcher is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Own,
    Epoch,
    /// A key ahead of ours; `leads`: it was the first key at the read; `gone`: deleted.
    Ahead {
        leads: bool,
        gone: bool,
    },
}

/// The watchers of one round in the queue (see `election.rs` on why live deletions seen
/// here with nothing before them on the other two watchers say what a re-read would).
#[derive(Debug, Clone, Default)]
struct Watchers {
    ids: Vec<(ReqId, Watched)>,
    /// Not yet acknowledged.
    pending: usize,
    /// Watched keys ahead of ours not deleted yet.
    ahead_alive: i64,
    /// Our key or the epoch record changed since the watchers were created.
    changed: bool,
    /// Our key was deleted since the watchers were created.
    own_deleted: bool,
    /// Our key or the epoch record changed while the queue was being read.
    early: bool,
}

/// What the round's first request is once the slot is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Delete the key that led before the lease fell into doubt, then campaign.
    DropKey,
    /// Ensure the epoch record, then campaign.
    Campaign,
    /// Read the queue again for our key at this create revision.
    Queue(i64),
}

/// Where the participant is.
#[derive(Debug, Clone)]
enum Step {
    Idle,
    /// Waiting for the session's lease.
    Lease,
    /// Waiting for a round slot.
    Pacing(Next),
    DropKey(ReqId),
    Epoch(ReqId),
    Campaign(ReqId),
    /// Waiting for etcd to acknowledge the watchers on our key and the epoch record.
    Open {
        my_rev: i64,
        w: Watchers,
        deadline: Instant,
    },
    Read {
        my_rev: i64,
        w: Watchers,
        id: ReqId,
    },
    /// Waiting for the `count` keys ahead of ours to be deleted.
    Follow {
        my_rev: i64,
        w: Watchers,
        term: Term,
        count: i64,
        leader_left: bool,
    },
    /// Leading until our key is deleted.
    Lead {
        my_rev: i64,
        w: Watchers,
    },
    /// Backing off; then the round restarts with `next`.
    Pause {
        until: Instant,
        next: Next,
    },
    /// The lease is in doubt; `expires`: when it may expire on the server (`None`: not told
    /// yet); `unhealthy`: already said so.
    Doubt {
        expires: Option<Instant>,
        reason: Arc<str>,
        role: Role,
        unhealthy: bool,
    },
    /// Deleting our key for a stop.
    Stopping {
        deadline: Instant,
        pending: Option<ReqId>,
        retry_at: Option<Instant>,
    },
    Exited,
}

/// One participant's decisions in one etcd election (see the module docs).
#[derive(Debug, Clone)]
pub struct CampaignMachine {
    layout: Layout,
    slot: u32,
    id: String,
    request_timeout: Duration,
    rng: u64,
    backoff: Backoff,
    /// The lease we campaign with, if usable.
    lease: Option<i64>,
    /// Whether our key on the current lease has led (see the module docs).
    led_with_lease: bool,
    /// Our key led before the lease fell into doubt: delete it before campaigning again.
    drop_key: bool,
    /// The create revision of the key this run put under the current lease. A key of
    /// ours found without it was left by an earlier run (e.g. a resign whose delete was
    /// refused) and may have led: it is replaced, never adopted with its old term.
    created: Option<i64>,
    /// The highest epoch seen.
    epoch_seen: u64,
    /// When we saw the leader before us leave (for the handover metric).
    vacated: Option<Instant>,
    /// The role last published.
    role: Role,
    /// The role and `led_with_lease` before the last `Leader` publication was asked for.
    before_lead: Option<(Role, bool)>,
    step: Step,
    next_id: ReqId,
    /// Bugs planted by tests of the simulation.
    #[doc(hidden)]
    pub bugs: Bugs,
}

impl CampaignMachine {
    /// Participant `id` (slot `slot` of its session on `prefix`), not yet taking part. `ttl`
    /// sizes the backoff; `request_timeout` bounds the wait for a watcher's
    /// acknowledgement; `seed` makes the backoff jitter (random in production, from the
    /// schedule's seed in a simulation).
    pub fn new(
        prefix: &str,
        slot: u32,
        id: &str,
        ttl: Duration,
        request_timeout: Duration,
        seed: u64,
    ) -> CampaignMachine {
        CampaignMachine {
            layout: Layout::new(prefix),
            slot,
            id: id.to_owned(),
            request_timeout,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            backoff: Backoff::for_ttl(ttl),
            lease: None,
            led_with_lease: false,
            drop_key: false,
            created: None,
            epoch_seen: 0,
            vacated: None,
            role: Role::Idle,
            before_lead: None,
            step: Step::Idle,
            next_id: 0,
            bugs: Bugs::default(),
        }
    }

    /// The role this machine last published.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Tell the machine the role published for it by someone else (the lease keeper
    /// demotes leaders itself).
    pub fn set_role(&mut self, role: Role) {
        self.role = role;
    }

    /// The lease the machine campaigns with.
    pub fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// Our candidate key under the current lease.
    pub fn key(&self) -> Option<String> {
        self.lease.map(|l| self.layout.slot_key(l, self.slot))
    }

    /// Whether the machine is done.
    pub fn exited(&self) -> bool {
        matches!(self.step, Step::Exited)
    }

    /// Whether a round is under way (holding a slot among the session's rounds in flight).
    pub fn in_round(&self) -> bool {
        matches!(
            self.step,
            Step::Pacing(_)
                | Step::DropKey(_)
                | Step::Epoch(_)
                | Step::Campaign(_)
                | Step::Open { .. }
                | Step::Read { .. }
        )
    }

    /// What the machine is doing.
    pub fn activity(&self) -> Activity {
        match self.step {
            Step::Idle => Activity::Idle,
            Step::Lease => Activity::Lease,
            Step::Pacing(_) => Activity::Pacing,
            Step::DropKey(_)
            | Step::Epoch(_)
            | Step::Campaign(_)
            | Step::Open { .. }
            | Step::Read { .. } => Activity::Round,
            Step::Follow { .. } => Activity::Following,
            Step::Lead { .. } => Activity::Leading,
            Step::Pause { .. } => Activity::Pausing,
            Step::Doubt { .. } => Activity::Doubt,
            Step::Stopping { .. } => Activity::Stopping,
            Step::Exited => Activity::Exited,
        }
    }

    fn next_req(&mut self) -> ReqId {
        self.next_id += 1;
        self.next_id
    }

    fn unit(&mut self) -> f64 {
        self.rng = mix(self.rng);
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn publish(
        &mut self,
        fx: &mut Vec<Effect>,
        role: Option<Role>,
        health: HealthLevel,
        reason: impl Into<Arc<str>>,
    ) {
        if let Some(r) = &role {
            self.role = r.clone();
        }
        fx.push(Effect::Publish {
            role,
            health,
            reason: reason.into(),
        });
    }

    fn request(&mut self, fx: &mut Vec<Effect>, op: Op) -> ReqId {
        let id = self.next_req();
        fx.push(Effect::Request { id, op });
        id
    }

    /// Cancel the watchers of the current step (if any).
    fn unwatch(&mut self, fx: &mut Vec<Effect>) {
        let w = match &mut self.step {
            Step::Open { w, .. }
            | Step::Read { w, .. }
            | Step::Follow { w, .. }
            | Step::Lead { w, .. } => std::mem::take(w),
            _ => return,
        };
        for (id, _) in w.ids {
            fx.push(Effect::Unwatch(id));
        }
    }

    /// Leave the current step (its requests' answers and watchers' notes are ignored).
    fn leave(&mut self, fx: &mut Vec<Effect>) {
        self.unwatch(fx);
        self.step = Step::Idle;
    }

    /// Start a round: ask for a slot first.
    fn pace(&mut self, next: Next, fx: &mut Vec<Effect>) {
        self.step = Step::Pacing(next);
        fx.push(Effect::Pace);
    }

    /// Start over with the session's lease: wait for it, or campaign with it.
    fn restart(&mut self, fx: &mut Vec<Effect>) {
        self.resume(Next::Campaign, fx);
    }

    /// Go on with `next`: wait for a lease first if there is none, and delete a key that
    /// must be replaced before anything else.
    fn resume(&mut self, next: Next, fx: &mut Vec<Effect>) {
        if self.lease.is_none() {
            self.step = Step::Lease;
        } else if self.drop_key {
            self.pace(Next::DropKey, fx);
        } else {
            self.pace(next, fx);
        }
    }

    /// The next backoff delay.
    fn delay(&mut self) -> Duration {
        let unit = self.unit();
        self.backoff.next_delay(unit)
    }

    /// Back off, then restart the round with `next`.
    fn pause(&mut self, now: Instant, next: Next) {
        let delay = self.delay();
        self.step = Step::Pause {
            until: now + delay,
            next,
        };
    }

    /// A transient (or refused) failure: report it, back off, go on with the same lease.
    /// The role is kept: a leader stays leader only while its lease is safe, which the
    /// session's keeper enforces.
    fn fail(&mut self, now: Instant, kind: ErrorKind, msg: String, fx: &mut Vec<Effect>) {
        self.leave(fx);
        let delay = self.delay();
        let refused = kind == ErrorKind::PermissionDenied;
        let level = if refused {
            HealthLevel::Unhealthy
        } else {
            HealthLevel::Degraded
        };
        self.publish(
            fx,
            None,
            level,
            format!("{msg}; retrying in {}", Human(delay)),
        );
        if refused {
            // Health first, so that `join` returning this error finds it published.
            fx.push(Effect::Refused(kind, msg));
        }
        self.step = Step::Pause {
            until: now + delay,
            next: Next::Campaign,
        };
    }

    /// A failed request: the lease is gone, or a failure to back off from.
    fn failed(&mut self, now: Instant, err: EtcdErr, fx: &mut Vec<Effect>) {
        match err {
            EtcdErr::LeaseGone(m) => self.lease_lost(m.into(), fx),
            EtcdErr::Refused(kind, m) => self.fail(now, kind, m, fx),
            EtcdErr::Transient(m) => self.fail(now, ErrorKind::Backend, m, fx),
        }
    }

    /// The lease is gone: not leader (it was in doubt before it could expire, or it was
    /// revoked or wiped under us); our key went with it. Wait for the session's next one.
    fn lease_lost(&mut self, why: Arc<str>, fx: &mut Vec<Effect>) {
        if let Some(lease) = self.lease {
            fx.push(Effect::LeaseLost {
                lease,
                why: why.clone(),
            });
        }
        self.drop_lease(why, fx);
    }

    /// Forget the lease: not leader; wait for the session's next one.
    fn drop_lease(&mut self, why: Arc<str>, fx: &mut Vec<Effect>) {
        self.leave(fx);
        self.set_lease(None);
        self.publish(
            fx,
            Some(Role::Candidate),
            HealthLevel::Unhealthy,
            format!("{why}; campaigning again with a new lease"),
        );
        self.step = Step::Lease;
    }

    fn set_lease(&mut self, lease: Option<i64>) {
        self.lease = lease;
        self.led_with_lease = false;
        self.drop_key = false;
        self.created = None;
    }

    fn saw_epoch(&mut self, epoch: u64, fx: &mut Vec<Effect>) {
        if epoch > self.epoch_seen {
            self.epoch_seen = epoch;
        }
        fx.push(Effect::SawEpoch(epoch));
    }

    /// The round's slot is held: send its first request.
    fn start(&mut self, now: Instant, next: Next, fx: &mut Vec<Effect>) {
        let Some(key) = self.key() else {
            self.step = Step::Lease;
            return;
        };
        match next {
            Next::DropKey => {
                let lease = self.lease.unwrap_or_default();
                let id = self.request(fx, Op::DeleteKey { key, lease });
                self.step = Step::DropKey(id);
            }
            Next::Campaign => {
                let op = Op::EnsureEpoch {
                    key: self.layout.epoch_key.clone(),
                    at_least: self.epoch_seen + 1,
                };
                let id = self.request(fx, op);
                self.step = Step::Epoch(id);
            }
            Next::Queue(my_rev) => self.open(now, my_rev, key, fx),
        }
    }

    /// Watch our key and the epoch record (from now), before reading the queue.
    fn open(&mut self, now: Instant, my_rev: i64, key: String, fx: &mut Vec<Effect>) {
        let own = self.next_req();
        let epoch = self.next_req();
        fx.push(Effect::Watch {
            id: own,
            key,
            start: None,
        });
        fx.push(Effect::Watch {
            id: epoch,
            key: self.layout.epoch_key.clone(),
            start: None,
        });
        self.step = Step::Open {
            my_rev,
            w: Watchers {
                ids: vec![(own, Watched::Own), (epoch, Watched::Epoch)],
                pending: 2,
                ..Watchers::default()
            },
            deadline: now + self.request_timeout,
        };
    }

    fn campaign(&mut self, fx: &mut Vec<Effect>) {
        let (Some(lease), Some(key)) = (self.lease, self.key()) else {
            self.step = Step::Lease;
            return;
        };
        let op = Op::Campaign {
            key,
            lease,
            id: self.id.as_bytes().to_vec(),
            epoch_key: self.layout.epoch_key.clone(),
        };
        let id = self.request(fx, op);
        self.step = Step::Campaign(id);
    }

    /// After the campaign, or when our key or the epoch record is gone: campaign again,
    /// paced by the backoff (which restarts after every successful read of the queue).
    fn again(&mut self, now: Instant) {
        self.pause(now, Next::Campaign);
    }

    /// Publish `Leader` with `term` (the executor checks the lease).
    fn lead(
        &mut self,
        term: Term,
        handover: Option<Instant>,
        reason: &'static str,
        fx: &mut Vec<Effect>,
    ) {
        let Some(lease) = self.lease else { return };
        // Kept until the executor says whether the publication was refused.
        self.before_lead = Some((self.role.clone(), self.led_with_lease));
        self.led_with_lease = true;
        self.role = Role::Leader { term };
        fx.push(Effect::PublishLeader {
            lease,
            term,
            handover,
            reason: reason.into(),
        });
    }

    fn command(&mut self, cmd: Command, fx: &mut Vec<Effect>) {
        match cmd {
            Command::Join => {
                if matches!(self.step, Step::Idle) {
                    self.restart(fx);
                }
            }
            Command::Stop { reason, delete_by } => {
                self.leave(fx);
                let key = self.key().filter(|_| delete_by.is_some());
                let lease = self.lease.unwrap_or_default();
                let mut pending = None;
                if self.bugs.delete_before_publish {
                    if let Some(key) = key.clone() {
                        pending = Some(self.request(fx, Op::DeleteKey { key, lease }));
                    }
                }
                // Stopped: publish that we no longer lead FIRST, then remove our place.
                self.publish(fx, Some(Role::Idle), HealthLevel::Healthy, reason);
                if let (Some(key), None) = (key, pending) {
                    pending = Some(self.request(fx, Op::DeleteKey { key, lease }));
                }
                match (pending, delete_by) {
                    (Some(id), Some(deadline)) => {
                        self.step = Step::Stopping {
                            deadline,
                            pending: Some(id),
                            retry_at: None,
                        };
                    }
                    _ => self.finish(Ok(()), fx),
                }
            }
        }
    }

    fn finish(&mut self, res: std::result::Result<(), (ErrorKind, String)>, fx: &mut Vec<Effect>) {
        self.set_lease(None);
        self.step = Step::Exited;
        fx.push(Effect::Done(res));
        fx.push(Effect::Exit);
    }

    fn on_lease(&mut self, now: Instant, input: LeaseInput, fx: &mut Vec<Effect>) {
        if matches!(self.step, Step::Stopping { .. } | Step::Exited) {
            return;
        }
        match input {
            LeaseInput::Granted { id } => {
                if self.lease == Some(id) {
                    return;
                }
                if self.lease.is_some() && !matches!(self.step, Step::Idle) {
                    // The session replaced our lease: everything under the old one is gone.
                    self.drop_lease("the session replaced its lease".into(), fx);
                }
                self.set_lease(Some(id));
                if matches!(self.step, Step::Lease) {
                    self.restart(fx);
                }
            }
            LeaseInput::GrantFailed(kind, msg) => {
                if matches!(self.step, Step::Lease) {
                    self.fail(now, kind, msg.to_string(), fx);
                }
            }
            LeaseInput::Lost(why) => {
                if self.lease.is_some() {
                    self.lease_lost(why, fx);
                }
            }
            LeaseInput::Doubt { reason, expires } => {
                if self.lease.is_none() || matches!(self.step, Step::Idle) {
                    return;
                }
                if let Step::Doubt {
                    expires: e,
                    reason: r,
                    ..
                } = &mut self.step
                {
                    *e = Some(expires);
                    *r = reason;
                    self.doubt_health(now, fx);
                    return;
                }
                if self.bugs.suspended_leader_kept && self.role.is_leader() {
                    return;
                }
                self.enter_doubt(Some(expires), reason, fx);
                self.doubt_health(now, fx);
            }
            LeaseInput::Safe => {
                if let Step::Doubt { .. } = self.step {
                    self.recovered(fx);
                }
            }
        }
    }

    fn enter_doubt(&mut self, expires: Option<Instant>, reason: Arc<str>, fx: &mut Vec<Effect>) {
        let joined = self.role.is_joined() || self.role == Role::Suspended;
        self.leave(fx);
        let role = if joined {
            Role::Suspended
        } else {
            Role::Candidate
        };
        self.step = Step::Doubt {
            expires,
            reason,
            role,
            unhealthy: false,
        };
    }

    /// Publish the doubt: Degraded until the lease may have expired, Unhealthy after.
    fn doubt_health(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Step::Doubt {
            expires: Some(expires),
            reason,
            role,
            unhealthy,
        } = &mut self.step
        else {
            return;
        };
        let late = now >= *expires;
        let (role, reason) = (role.clone(), reason.clone());
        if late {
            *unhealthy = true;
        }
        let (level, reason) = if late {
            (
                HealthLevel::Unhealthy,
                format!("{reason}; the lease may have expired on the server").into(),
            )
        } else {
            (HealthLevel::Degraded, reason)
        };
        self.publish(fx, Some(role), level, reason);
    }

    /// Renewals are answered again: the lease lives and our key (if any) with it.
    fn recovered(&mut self, fx: &mut Vec<Effect>) {
        if self.led_with_lease && !self.bugs.reuse_term {
            // Our key led and lost leadership: it must not lead again with the same term.
            // Delete it and campaign with a new key (the lease, shared, stays).
            self.led_with_lease = false;
            self.drop_key = true;
            self.publish(
                fx,
                Some(Role::Candidate),
                HealthLevel::Degraded,
                "our key led before the lease fell into doubt; campaigning again with a new key",
            );
        }
        self.step = Step::Idle;
        self.restart(fx);
    }

    fn on_answer(
        &mut self,
        now: Instant,
        id: ReqId,
        res: std::result::Result<Answer, EtcdErr>,
        fx: &mut Vec<Effect>,
    ) {
        match self.step.clone() {
            Step::DropKey(want) if want == id => match res {
                Ok(_) => {
                    self.drop_key = false;
                    self.start(now, Next::Campaign, fx);
                }
                Err(e) => self.failed(now, e, fx),
            },
            Step::Epoch(want) if want == id => match res {
                Ok(Answer::Epoch { value, .. }) => {
                    let parsed = value.as_deref().map(parse_epoch);
                    match parsed {
                        Some(Ok(epoch)) => {
                            self.saw_epoch(epoch, fx);
                            self.campaign(fx);
                        }
                        Some(Err(e)) => self.fail(now, e.kind(), e.message().to_owned(), fx),
                        None => self.fail(
                            now,
                            ErrorKind::Backend,
                            "the epoch record vanished while being read; retrying".into(),
                            fx,
                        ),
                    }
                }
                Ok(other) => self.unexpected(now, other, fx),
                Err(e) => self.failed(now, e, fx),
            },
            Step::Campaign(want) if want == id => match res {
                Ok(Answer::Campaign {
                    succeeded,
                    header_rev,
                    own,
                    epoch_exists,
                }) => {
                    if succeeded {
                        self.created = Some(header_rev);
                    }
                    let my_rev = if succeeded {
                        Some(header_rev)
                    } else if !epoch_exists {
                        None
                    } else {
                        own.map(|k| k.create_rev)
                    };
                    if my_rev.is_some() && my_rev != self.created {
                        // Not the key this run put: replace it (a new key, a new term).
                        self.drop_key = true;
                        return self.start(now, Next::DropKey, fx);
                    }
                    match my_rev {
                        Some(rev) if self.bugs.lead_before_read => {
                            let term = Term::new(self.epoch_seen, rev as u64);
                            self.lead(term, None, "first in the queue", fx);
                            self.step = Step::Idle;
                            self.pace(Next::Queue(rev), fx);
                        }
                        Some(rev) => self.start(now, Next::Queue(rev), fx),
                        // The epoch record is gone (recreate it), or neither branch
                        // condition explains the answer (a concurrent delete): again.
                        None => self.again(now),
                    }
                }
                Ok(other) => self.unexpected(now, other, fx),
                Err(e) => self.failed(now, e, fx),
            },
            Step::Read {
                my_rev,
                w,
                id: want,
            } if want == id => match res {
                Ok(Answer::Queue {
                    rev,
                    first,
                    ahead,
                    more,
                    own,
                    epoch,
                }) => self.on_queue(now, my_rev, w, rev, first, ahead, more, own, epoch, fx),
                Ok(other) => self.unexpected(now, other, fx),
                Err(e) => self.failed(now, e, fx),
            },
            Step::Stopping {
                deadline,
                pending: Some(want),
                ..
            } if want == id => match res {
                Ok(_) => self.finish(Ok(()), fx),
                Err(e) => {
                    let retry = now + self.delay();
                    if retry >= deadline {
                        let key = self.key().unwrap_or_default();
                        self.finish(
                            Err((
                                ErrorKind::Backend,
                                format!(
                                    "could not delete our key {key} ({e}); it goes with the session's lease"
                                ),
                            )),
                            fx,
                        );
                    } else {
                        self.step = Step::Stopping {
                            deadline,
                            pending: None,
                            retry_at: Some(retry),
                        };
                    }
                }
            },
            // An answer to a request of an abandoned step.
            _ => {}
        }
    }

    fn unexpected(&mut self, now: Instant, answer: Answer, fx: &mut Vec<Effect>) {
        self.fail(
            now,
            ErrorKind::Backend,
            format!("unexpected etcd answer {answer:?}"),
            fx,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_queue(
        &mut self,
        now: Instant,
        my_rev: i64,
        mut w: Watchers,
        rev: i64,
        first: Option<(String, Vec<u8>)>,
        ahead: Vec<String>,
        more: bool,
        own: Option<KeyInfo>,
        epoch: Option<Vec<u8>>,
        fx: &mut Vec<Effect>,
    ) {
        // Our key: created at our campaign's revision AND under our lease (a revision alone
        // could be reused after a wipe, which restarts revisions).
        let mine = own
            .filter(|k| Some(k.lease) == self.lease)
            .map(|k| k.create_rev);
        if mine != Some(my_rev) {
            self.leave(fx);
            self.publish(
                fx,
                Some(Role::Candidate),
                HealthLevel::Degraded,
                "our candidate key was deleted; campaigning again",
            );
            return self.again(now);
        }
        let epoch = match epoch.as_deref().map(parse_epoch) {
            Some(Ok(e)) => e,
            Some(Err(e)) => return self.fail(now, e.kind(), e.message().to_owned(), fx),
            None => {
                // The epoch record is gone: recreate it, then campaign again.
                self.leave(fx);
                return self.again(now);
            }
        };
        self.saw_epoch(epoch, fx);
        self.backoff.reset();
        fx.push(Effect::Progress);
        let term = Term::new(epoch, my_rev as u64);
        if ahead.is_empty() {
            let handover = self.vacated.take();
            let own_deleted = w.own_deleted;
            self.step = Step::Lead { my_rev, w };
            self.lead(term, handover, "first in the queue", fx);
            if own_deleted {
                self.reread(now, false, fx);
            }
            return;
        }
        // How many keys were created before ours, at this read: exact when etcd says there
        // are no more than it returned, else "more than we watch". No key can be created
        // before ours any more (revisions only grow; a wipe ends the watch stream).
        let count = ahead.len() as i64 + i64::from(more);
        let leader = first
            .as_ref()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        for key in ahead {
            let leads = first.as_ref().is_some_and(|(f, _)| *f == key);
            let id = self.next_req();
            w.ids.push((id, Watched::Ahead { leads, gone: false }));
            w.pending += 1;
            w.ahead_alive += 1;
            fx.push(Effect::Watch {
                id,
                key,
                start: Some(rev + 1),
            });
        }
        let early = w.early;
        self.step = Step::Follow {
            my_rev,
            w,
            term,
            count,
            leader_left: false,
        };
        self.publish(
            fx,
            Some(Role::Follower { leader }),
            HealthLevel::Healthy,
            "waiting for the predecessor's key to be deleted",
        );
        if early {
            // Our key or the epoch record changed while the queue was read.
            self.reread(now, false, fx);
        }
    }

    fn on_watch(&mut self, now: Instant, note: WatchNote, fx: &mut Vec<Effect>) {
        let in_read = matches!(self.step, Step::Read { .. });
        let Some(w) = self.watchers_mut() else {
            return;
        };
        let id = match &note {
            WatchNote::Ended(e) => {
                let msg = format!("the etcd watch stream ended: {e}");
                return self.fail(now, ErrorKind::Backend, msg, fx);
            }
            WatchNote::Created(id)
            | WatchNote::Events { id, .. }
            | WatchNote::Cancelled { id, .. } => *id,
        };
        let Some(pos) = w.ids.iter().position(|(i, _)| *i == id) else {
            return;
        };
        match note {
            WatchNote::Created(_) => {
                w.pending = w.pending.saturating_sub(1);
                if let Step::Open { my_rev, w, .. } = &mut self.step {
                    if w.pending == 0 {
                        let (my_rev, w) = (*my_rev, std::mem::take(w));
                        self.read(my_rev, w, fx);
                    }
                }
            }
            WatchNote::Cancelled {
                compacted, reason, ..
            } => {
                if !compacted && !reason.is_empty() {
                    let msg = format!("etcd cancelled the watch: {reason}");
                    return self.fail(now, ErrorKind::Backend, msg, fx);
                }
                if matches!(self.step, Step::Open { .. }) {
                    let msg = "etcd cancelled a new watch of our key or the epoch record";
                    return self.fail(now, ErrorKind::Backend, msg.into(), fx);
                }
                let left = self.leader_left();
                self.reread(now, left, fx);
            }
            WatchNote::Events {
                header_rev, events, ..
            } => {
                if events.is_empty() {
                    return;
                }
                let deleted = events.iter().any(|e| e.deleted);
                let live = events.len() == 1 && events[0].mod_rev == header_rev;
                match &mut w.ids[pos].1 {
                    Watched::Own => {
                        w.changed = true;
                        w.own_deleted |= deleted;
                        w.early |= in_read;
                    }
                    Watched::Epoch => {
                        w.changed = true;
                        w.early |= in_read;
                    }
                    Watched::Ahead { leads, gone } if deleted && !*gone => {
                        *gone = true;
                        let leads = *leads;
                        w.ahead_alive -= 1;
                        return self.ahead_deleted(now, live, leads, fx);
                    }
                    // A value changed (e.g. a Go leader's Proclaim), or a key deleted before
                    // was created again (it is no longer ahead of ours): keep waiting.
                    Watched::Ahead { .. } => return,
                }
                if deleted && matches!(w.ids[pos].1, Watched::Own) && self.role.is_leader() {
                    // Our key is gone (an operator, a revoked lease): whoever is next may
                    // lead already. Step down at once, before anything else is asked.
                    self.publish(
                        fx,
                        Some(Role::Candidate),
                        HealthLevel::Degraded,
                        "our candidate key was deleted; campaigning again",
                    );
                }
                match &self.step {
                    // Our key or the epoch record changed: read again.
                    Step::Follow { leader_left, .. } => {
                        let left = *leader_left;
                        self.reread(now, left, fx);
                    }
                    // A leader waits only for its key's deletion.
                    Step::Lead { w, .. } if w.own_deleted => self.reread(now, false, fx),
                    _ => {}
                }
            }
            WatchNote::Ended(_) => {}
        }
    }

    /// The watchers of the current step, if it has any.
    fn watchers_mut(&mut self) -> Option<&mut Watchers> {
        match &mut self.step {
            Step::Open { w, .. }
            | Step::Read { w, .. }
            | Step::Follow { w, .. }
            | Step::Lead { w, .. } => Some(w),
            _ => None,
        }
    }

    fn leader_left(&self) -> bool {
        matches!(
            self.step,
            Step::Follow {
                leader_left: true,
                ..
            }
        )
    }

    fn ahead_deleted(&mut self, now: Instant, live: bool, leads: bool, fx: &mut Vec<Effect>) {
        let Step::Follow {
            my_rev,
            w,
            term,
            count,
            leader_left,
        } = &mut self.step
        else {
            return;
        };
        *leader_left |= leads;
        *count -= 1;
        let left = *leader_left;
        if !live || w.changed {
            return self.reread(now, left, fx);
        }
        if *count <= 0 || self.bugs.skip_ahead_wait {
            // Every key that was ahead of us is deleted, and our key and the epoch record are
            // as read (a change of either would have come first on this stream).
            let (my_rev, term, w) = (*my_rev, *term, std::mem::take(w));
            self.step = Step::Lead { my_rev, w };
            self.lead(
                term,
                Some(now),
                "first in the queue (the keys ahead of ours were deleted)",
                fx,
            );
            return;
        }
        if *count > w.ahead_alive {
            // Keys we do not watch may be ahead: learn the new nearest ones.
            self.reread(now, left, fx);
        }
    }

    /// Read the queue again (a new round in the queue: new watchers, a new read).
    fn reread(&mut self, now: Instant, leader_left: bool, fx: &mut Vec<Effect>) {
        let my_rev = match &self.step {
            Step::Follow { my_rev, .. } | Step::Lead { my_rev, .. } | Step::Read { my_rev, .. } => {
                *my_rev
            }
            _ => return,
        };
        self.leave(fx);
        self.vacated = if leader_left { Some(now) } else { None };
        self.pace(Next::Queue(my_rev), fx);
    }

    fn read(&mut self, my_rev: i64, w: Watchers, fx: &mut Vec<Effect>) {
        let Some(key) = self.key() else {
            self.step = Step::Lease;
            return;
        };
        let op = Op::ReadQueue {
            range: self.layout.range.clone(),
            key,
            epoch_key: self.layout.epoch_key.clone(),
            below: my_rev - 1,
            limit: AHEAD_WATCHED,
        };
        let id = self.request(fx, op);
        self.step = Step::Read { my_rev, w, id };
    }

    fn on_timer(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match self.step.clone() {
            Step::Pause { until, next } if now >= until => self.resume(next, fx),
            Step::Open { deadline, .. } if now >= deadline => {
                let msg = format!(
                    "etcd did not acknowledge a watch of our key within {}",
                    Human(self.request_timeout)
                );
                self.fail(now, ErrorKind::Timeout, msg, fx);
            }
            Step::Doubt {
                expires: Some(e),
                unhealthy: false,
                ..
            } if now >= e => self.doubt_health(now, fx),
            Step::Stopping {
                deadline,
                retry_at,
                pending,
            } => {
                if pending.is_none() && retry_at.is_some_and(|r| now >= r) {
                    let (Some(key), Some(lease)) = (self.key(), self.lease) else {
                        return self.finish(Ok(()), fx);
                    };
                    let id = self.request(fx, Op::DeleteKey { key, lease });
                    self.step = Step::Stopping {
                        deadline,
                        pending: Some(id),
                        retry_at: None,
                    };
                } else if now >= deadline {
                    let key = self.key().unwrap_or_default();
                    self.finish(
                        Err((
                            ErrorKind::Timeout,
                            format!(
                                "could not delete our key {key} in time; it goes with the session's lease"
                            ),
                        )),
                        fx,
                    );
                }
            }
            _ => {}
        }
    }
}

impl Machine for CampaignMachine {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Instant, input: Input, fx: &mut Vec<Effect>) {
        if self.exited() {
            return;
        }
        match input {
            Input::Command(cmd) => self.command(cmd, fx),
            Input::Lease(l) => self.on_lease(now, l, fx),
            Input::Answer(id, res) => self.on_answer(now, id, res, fx),
            Input::Watch(note) => self.on_watch(now, note, fx),
            Input::LeaderRefused => {
                // The key did not lead: back to what was published before.
                if let Some((role, led)) = self.before_lead.take() {
                    self.role = role;
                    self.led_with_lease = led;
                }
                if matches!(self.step, Step::Lead { .. }) {
                    // The lease is no longer safe: wait for the executor's word on it.
                    self.enter_doubt(None, "lease in doubt".into(), fx);
                }
            }
            Input::Timer => self.on_timer(now, fx),
            Input::Paced => {
                if let Step::Pacing(next) = self.step {
                    self.start(now, next, fx);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.step {
            Step::Pause { until, .. } => Some(*until),
            Step::Open { deadline, .. } => Some(*deadline),
            Step::Doubt {
                expires: Some(e),
                unhealthy: false,
                ..
            } => Some(*e),
            Step::Stopping {
                deadline, retry_at, ..
            } => Some(retry_at.map_or(*deadline, |r| r.min(*deadline))),
            _ => None,
        }
    }
}
