//! Simulated clusters of supervised participants, driving the production
//! [`SupervisorMachine`](crate::supervisor) through seeded fault schedules.
//!
//! # The model
//!
//! * **N processes**, each one supervisor machine plus the executor parts that production
//!   runs as tasks (the mode/heartbeat reader every `check_interval`, read now when the
//!   machine asks; the heartbeat writer; compare-and-swaps), each with its own clock running
//!   at a rate within ±4 % of the others (the documented bound is < 10 %).
//! * **Two layer elections** (primary store and fallback store), each keeping its own
//!   guarantee the way ZooKeeper and etcd do: one holder per layer; a client that loses its
//!   store reports `Suspended` (Unhealthy) within a third of the session timeout, long
//!   before the store expires its session; the store re-grants only after the expiry, with
//!   a higher term; a client that reconnects in time finds its grant again (same term:
//!   the supervisor must renew its generation), one that reconnects late gets a new session
//!   at the back of the queue.
//! * **A mode-record store** in the fallback store: linearizable reads and compare-and-swaps
//!   applied when the request arrives, with random request and reply delays (some beyond
//!   `record_timeout`: a timeout with unknown outcome), a wipe that loses both records and
//!   restarts the revision counter.
//! * **Faults** (seeded, within the first [`FAULT_PHASE`]): one process cut from one store or
//!   both; store outages; slow stores; process pauses up to 4× the session timeout (a paused
//!   process neither runs nor renews its sessions, and cannot know it was paused; its
//!   layers notice a session lost meanwhile up to 2 × `record_timeout` after the resume);
//!   crashes
//!   and restarts with a fresh machine; resigns and re-joins; wipes of the fallback store; optionally the
//!   documented asymmetric partition (the primary leader sees only the primary store, all
//!   others only the fallback store). Without `strict_mode_lease` the schedules otherwise
//!   exclude that combination, as the guarantee does: a process cut from the fallback store
//!   alone, or a slow fallback store, near a process cut from the primary store.
//!
//! After the fault phase everything heals, and the [`Timeline`] checks safety over the whole
//! run and liveness from the end of the faults.

use std::time::{Duration, Instant};

use super::{fmt_vt, Queue, Rng, Timeline, TimelineReport, Vt};
use crate::error::Error;
use crate::participant::Machine;
use crate::record::{CasOutcome, Versioned};
use crate::status::{Health, HealthLevel, Role, Status};
use crate::supervisor::machine::{self, Change, Config, Effect, Input, SupervisorMachine};
use crate::supervisor::mode::{Heartbeat, Layer};
use crate::supervisor::{DampedPolicy, SupervisorEvent, Timings};
use crate::term::Term;

pub use crate::supervisor::machine::Bugs;

const MS: Vt = 1000;
/// `check_interval` (X) in the simulated clusters.
pub const CHECK_INTERVAL: Vt = 100 * MS;
/// `record_timeout` (T).
pub const RECORD_TIMEOUT: Vt = 50 * MS;
/// Session timeout of both layers (ZooKeeper session, etcd lease TTL).
pub const SESSION_TIMEOUT: Vt = 300 * MS;
/// `failover_after`.
pub const FAILOVER_AFTER: Vt = 600 * MS;
/// `failback_after` (the default policy grows it after repeated failovers).
pub const FAILBACK_AFTER: Vt = 1200 * MS;
/// Faults happen only before this instant; then everything heals.
pub const FAULT_PHASE: Vt = 5_000 * MS;
/// Once faults stop, someone must lead within this bound: two session timeouts (stale
/// sessions expire, the layer re-grants), a renewal or re-creation of the mode record with
/// its takeover delay G, and reads at X — rounded up generously to 3 s.
pub const LIVENESS_BOUND: Vt = 3_000 * MS;
/// A simulated run lasts this long.
pub const RUN: Vt = FAULT_PHASE + LIVENESS_BOUND + 1_000 * MS;

/// Which faults a schedule may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// One process cut from the primary store, the fallback store, or both.
    pub partitions: bool,
    /// A store down for everyone.
    pub outages: bool,
    /// A store answering slowly (many requests time out, outcome unknown).
    pub slow: bool,
    /// A process paused (longer than the margins), then resumed.
    pub pauses: bool,
    /// A process crashed, then restarted with a fresh machine.
    pub crashes: bool,
    /// A participant resigned (both layers), then joined again.
    pub resigns: bool,
    /// The fallback store wiped (mode and heartbeat records lost, revisions restart).
    pub wipes: bool,
    /// The documented asymmetric partition: the primary leader sees only the primary store,
    /// everyone else only the fallback store, for longer than `failover_after`.
    pub asymmetric: bool,
    /// Clock rates differ per process (within ±4 %).
    pub drift: bool,
}

impl Faults {
    /// Every fault except the asymmetric partition.
    pub const ALL: Faults = Faults {
        partitions: true,
        outages: true,
        slow: true,
        pauses: true,
        crashes: true,
        resigns: true,
        wipes: true,
        asymmetric: false,
        drift: true,
    };
}

/// A fault placed by hand, for directed scenarios (virtual µs; store 0 is the primary,
/// 1 the fallback store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scripted {
    /// A store down for everyone from `start` to `end`.
    Outage {
        /// Which store.
        store: usize,
        /// From.
        start: Vt,
        /// Until.
        end: Vt,
    },
    /// The fallback store wiped at `at` (both records lost, revisions restart).
    Wipe {
        /// When.
        at: Vt,
    },
}

/// One simulated cluster's configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of participants.
    pub participants: usize,
    /// The supervisors' `strict_mode_lease`.
    pub strict_mode_lease: bool,
    /// The faults a schedule may contain.
    pub faults: Faults,
    /// Bugs planted in every machine (tests of the simulation itself).
    pub bugs: Bugs,
    /// Record a readable trace (slower; used to replay a failing seed).
    pub trace: bool,
    /// Faults placed by hand instead of the seed's schedule (the seed still decides every
    /// delay and clock rate).
    pub script: Option<Vec<Scripted>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            participants: 3,
            strict_mode_lease: false,
            faults: Faults::ALL,
            bugs: Bugs::default(),
            trace: false,
            script: None,
        }
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The checker's verdict.
    pub report: TimelineReport,
    /// Mode changes applied to the record store (creations, failovers, failbacks, renewals).
    pub mode_writes: usize,
    /// Events processed.
    pub events: u64,
    /// Failovers and failbacks adopted (summed over participants).
    pub failovers: usize,
    /// Failbacks adopted (summed over participants).
    pub failbacks: usize,
    /// The trace (when asked for).
    pub trace: Vec<String>,
    /// Every leadership published: (participant, term, from, until; None: still leading).
    pub leaderships: Vec<(usize, Term, Vt, Option<Vt>)>,
}

impl Outcome {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.report.violations.is_empty()
    }

    /// The seed, the violations and the trace, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "seed {} failed (replay: SUCCESSION_SIM_SEED={} cargo test -p succession-core --features sim --test sim_supervisor):\n- {}\ntrace:\n{}",
            self.seed,
            self.seed,
            self.report.violations.join("\n- "),
            self.trace.join("\n")
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum FaultKind {
    Cut { p: usize, stores: [bool; 2] },
    Outage { store: usize },
    Slow { store: usize },
    Pause { p: usize },
    Crash { p: usize },
    Resign { p: usize },
    Wipe,
    Asymmetric,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    kind: FaultKind,
    start: Vt,
    end: Vt,
}

#[derive(Debug)]
enum OpKind {
    ReadMode,
    ReadHb,
    Cas(Change),
    HbWrite(Vec<u8>),
}

#[derive(Debug)]
enum Answer {
    Read(Option<Versioned>),
    Cas(CasOutcome),
    Written,
}

#[derive(Debug)]
struct Op {
    p: usize,
    kind: OpKind,
    done: bool,
    sent: Instant,
    reply_delay: Vt,
}

#[derive(Debug)]
enum PEv {
    Tick(u64),
    ReadLoop(u64),
    HbLoop(u64),
    Reply(usize, Answer),
    Timeout(usize),
    /// The mode record changed (a watch notification): read it now.
    Watch,
    LayerNotice(usize),
}

#[derive(Debug)]
enum Ev {
    /// Process-side: delivered only to this incarnation, deferred while it is paused.
    Proc {
        p: usize,
        inc: u32,
        ev: PEv,
    },
    /// A request reaches the fallback store.
    Arrive(usize),
    /// A layer store expires a session if it is still out of contact.
    /// (`orphan`: the process holding it crashed; it expires whatever its new
    /// incarnation does.)
    Expire {
        layer: usize,
        p: usize,
        session: u64,
        orphan: bool,
    },
    FaultStart(usize),
    FaultEnd(usize),
}

#[derive(Debug, Default)]
struct LayerStore {
    sessions: Vec<Option<u64>>,
    lost_since: Vec<Option<Vt>>,
    queue: Vec<(usize, u64)>,
    holder: Option<(usize, u64, Term)>,
    seq: u64,
    next_session: u64,
}

#[derive(Debug, Default)]
struct Records {
    mode: Option<Versioned>,
    hb: Option<Versioned>,
    rev: u64,
}

struct Proc {
    name: String,
    m: SupervisorMachine,
    inc: u32,
    rate_ppm: u64,
    offset: u64,
    paused: bool,
    crashed: bool,
    deferred: Vec<PEv>,
    tick: u64,
    read_token: u64,
    read_in_flight: Option<(usize, Instant)>,
    poke: bool,
    beat: Option<Heartbeat>,
    hb_token: u64,
    hb_running: bool,
    sessions: [Option<u64>; 2],
    delivered: [Option<(Role, HealthLevel)>; 2],
    /// Taking part (joined, not resigned): its layer clients hold sessions.
    joined: bool,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    rng: Rng,
    q: Queue<Ev>,
    procs: Vec<Proc>,
    anchor: Instant,
    timings: Timings,
    up: [bool; 2],
    slow: [bool; 2],
    cut: Vec<[bool; 2]>,
    layers: [LayerStore; 2],
    records: Records,
    ops: Vec<Op>,
    faults: Vec<Fault>,
    timeline: Timeline,
    trace: Vec<String>,
    fx: Vec<Effect>,
    mode_writes: usize,
    events: u64,
    failovers: usize,
    failbacks: usize,
    ordering: Vec<String>,
}

fn anchor() -> Instant {
    crate::participant::virtual_origin()
}

fn us(d: Duration) -> Vt {
    d.as_micros() as Vt
}

/// Run one seeded schedule.
pub fn run(seed: u64, cfg: &SimConfig) -> Outcome {
    let mut sim = Sim::new(seed, cfg);
    sim.run();
    let mut report = sim.timeline.check(
        RUN,
        (us(sim.timings.mode_lease), sim.margin()),
        Some((sim.heal_at(), LIVENESS_BOUND)),
    );
    report.violations.append(&mut sim.ordering);
    Outcome {
        seed,
        report,
        mode_writes: sim.mode_writes,
        events: sim.events,
        failovers: sim.failovers,
        failbacks: sim.failbacks,
        leaderships: if cfg.script.is_some() {
            sim.timeline.leaderships()
        } else {
            Vec::new()
        },
        trace: sim.trace,
    }
}

/// Run `seeds`; on the first failure, replay it with a trace and return its description.
/// Also checks that the replay reproduces the failure exactly.
pub fn explore(cfg: &SimConfig, seeds: &[u64]) -> Result<Summary, String> {
    let mut sum = Summary::default();
    for &seed in seeds {
        let o = run(seed, cfg);
        sum.add(&o);
        if !o.ok() {
            let traced = run(
                seed,
                &SimConfig {
                    trace: true,
                    ..cfg.clone()
                },
            );
            assert_eq!(
                traced.report.violations, o.report.violations,
                "replaying seed {seed} did not reproduce the same run"
            );
            return Err(traced.describe());
        }
    }
    Ok(sum)
}

/// Totals over many runs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Schedules run.
    pub runs: u64,
    /// Leadership grants in all of them.
    pub grants: u64,
    /// Mode record writes that took effect.
    pub mode_writes: u64,
    /// Fencing-case overlaps (paused leaders after their resume), and the longest (µs).
    pub fenced: u64,
    /// The longest fencing-case overlap after a resume (µs).
    pub max_fenced: Vt,
    /// Documented stale-generation primary handovers (see [`TimelineReport::stale_generation`]).
    pub stale_generation: u64,
    /// Both documented windows at once (see [`TimelineReport::compound`]).
    pub compound: u64,
    /// The longest time from the end of faults to a leader (µs).
    pub max_time_to_leader: Vt,
    /// Events processed.
    pub events: u64,
    /// Failovers adopted (summed over participants).
    pub failovers: u64,
    /// Failbacks adopted (summed over participants).
    pub failbacks: u64,
}

impl Summary {
    fn add(&mut self, o: &Outcome) {
        self.runs += 1;
        self.grants += o.report.grants as u64;
        self.mode_writes += o.mode_writes as u64;
        self.fenced += o.report.fenced as u64;
        self.stale_generation += o.report.stale_generation as u64;
        self.compound += o.report.compound as u64;
        self.max_fenced = self.max_fenced.max(o.report.max_fenced);
        self.max_time_to_leader = self
            .max_time_to_leader
            .max(o.report.time_to_leader.unwrap_or(0));
        self.events += o.events;
        self.failovers += o.failovers as u64;
        self.failbacks += o.failbacks as u64;
    }
}

impl<'a> Sim<'a> {
    fn new(seed: u64, cfg: &'a SimConfig) -> Self {
        let mut rng = Rng::new(seed);
        let timings = Timings::derive(
            Duration::from_micros(SESSION_TIMEOUT),
            Duration::from_micros(FAILOVER_AFTER),
            Duration::from_micros(FAILBACK_AFTER),
            Duration::from_micros(CHECK_INTERVAL),
            Duration::from_micros(RECORD_TIMEOUT),
        );
        let n = cfg.participants;
        let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        let mut sim = Sim {
            cfg,
            q: Queue::new(),
            procs: Vec::with_capacity(n),
            anchor: anchor(),
            timings,
            up: [true; 2],
            slow: [false; 2],
            cut: vec![[false; 2]; n],
            layers: Default::default(),
            records: Records::default(),
            ops: Vec::new(),
            faults: Vec::new(),
            timeline: Timeline::new(names.clone()),
            trace: Vec::new(),
            fx: Vec::new(),
            mode_writes: 0,
            events: 0,
            failovers: 0,
            failbacks: 0,
            ordering: Vec::new(),
            rng: Rng::new(0),
        };
        for l in &mut sim.layers {
            l.sessions = vec![None; n];
            l.lost_since = vec![None; n];
        }
        for name in names {
            let rate_ppm = if cfg.faults.drift {
                rng.range(960_000, 1_040_000)
            } else {
                1_000_000
            };
            let offset = rng.range(0, 10_000_000);
            let m = sim.machine(&name, rate_ppm, offset, 0);
            sim.procs.push(Proc {
                name,
                m,
                inc: 0,
                rate_ppm,
                offset,
                paused: false,
                crashed: false,
                deferred: Vec::new(),
                tick: 0,
                read_token: 0,
                read_in_flight: None,
                poke: false,
                beat: None,
                hb_token: 0,
                hb_running: false,
                sessions: [None; 2],
                delivered: [None, None],
                joined: true,
            });
        }
        sim.faults = match &cfg.script {
            Some(script) => script
                .iter()
                .map(|s| match *s {
                    Scripted::Outage { store, start, end } => Fault {
                        kind: FaultKind::Outage { store },
                        start,
                        end,
                    },
                    Scripted::Wipe { at } => Fault {
                        kind: FaultKind::Wipe,
                        start: at,
                        end: at,
                    },
                })
                .collect(),
            None => gen_faults(&mut rng, cfg),
        };
        sim.rng = rng;
        for (i, f) in sim.faults.clone().iter().enumerate() {
            sim.q.at(f.start, Ev::FaultStart(i));
            if f.end > f.start {
                sim.q.at(f.end, Ev::FaultEnd(i));
            }
        }
        sim
    }

    /// The documented scheduling margin G - (X + T): pauses up to it are not faults.
    fn margin(&self) -> Vt {
        let t = self.timings;
        us(t.takeover_delay
            .saturating_sub(t.check_interval + t.record_timeout))
    }

    fn heal_at(&self) -> Vt {
        self.faults
            .iter()
            .map(|f| f.end)
            .max()
            .unwrap_or(0)
            .max(FAULT_PHASE)
    }

    fn machine(&self, name: &str, rate: u64, offset: u64, vt: Vt) -> SupervisorMachine {
        let now = self.instant_of(rate, offset, vt);
        let mut m = SupervisorMachine::new(
            Config {
                id: name.to_owned(),
                names: ["zookeeper".into(), "etcd".into()],
                timings: self.timings,
                strict: self.cfg.strict_mode_lease,
                policy: Box::new(DampedPolicy::new()),
                epoch: (now, 1_700_000_000_000 + vt / MS),
                layers: [idle_status(self.anchor), idle_status(self.anchor)],
            },
            now,
        );
        m.bugs = self.cfg.bugs;
        m
    }

    fn instant_of(&self, rate: u64, offset: u64, vt: Vt) -> Instant {
        let local = offset + (vt as u128 * rate as u128 / 1_000_000) as u64;
        self.anchor + Duration::from_micros(local)
    }

    fn now_of(&self, p: usize) -> Instant {
        let pr = &self.procs[p];
        self.instant_of(pr.rate_ppm, pr.offset, self.q.now())
    }

    /// The virtual instant at which `p`'s clock shows `at` (not before now).
    fn vt_of(&self, p: usize, at: Instant) -> Vt {
        let pr = &self.procs[p];
        let local = us(at.saturating_duration_since(self.anchor)).saturating_sub(pr.offset);
        let vt = (local as u128 * 1_000_000).div_ceil(pr.rate_ppm as u128) as Vt;
        vt.max(self.q.now())
    }

    /// A local duration of `p` in virtual µs.
    fn local_to_vt(&self, p: usize, d: Vt) -> Vt {
        (d as u128 * 1_000_000).div_ceil(self.procs[p].rate_ppm as u128) as Vt
    }

    fn log(&mut self, who: Option<usize>, text: impl FnOnce() -> String) {
        if self.cfg.trace {
            let name = who.map_or("--", |p| self.procs[p].name.as_str());
            let line = format!("{} {:>3} {}", fmt_vt(self.q.now()), name, text());
            self.trace.push(line);
        }
    }

    fn proc_ev(&mut self, p: usize, at: Vt, ev: PEv) {
        let inc = self.procs[p].inc;
        self.q.at(at, Ev::Proc { p, inc, ev });
    }

    fn delay(&mut self, store: usize) -> Vt {
        if self.slow[store] {
            return self.rng.range(20 * MS, 120 * MS);
        }
        let r = self.rng.range(0, 999);
        if r < 900 {
            self.rng.range(200, 3 * MS)
        } else if r < 985 {
            self.rng.range(3 * MS, 20 * MS)
        } else {
            self.rng.range(20 * MS, 70 * MS)
        }
    }

    fn net(&self, p: usize, store: usize) -> bool {
        self.up[store] && !self.cut[p][store]
    }

    /// Whether `p`'s session in `store` is kept alive.
    fn contact(&self, p: usize, store: usize) -> bool {
        let pr = &self.procs[p];
        self.net(p, store) && !pr.paused && !pr.crashed
    }

    fn run(&mut self) {
        let n = self.procs.len();
        for p in 0..n {
            self.start(p);
        }
        while let Some(ev) = self.q.pop_until(RUN) {
            self.events += 1;
            match ev {
                Ev::Proc { p, inc, ev } => {
                    let pr = &mut self.procs[p];
                    if pr.inc != inc || pr.crashed {
                        continue;
                    }
                    if pr.paused {
                        pr.deferred.push(ev);
                        continue;
                    }
                    self.proc_event(p, ev);
                }
                Ev::Arrive(op) => self.arrive(op),
                Ev::Expire {
                    layer,
                    p,
                    session,
                    orphan,
                } => self.expire(layer, p, session, orphan),
                Ev::FaultStart(i) => self.fault(i, true),
                Ev::FaultEnd(i) => self.fault(i, false),
            }
        }
    }

    fn start(&mut self, p: usize) {
        self.feed(p, Input::Join);
        self.read_now(p);
        for layer in 0..2 {
            let d = self.delay(layer);
            let now = self.q.now();
            self.proc_ev(p, now + d, PEv::LayerNotice(layer));
        }
    }

    fn read_now(&mut self, p: usize) {
        let pr = &mut self.procs[p];
        if pr.read_in_flight.is_some() {
            pr.poke = true;
            return;
        }
        pr.read_token += 1;
        let t = pr.read_token;
        let now = self.q.now();
        self.proc_ev(p, now, PEv::ReadLoop(t));
    }

    fn feed(&mut self, p: usize, input: Input) {
        let now = self.now_of(p);
        let mut fx = std::mem::take(&mut self.fx);
        self.procs[p].m.handle(now, input, &mut fx);
        // "Publish before act": no status publication after a write in one batch.
        let first_cas = fx.iter().position(|e| matches!(e, Effect::Cas(_)));
        let last_publish = fx.iter().rposition(|e| matches!(e, Effect::Publish { .. }));
        if let (Some(c), Some(pu)) = (first_cas, last_publish) {
            if pu > c {
                let name = self.procs[p].name.clone();
                self.ordering.push(format!(
                    "{name} published its status after a mode write at {}",
                    fmt_vt(self.q.now())
                ));
            }
        }
        for e in fx.drain(..) {
            self.execute(p, e);
        }
        self.fx = fx;
        if let Some(d) = self.procs[p].m.next_deadline() {
            let at = self.vt_of(p, d);
            let pr = &mut self.procs[p];
            pr.tick += 1;
            let t = pr.tick;
            self.proc_ev(p, at, PEv::Tick(t));
        }
    }

    fn execute(&mut self, p: usize, e: Effect) {
        let now = self.q.now();
        match e {
            Effect::Event(ev) => {
                self.failovers += usize::from(ev.is_failover());
                self.failbacks += usize::from(ev.is_failback());
                if matches!(
                    ev,
                    SupervisorEvent::Failover { .. }
                        | SupervisorEvent::Failback { .. }
                        | SupervisorEvent::Mode { .. }
                ) {
                    self.log(Some(p), || format!("event: {ev}"));
                }
            }
            Effect::Publish { role, reason, .. } => {
                let term = role.term().filter(|_| role.is_leader());
                let before = self.timeline_term(p);
                // Led on the last mode seen, under the documented default-mode exception.
                let unconfirmed = self.procs[p].m.leads_on_last_mode_seen(self.now_of(p));
                self.timeline.publish_with(p, now, term, unconfirmed);
                if before != term {
                    self.log(Some(p), || match term {
                        Some(t) => format!("LEADER term {t} ({reason})"),
                        None => format!("not leader: {} ({reason})", role.name()),
                    });
                }
            }
            Effect::Beat(b) => {
                let pr = &mut self.procs[p];
                pr.beat = b;
                if pr.beat.is_some() && !pr.hb_running {
                    pr.hb_running = true;
                    pr.hb_token += 1;
                    let t = pr.hb_token;
                    self.proc_ev(p, now, PEv::HbLoop(t));
                }
            }
            Effect::Cas(change) => {
                self.log(Some(p), || {
                    format!(
                        "cas {:?} -> {} (expected version {:?})",
                        change.kind, change.to, change.expected
                    )
                });
                self.send(p, OpKind::Cas(change));
            }
            Effect::ReadMode => self.read_now(p),
        }
    }

    fn timeline_term(&self, p: usize) -> Option<Term> {
        self.timeline.leading(p)
    }

    fn send(&mut self, p: usize, kind: OpKind) -> usize {
        let id = self.ops.len();
        let d1 = self.delay(1);
        let d2 = self.delay(1);
        self.ops.push(Op {
            p,
            kind,
            done: false,
            sent: self.now_of(p),
            reply_delay: d2,
        });
        let now = self.q.now();
        if self.net(p, 1) {
            self.q.at(now + d1, Ev::Arrive(id));
        }
        let t = self.local_to_vt(p, RECORD_TIMEOUT);
        self.proc_ev(p, now + t, PEv::Timeout(id));
        id
    }

    /// A request reaches the fallback store: applied there if the path is open.
    fn arrive(&mut self, id: usize) {
        let p = self.ops[id].p;
        if !self.net(p, 1) {
            return;
        }
        let r = &mut self.records;
        let answer = match &self.ops[id].kind {
            OpKind::ReadMode => Answer::Read(r.mode.clone()),
            OpKind::ReadHb => Answer::Read(r.hb.clone()),
            OpKind::HbWrite(v) => {
                r.rev += 1;
                r.hb = Some(Versioned {
                    value: v.clone(),
                    version: r.rev,
                });
                Answer::Written
            }
            OpKind::Cas(c) => {
                let current = r.mode.as_ref().map(|v| v.version);
                if current == c.expected {
                    r.rev += 1;
                    r.mode = Some(Versioned {
                        value: c.to.encode(),
                        version: r.rev,
                    });
                    self.mode_writes += 1;
                    let (to, v) = (c.to, r.rev);
                    self.log(Some(p), || {
                        format!("store: mode record := {to} (version {v})")
                    });
                    Answer::Cas(CasOutcome::Swapped(v))
                } else {
                    Answer::Cas(CasOutcome::Conflict(r.mode.clone()))
                }
            }
        };
        if matches!(answer, Answer::Cas(CasOutcome::Swapped(_))) {
            self.notify_watchers();
        }
        let at = self.q.now() + self.ops[id].reply_delay;
        self.proc_ev(p, at, PEv::Reply(id, answer));
    }

    /// Every process connected to the fallback store hears of a change of the mode record
    /// after a delivery delay (watches are best effort: a cut process hears nothing).
    fn notify_watchers(&mut self) {
        let now = self.q.now();
        for p in 0..self.procs.len() {
            if self.net(p, 1) {
                let d = self.delay(1);
                self.proc_ev(p, now + d, PEv::Watch);
            }
        }
    }

    fn proc_event(&mut self, p: usize, ev: PEv) {
        let now = self.q.now();
        match ev {
            PEv::Tick(t) => {
                if self.procs[p].tick == t {
                    self.feed(p, Input::Tick);
                }
            }
            PEv::ReadLoop(t) => {
                let pr = &self.procs[p];
                if pr.read_token != t || pr.read_in_flight.is_some() {
                    return;
                }
                let sent = self.now_of(p);
                let id = self.send(p, OpKind::ReadMode);
                self.procs[p].read_in_flight = Some((id, sent));
                self.send(p, OpKind::ReadHb);
            }
            PEv::HbLoop(t) => {
                let pr = &mut self.procs[p];
                if pr.hb_token != t {
                    return;
                }
                match pr.beat.as_ref().map(Heartbeat::encode) {
                    Some(v) => {
                        self.send(p, OpKind::HbWrite(v));
                        let at = now + self.local_to_vt(p, CHECK_INTERVAL);
                        self.proc_ev(p, at, PEv::HbLoop(t));
                    }
                    None => pr.hb_running = false,
                }
            }
            PEv::Reply(id, answer) => self.complete(p, id, Ok(answer)),
            PEv::Timeout(id) => self.complete(p, id, Err(())),
            PEv::LayerNotice(layer) => self.layer_notice(p, layer),
            PEv::Watch => self.read_now(p),
        }
    }

    /// An operation's answer or timeout reaches the executor (whichever comes first).
    fn complete(&mut self, p: usize, id: usize, answer: Result<Answer, ()>) {
        if std::mem::replace(&mut self.ops[id].done, true) {
            return;
        }
        let kind = match &self.ops[id].kind {
            OpKind::Cas(c) => OpKind::Cas(c.clone()),
            OpKind::ReadMode => OpKind::ReadMode,
            OpKind::ReadHb => OpKind::ReadHb,
            OpKind::HbWrite(_) => OpKind::HbWrite(Vec::new()),
        };
        let sent = self.ops[id].sent;
        let timeout = Duration::from_micros(RECORD_TIMEOUT);
        match kind {
            OpKind::ReadMode => {
                let result = match answer {
                    Ok(Answer::Read(v)) => Ok(v),
                    _ => Err(Error::timeout("reading the mode record timed out")),
                };
                self.feed(p, Input::Mode { result, sent });
                let pr = &mut self.procs[p];
                if pr.read_in_flight.map(|(i, _)| i) == Some(id) {
                    pr.read_in_flight = None;
                    pr.read_token += 1;
                    let t = pr.read_token;
                    let at = if std::mem::take(&mut pr.poke) {
                        self.q.now()
                    } else {
                        self.vt_of(p, sent + Duration::from_micros(CHECK_INTERVAL))
                    };
                    self.proc_ev(p, at, PEv::ReadLoop(t));
                }
            }
            OpKind::ReadHb => {
                let result = match answer {
                    Ok(Answer::Read(v)) => Ok(v),
                    _ => Err(Error::timeout("reading the heartbeat record timed out")),
                };
                self.feed(p, Input::Heartbeat { result });
            }
            OpKind::Cas(change) => {
                let result = match answer {
                    Ok(Answer::Cas(o)) => Ok(o),
                    _ => Err(machine::timed_out("writing", timeout, true)),
                };
                self.log(Some(p), || {
                    format!("cas {:?} answered: {result:?}", change.kind)
                });
                self.feed(
                    p,
                    Input::Cas {
                        change,
                        result,
                        sent,
                    },
                );
            }
            OpKind::HbWrite(_) => {}
        }
    }

    /// The layer client of `p` looks at its connection and the store, and reports its
    /// status to the machine if it changed.
    fn layer_notice(&mut self, p: usize, layer: usize) {
        let (role, level, reason): (Role, HealthLevel, &str) = if !self.procs[p].joined {
            (Role::Idle, HealthLevel::Healthy, "resigned")
        } else if !self.net(p, layer) {
            (Role::Suspended, HealthLevel::Unhealthy, "connection lost")
        } else {
            let st = &mut self.layers[layer];
            let live = self.procs[p].sessions[layer];
            if live.is_none() || st.sessions[p] != live {
                st.next_session += 1;
                let s = st.next_session;
                st.sessions[p] = Some(s);
                st.lost_since[p] = None;
                st.queue.push((p, s));
                self.procs[p].sessions[layer] = Some(s);
                self.grant(layer);
            }
            let st = &self.layers[layer];
            match st.holder {
                Some((h, s, term)) if h == p && Some(s) == self.procs[p].sessions[layer] => {
                    (Role::Leader { term }, HealthLevel::Healthy, "connected")
                }
                _ => (
                    Role::Follower { leader: None },
                    HealthLevel::Healthy,
                    "connected",
                ),
            }
        };
        let now_status = (role.clone(), level);
        if self.procs[p].delivered[layer].as_ref() == Some(&now_status) {
            return;
        }
        self.procs[p].delivered[layer] = Some(now_status);
        let status = Status {
            role,
            health: Health {
                level,
                reason: reason.into(),
                since: self.anchor,
            },
            reason: reason.into(),
            since: self.anchor,
            leaderships: Default::default(),
        };
        let l = if layer == 0 {
            Layer::Primary
        } else {
            Layer::Fallback
        };
        self.feed(p, Input::Layer(l, status));
    }

    fn grant(&mut self, layer: usize) {
        let st = &mut self.layers[layer];
        if st.holder.is_some() || !self.up[layer] {
            return;
        }
        let Some(&(p, s)) = st.queue.first() else {
            return;
        };
        st.seq += 1;
        let term = Term::new(layer as u64 + 1, st.seq);
        st.holder = Some((p, s, term));
        self.log(Some(p), || format!("layer {layer}: granted term {term}"));
        let d = self.delay(layer);
        let now = self.q.now();
        self.proc_ev(p, now + d, PEv::LayerNotice(layer));
    }

    fn expire(&mut self, layer: usize, p: usize, session: u64, orphan: bool) {
        let now = self.q.now();
        if !self.up[layer] {
            if orphan {
                // A store that is down expires nothing; it restarts the timeout when back.
                let ev = Ev::Expire {
                    layer,
                    p,
                    session,
                    orphan,
                };
                self.q.at(now + SESSION_TIMEOUT, ev);
            }
            return;
        }
        let st = &mut self.layers[layer];
        if !orphan {
            let due = st.lost_since[p].is_some_and(|t| now >= t + SESSION_TIMEOUT);
            if !due || st.sessions[p] != Some(session) {
                return;
            }
        }
        if st.sessions[p] == Some(session) {
            st.sessions[p] = None;
            st.lost_since[p] = None;
        }
        st.queue.retain(|&(_, s)| s != session);
        if st.holder.is_some_and(|(_, s, _)| s == session) {
            st.holder = None;
            self.log(Some(p), || {
                format!("layer {layer}: session expired, grant lost")
            });
        }
        self.grant(layer);
    }

    /// Re-derive session contact after any change of connectivity; schedule expiries and
    /// the clients' notices.
    #[allow(clippy::needless_range_loop)] // p and layer index several tables
    fn connectivity_changed(&mut self, before: &[[bool; 2]]) {
        let now = self.q.now();
        for p in 0..self.procs.len() {
            for layer in 0..2 {
                let c = self.contact(p, layer);
                let st = &mut self.layers[layer];
                if !self.up[layer] {
                    st.lost_since[p] = None; // a store that is down expires nothing
                } else if c {
                    st.lost_since[p] = None;
                } else if st.lost_since[p].is_none() {
                    st.lost_since[p] = Some(now);
                    if let Some(s) = st.sessions[p] {
                        self.q.at(
                            now + SESSION_TIMEOUT,
                            Ev::Expire {
                                layer,
                                p,
                                session: s,
                                orphan: false,
                            },
                        );
                    }
                }
                let net = self.net(p, layer);
                if net != before[p][layer] && !self.procs[p].crashed {
                    // The client notices: a loss within a third of the session timeout,
                    // a reconnection after a round trip.
                    let d = if net {
                        self.delay(layer)
                    } else {
                        self.rng.range(MS, SESSION_TIMEOUT / 3)
                    };
                    self.proc_ev(p, now + d, PEv::LayerNotice(layer));
                }
            }
        }
        for layer in 0..2 {
            self.grant(layer);
        }
    }

    fn nets(&self) -> Vec<[bool; 2]> {
        (0..self.procs.len())
            .map(|p| [self.net(p, 0), self.net(p, 1)])
            .collect()
    }

    fn fault(&mut self, i: usize, start: bool) {
        let f = self.faults[i];
        let before = self.nets();
        let now = self.q.now();
        self.log(None, || {
            format!(
                "fault {}: {:?}",
                if start { "starts" } else { "ends" },
                f.kind
            )
        });
        match f.kind {
            FaultKind::Cut { p, stores } => {
                for (s, on) in stores.iter().enumerate() {
                    if *on {
                        self.cut[p][s] = start;
                    }
                }
            }
            FaultKind::Outage { store } => self.up[store] = !start,
            FaultKind::Slow { store } => self.slow[store] = start,
            FaultKind::Wipe => {
                self.records = Records::default();
                self.notify_watchers();
            }
            FaultKind::Asymmetric => {
                let leader = self.layers[0].holder.map_or(0, |(p, _, _)| p);
                for p in 0..self.procs.len() {
                    self.cut[p] = if !start {
                        [false, false]
                    } else if p == leader {
                        [false, true]
                    } else {
                        [true, false]
                    };
                }
            }
            FaultKind::Pause { p } => {
                if start {
                    self.procs[p].paused = true;
                    self.timeline.pause(p, now);
                } else if self.procs[p].paused {
                    self.procs[p].paused = false;
                    self.timeline.resume(p, now);
                    for ev in std::mem::take(&mut self.procs[p].deferred) {
                        self.proc_ev(p, now, ev);
                    }
                    for layer in 0..2 {
                        let d = self.rng.range(0, 2 * RECORD_TIMEOUT);
                        self.proc_ev(p, now + d, PEv::LayerNotice(layer));
                    }
                }
            }
            FaultKind::Resign { p } => {
                if self.procs[p].crashed {
                    // (Overlaps are excluded; nothing to do for a crashed process.)
                } else if start {
                    // The supervisor publishes "not leading" first, then leaves both
                    // layers (their nodes or keys are deleted, the next one is granted).
                    self.feed(p, Input::Leave("resigned".into()));
                    self.procs[p].joined = false;
                    for layer in 0..2 {
                        let st = &mut self.layers[layer];
                        if let Some(sess) = st.sessions[p].take() {
                            st.lost_since[p] = None;
                            st.queue.retain(|&(_, x)| x != sess);
                            if st.holder.is_some_and(|(_, x, _)| x == sess) {
                                st.holder = None;
                            }
                        }
                        self.procs[p].sessions[layer] = None;
                        self.layer_notice(p, layer);
                        self.grant(layer);
                    }
                } else {
                    self.procs[p].joined = true;
                    self.start(p);
                }
            }
            FaultKind::Crash { p } => {
                if start {
                    let pr = &mut self.procs[p];
                    pr.crashed = true;
                    pr.paused = false;
                    pr.deferred.clear();
                    pr.inc += 1;
                    self.timeline.crash(p, now);
                    for layer in 0..2 {
                        let st = &mut self.layers[layer];
                        if let Some(s) = st.sessions[p].take() {
                            st.lost_since[p] = None;
                            let ev = Ev::Expire {
                                layer,
                                p,
                                session: s,
                                orphan: true,
                            };
                            self.q.at(now + SESSION_TIMEOUT, ev);
                        }
                    }
                } else {
                    let (name, rate, offset) = {
                        let pr = &self.procs[p];
                        (pr.name.clone(), pr.rate_ppm, pr.offset)
                    };
                    let m = self.machine(&name, rate, offset, now);
                    let pr = &mut self.procs[p];
                    pr.m = m;
                    pr.crashed = false;
                    pr.inc += 1;
                    pr.read_in_flight = None;
                    pr.poke = false;
                    pr.beat = None;
                    pr.hb_running = false;
                    pr.sessions = [None; 2];
                    pr.delivered = [None, None];
                    pr.joined = true;
                    self.start(p);
                }
            }
        }
        self.connectivity_changed(&before);
    }
}

fn idle_status(at: Instant) -> Status {
    Status {
        role: Role::Idle,
        health: Health {
            level: HealthLevel::Healthy,
            reason: "not joined".into(),
            since: at,
        },
        reason: "not joined".into(),
        since: at,
        leaderships: Default::default(),
    }
}

/// Whether a fault overlaps `f`, give or take `margin`.
fn o_near(f: Fault, margin: Vt) -> impl Fn(&Fault) -> bool {
    move |o: &Fault| o.start < f.end + margin && f.start < o.end + margin
}

/// The fault schedule of one seed.
fn gen_faults(rng: &mut Rng, cfg: &SimConfig) -> Vec<Fault> {
    let f = cfg.faults;
    let n = cfg.participants;
    let mut kinds: Vec<u8> = Vec::new();
    for (on, k) in [
        (f.partitions, 0),
        (f.outages, 1),
        (f.slow, 2),
        (f.pauses, 3),
        (f.crashes, 4),
        (f.resigns, 6),
        (f.wipes, 5),
    ] {
        if on {
            kinds.push(k);
        }
    }
    let mut out: Vec<Fault> = Vec::new();
    if f.asymmetric {
        let start = rng.range(1_000 * MS, 2_000 * MS);
        let dur = rng.range(FAILOVER_AFTER * 2, FAILOVER_AFTER * 4);
        out.push(Fault {
            kind: FaultKind::Asymmetric,
            start,
            end: (start + dur).min(FAULT_PHASE),
        });
    }
    if kinds.is_empty() {
        return out;
    }
    let count = rng.range(1, 6);
    let margin = FAILOVER_AFTER + 500 * MS;
    let mut tries = 0;
    while out.len() < count as usize + usize::from(f.asymmetric) && tries < 50 {
        tries += 1;
        let start = rng.range(300 * MS, FAULT_PHASE - 200 * MS);
        let kind = match kinds[rng.below(kinds.len())] {
            0 => {
                let which = rng.range(0, 2);
                FaultKind::Cut {
                    p: rng.below(n),
                    stores: [which != 1, which != 0],
                }
            }
            1 => FaultKind::Outage {
                store: rng.below(2),
            },
            2 => FaultKind::Slow {
                store: rng.below(2),
            },
            3 => FaultKind::Pause { p: rng.below(n) },
            4 => FaultKind::Crash { p: rng.below(n) },
            6 => FaultKind::Resign { p: rng.below(n) },
            _ => FaultKind::Wipe,
        };
        let dur = match kind {
            FaultKind::Wipe => 0,
            FaultKind::Pause { .. } => rng.range(20 * MS, 4 * SESSION_TIMEOUT),
            _ => rng.range(50 * MS, 2_500 * MS),
        };
        let fault = Fault {
            kind,
            start,
            end: (start + dur).min(FAULT_PHASE),
        };
        // One pause or crash at a time per process.
        let proc_of = |k: FaultKind| match k {
            FaultKind::Pause { p } | FaultKind::Crash { p } | FaultKind::Resign { p } => Some(p),
            _ => None,
        };
        if let Some(p) = proc_of(fault.kind) {
            let busy = out.iter().any(|o| {
                proc_of(o.kind) == Some(p) && o.start <= fault.end && fault.start <= o.end
            });
            if busy {
                continue;
            }
        }
        // Without the strict mode lease, the guarantee excludes a process cut from the
        // fallback store alone while another one, in trouble with the primary store (cut
        // from it, or from both), may decide to fail over: the documented asymmetric
        // window. Keep such pairs apart unless asked for.
        if !cfg.strict_mode_lease && !f.asymmetric {
            // (A slow fallback store times out a leader's reads as surely as a cut.)
            let fallback_only = |s: [bool; 2]| s == [false, true];
            let near = o_near(fault, margin);
            let conflict = out.iter().any(|o| {
                near(o)
                    && match (o.kind, fault.kind) {
                        (
                            FaultKind::Cut { p: a, stores: sa },
                            FaultKind::Cut { p: b, stores: sb },
                        ) => {
                            a != b && ((fallback_only(sa) && sb[0]) || (fallback_only(sb) && sa[0]))
                        }
                        (FaultKind::Slow { store: 1 }, FaultKind::Cut { stores, .. })
                        | (FaultKind::Cut { stores, .. }, FaultKind::Slow { store: 1 }) => {
                            stores[0]
                        }
                        _ => false,
                    }
            });
            if conflict {
                continue;
            }
        }
        out.push(fault);
    }
    out.sort_by_key(|f| f.start);
    out
}
